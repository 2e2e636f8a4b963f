"""Store helpers for the tests: a send seeded as the send stage leaves it, and plain SELECTs on either engine.

Tests check the store through its methods where one exists; `select` is for what only a table shows
(events kept, outcomes, rejects), written once in SQL both engines accept (`?` placeholders).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.config import load_config
from pipeline.store import Finish, Store, database_url, open_store

RECIPIENTS = ("ada@example.org", "grace@example.org", "alan@example.org")


def select(store: Store, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one SELECT, on the store's own connection (SQLite) or in one of its transactions (PostgreSQL)."""
    if store.engine == "sqlite":
        return [tuple(row) for row in store.conn.execute(sql, params)]  # type: ignore[attr-defined]
    with store._tx() as conn:  # type: ignore[attr-defined]
        return [tuple(row) for row in conn.execute(sql.replace("?", "%s"), params).fetchall()]


def count(store: Store, sql: str, params: tuple[Any, ...] = ()) -> int:
    """`SELECT count(*) ...` as an int."""
    return int(select(store, sql, params)[0][0])


def site_store(site: Path, env: Mapping[str, str] | None = None) -> Store:
    """The store a command run in `site` with `env` uses (PostgreSQL when env has NEWSLETTER_DATABASE_URL),
    migrated."""
    return open_store(load_config(site), environ=env or {}, migrate=True)


def migrate(env: Mapping[str, str]) -> None:
    """A PostgreSQL database named in env gets its migrations (`newsletter db migrate`, which a command would
    otherwise ask for); SQLite needs nothing (it migrates on open)."""
    url = database_url(env)
    if url:
        from pipeline.store._postgres import PostgresStore

        PostgresStore(url, migrate=True).close()


def same_store(store: Store, database_url: str | None) -> Store:
    """Another store on the same database as the `store` fixture's (another process's view of it)."""
    if database_url is None:
        from pipeline.store._sqlite import SQLiteStore

        return SQLiteStore(store.path)  # type: ignore[attr-defined]
    from pipeline.store._postgres import PostgresStore

    return PostgresStore(database_url, migrate=False)


def seed_send(store: Store, *, issue: str = "001-hello", list_name: str = "sample",
              recipients: tuple[str, ...] = RECIPIENTS, message_id: str = "msg-1") -> int:
    """A finished real send in the store, as the send stage leaves it: every delivery accepted."""
    send = store.create_send(issue=issue, list_name=list_name, transport="sendgrid", content_hash="0" * 64,
                             subject=f"Issue {issue}")
    store.add_recipients(send.id, [(email, "", None) for email in recipients])
    claim = store.claim_batch(send.id, size=1000, request_id=f"req-{issue}-{list_name}")
    assert claim is not None
    store.record([Finish(claim=claim, state="accepted", attempts=1, http_status=202, message_id=message_id)])
    store.finish_send(send.id)
    return send.id


def dump(store: Store) -> list[tuple[Any, ...]]:
    """Everything a request could change, to prove that one changed nothing."""
    rows: list[tuple[Any, ...]] = []
    for table in ("suppressions", "deliveries", "events", "delivery_status", "webhook_rejects"):
        rows += [(table, *row) for row in select(store, f"SELECT * FROM {table} ORDER BY 1")]
    return rows


def suppressions(store: Store) -> dict[str, tuple[str, str]]:
    """Every suppression: address -> (reason, source)."""
    return {s.email: (s.reason, s.source) for s in store.list_suppressions()}
