"""The store on both engines (a real SQLite file, a real PostgreSQL database): migrations, suppressions,
recipients, recovery, the send lock; and what only one engine has."""

from __future__ import annotations

import os
import select as _select
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sendkit import recorded_send
from storekit import select

from pipeline.errors import SendError, StoreError
from pipeline.store import Finish, ListRow, Store
from pipeline.store._sqlite import SQLiteStore
from pipeline.store._sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS

REPO = Path(__file__).parent.parent


def test_migrations_recorded_once(store: Store) -> None:
    names = store.applied_migrations()
    assert names and len(set(names)) == len(names)
    assert store.migrate() == []
    assert store.applied_migrations() == names
    assert select(store, "SELECT count(*) FROM delivery_log") == [(0,)]


def test_sqlite_is_wal_and_an_older_version_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(SQLITE_MIGRATIONS[0][1])  # a send log of the first version, without schema_migrations
    old.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    old.execute("INSERT INTO schema_migrations VALUES (?, '2024-01-01')", (SQLITE_MIGRATIONS[0][0],))
    old.close()
    store = SQLiteStore(path)
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.applied_migrations() == [name for name, _ in SQLITE_MIGRATIONS]
    assert select(store, "SELECT count(*) FROM delivery_log") == [(0,)]


def test_suppressions(store: Store) -> None:
    assert store.add_suppression("Ada@Example.org", reason="unsubscribed", source="web")
    assert not store.add_suppression("ada@example.org", reason="bounced", source="webhook")
    assert store.is_suppressed("ADA@example.org")
    assert [s.reason for s in store.list_suppressions()] == ["unsubscribed"]
    assert store.suppressed_set() == {"ada@example.org"}
    assert store.remove_suppression("ada@EXAMPLE.org")
    assert not store.is_suppressed("ada@example.org")
    assert not store.remove_suppression("ada@example.org")
    assert store.add_suppressions([("b@x.org", "bounced"), ("B@X.org", "manual"), ("c@x.org", "blocked")],
                                  source="import") == 2
    assert {s.email: s.reason for s in store.list_suppressions()} == {"b@x.org": "bounced", "c@x.org": "blocked"}


def test_duplicates_ignored_case_insensitively(store: Store) -> None:
    send = store.create_send(issue="001", list_name="l", transport="sendgrid", content_hash="h", subject="s")
    assert store.add_recipients(send.id, [("a@x.org", "", None), ("A@X.org", "", None), ("b@x.org", "", None)]) == 2
    assert select(store, "SELECT email FROM deliveries ORDER BY id") == [("a@x.org",), ("b@x.org",)]
    assert store.counts(send.id)["pending"] == 2


def test_recover_in_flight_becomes_in_doubt(store: Store) -> None:
    send = recorded_send(store, 3)
    claim = store.claim_batch(send.id, size=2, request_id="a")
    assert claim is not None
    assert store.recover_in_flight(send.id) == 1
    assert store.in_doubt_addresses(send.id) == ["r0@example.org", "r1@example.org"]
    assert store.claim_batch(send.id, size=10, request_id="b") is not None  # only r2
    again = store.claim_batch(send.id, size=10, states=("in_doubt",), request_id="c")
    assert again is not None and [r[1] for r in again.rows] == ["r0@example.org", "r1@example.org"]


def test_recover_fails_a_batch_left_waiting(store: Store) -> None:
    send = recorded_send(store, 2)
    claim = store.claim_batch(send.id, size=2, request_id="a")
    assert claim is not None
    store.mark_waiting(claim, attempts=1, http_status=429, error="429 Too Many Requests")
    assert store.recover_in_flight(send.id) == 0
    counts = store.counts(send.id)
    assert (counts["failed"], counts["in_flight"], counts["in_doubt"]) == (2, 0, 0)
    assert select(store, "SELECT state, error FROM batches") == [("failed", "process ended after: 429 Too Many "
                                                                            "Requests")]


def test_sync_recipients_adds_and_removes(store: Store) -> None:
    send = recorded_send(store, 3)
    claim = store.claim_batch(send.id, size=1, request_id="a")
    assert claim is not None
    store.record([Finish(claim=claim, state="accepted", attempts=1)])
    added = store.sync_recipients(send.id, [("r2@example.org", "", None), ("new@example.org", "", None)])
    assert added == 1
    counts = store.counts(send.id)
    assert (counts["accepted"], counts["removed"], counts["pending"]) == (1, 1, 2)
    everyone = [(f"R{i}@example.org", "", None) for i in range(3)] + [("new@example.org", "", None)]
    assert store.sync_recipients(send.id, everyone) == 0
    assert store.counts(send.id)["removed"] == 0


def test_sync_lifts_suppressed_rows_that_are_listed_again(store: Store) -> None:
    send = recorded_send(store, 2)
    store.add_suppression("r0@example.org", reason="manual", source="test")
    claim = store.claim_batch(send.id, size=10, request_id="a")
    assert claim is not None and [r[1] for r in claim.rows] == ["r1@example.org"]
    store.remove_suppression("r0@example.org")
    store.sync_recipients(send.id, [("r0@example.org", "", None), ("r1@example.org", "", None)])
    assert store.counts(send.id)["pending"] == 1


def test_lock_refuses_second_and_names_host_and_pid(store: Store) -> None:
    with store.lock(issue="001", list_name="l"):
        with pytest.raises(SendError, match=f"pid {os.getpid()}") as refused:
            store.lock(issue="001", list_name="l").__enter__()
        if store.engine == "postgresql":
            assert socket.gethostname() in str(refused.value)
        with store.lock(issue="001", list_name="other"):
            pass
    with store.lock(issue="001", list_name="l"):
        pass


def test_lock_of_killed_process_is_taken_over(store: Store, tmp_path: Path) -> None:
    """The lock held by another process (kill -9 ends it) refuses with its pid; then it is free again."""
    url = getattr(store, "_url", None)
    opener = (f"from pipeline.store._postgres import PostgresStore; store = PostgresStore({url!r}, migrate=False)"
              if url else
              f"from pipeline.store._sqlite import SQLiteStore; store = SQLiteStore(Path({str(store.where)!r}))")
    code = (f"import time; from pathlib import Path; {opener}; lock = store.lock(issue='001', list_name='l'); "
            "lock.acquire(); print('locked', flush=True); time.sleep(600)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(SendError, match=f"pid {proc.pid}"):
            store.lock(issue="001", list_name="l").__enter__()
    finally:
        proc.kill()
        proc.wait()
    for _ in range(200):
        try:
            with store.lock(issue="001", list_name="l"):
                break
        except SendError:
            select(store, "SELECT 1")  # the server has not yet seen the connection close: ask again
    else:
        pytest.fail("the lock of the killed process was never released")


def test_add_recipients_keeps_order_and_rolls_back_on_error(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.store import _bulk

    monkeypatch.setattr(_bulk, "CHUNK_ROWS", 3)
    send = store.create_send(issue="001", list_name="l", transport="sendgrid", content_hash="h", subject="s")
    rows = [(f"r{i}@example.org", f"Zoë {i}", '{"city": "Köln"}' if i % 2 else None) for i in range(10)]
    assert store.add_recipients(send.id, iter(rows)) == 10
    assert select(store, "SELECT email, name, fields FROM deliveries WHERE send_id = ? ORDER BY id",
                  (send.id,)) == rows

    def broken() -> Iterator[ListRow]:
        yield from [(f"b{i}@example.org", "", None) for i in range(7)]
        raise ValueError("bad row")

    other = store.create_send(issue="002", list_name="l", transport="sendgrid", content_hash="h", subject="s")
    with pytest.raises(ValueError, match="bad row"):
        store.add_recipients(other.id, broken())
    assert store.counts(other.id)["pending"] == 0
    with pytest.raises(SendError, match="not in the send log"):
        store.add_recipients(999, rows)
    assert store.add_recipients(other.id, [("b0@example.org", "", None)]) == 1  # the store is usable after


def test_checks_are_back_after_a_send_loop(tmp_path: Path) -> None:
    """SQLite only: `sending()` switches its CHECK and foreign key checks off around the loop, and back on."""
    store = SQLiteStore(tmp_path / "log.sqlite3")
    send = recorded_send(store, 2)
    conn = store.conn
    with store.sending():
        claim = store.claim_batch(send.id, size=2, request_id="a")
        assert claim is not None
        assert conn.execute("PRAGMA ignore_check_constraints").fetchone()[0] == 1  # not switched on in between
        store.record([Finish(claim=claim, state="accepted", attempts=1, http_status=202)])
    assert tuple(conn.execute("PRAGMA foreign_keys").fetchone()) == (1,)
    assert tuple(conn.execute("PRAGMA ignore_check_constraints").fetchone()) == (0,)
    with pytest.raises(sqlite3.IntegrityError):  # the CHECK on states holds again
        conn.execute("UPDATE deliveries SET state = 'sent' WHERE send_id = ?", (send.id,))


def test_sends_and_their_times(store: Store) -> None:
    send = recorded_send(store, 2)
    assert store.find_send(issue="001", list_name="sample", transport="sendgrid") == send
    assert store.find_send(issue="001", list_name="sample", transport="outbox") is None
    store.update_send(send.id, content_hash="h2", subject="Hello again", send_at=None)
    assert [s.subject for s in store.sends_of_issue("001")] == ["Hello again"]
    assert store.sent_issues() == set()
    claim = store.claim_batch(send.id, size=2, request_id="a")
    assert claim is not None
    store.record([Finish(claim=claim, state="accepted", attempts=1, http_status=202, message_id="M")])
    store.finish_send(send.id)
    assert store.sent_issues() == {"001"}
    first, last = store.send_times(send.id)
    assert first is not None and first == last
    finished = store.find_send(issue="001", list_name="sample", transport="sendgrid")
    assert finished is not None and finished.finished_at is not None
    store.delete_send(send.id)
    assert store.sends_of_issue("001") == [] and store.table_counts()["deliveries"] == 0


def test_a_store_copied_to_another_keeps_ids_and_counts(store: Store, tmp_path: Path) -> None:
    """`dump` and `load` as `newsletter db copy` uses them; the target's ids continue after the copied ones."""
    send = recorded_send(store, 3)
    store.add_suppression("x@example.org", reason="bounced", source="test")
    claim = store.claim_batch(send.id, size=3, request_id="a")
    assert claim is not None
    store.record([Finish(claim=claim, state="accepted", attempts=1, http_status=202)])
    store.record_reject(b"\x00not json", "unreadable")
    target = SQLiteStore(tmp_path / "target.sqlite3")
    for table in ("sends", "batches", "deliveries", "suppressions", "events", "delivery_status", "webhook_rejects"):
        for columns, rows in store.dump(table):
            target.load(table, columns, rows)
    assert target.table_counts() == store.table_counts()
    [(columns, rows)] = list(store.dump("webhook_rejects"))
    assert dict(zip(columns, rows[0], strict=True))["body"] == b"\x00not json"
    later = target.create_send(issue="002", list_name="sample", transport="sendgrid", content_hash="h", subject="s")
    assert later.id == send.id + 1


def test_postgresql_refuses_to_start_with_migrations_pending(pg_database: str) -> None:
    from pipeline.store._pg_schema import MIGRATIONS
    from pipeline.store._postgres import PostgresStore

    names = [name for name, _ in MIGRATIONS]
    with pytest.raises(StoreError, match=rf"lacks migrations {', '.join(names)} — run `newsletter db migrate`"):
        PostgresStore(pg_database, migrate=False)
    migrated = PostgresStore(pg_database, migrate=True)
    assert migrated.applied_migrations() == names
    migrated.close()
    again = PostgresStore(pg_database, migrate=False)
    assert again.migrate() == []
    again.close()


def test_postgresql_copy_into_it_keeps_ids_and_continues_after_them(pg_database: str, tmp_path: Path) -> None:
    from pipeline.store._copy import copy_store
    from pipeline.store._postgres import PostgresStore

    source = SQLiteStore(tmp_path / "source.sqlite3")
    send = recorded_send(source, 3)
    source.record_reject(b"\xffbinary", "unreadable")
    target = PostgresStore(pg_database, migrate=True)
    assert copy_store(source, target) == source.table_counts()
    assert select(target, "SELECT id, email FROM deliveries ORDER BY id") == \
        select(source, "SELECT id, email FROM deliveries ORDER BY id")
    later = target.create_send(issue="002", list_name="sample", transport="sendgrid", content_hash="h", subject="s")
    assert later.id == send.id + 1
    assert target.add_recipients(later.id, [("z@example.org", "", None)]) == 1
    assert select(target, "SELECT max(id) FROM deliveries") == [(4,)]
    target.close()


def test_the_password_never_appears_in_where_or_errors() -> None:
    from pipeline.store._postgres import PostgresStore, where

    url = "postgresql://newsletter:s3cr3t-pw@127.0.0.1:1/newsletter"
    assert where(url) == "postgresql://newsletter@127.0.0.1:1/newsletter"
    with pytest.raises(StoreError) as refused:
        PostgresStore(url, migrate=False)
    assert "s3cr3t" not in str(refused.value) and "postgresql://newsletter@127.0.0.1:1/newsletter" in str(refused.value)
    assert "run the same command again" in str(refused.value)


def test_the_send_lock_says_whether_it_is_still_held(store: Store, database_url: str | None) -> None:
    """`held()`, asked by the send loop before every claim: true from acquire to release. On PostgreSQL the
    lock dies with its connection, which can end alone (pg_terminate_backend here, as a restart would):
    then false, and the lock is free for another send. A notification arriving on that idle connection is
    no loss: the check asks the server and finds the lock still there."""
    lock = store.lock(issue="001", list_name="l")
    assert not lock.held()
    with lock:
        assert lock.held() and lock.held()
        if database_url is not None:
            import psycopg

            conn = lock._conn  # type: ignore[attr-defined]
            conn.execute("LISTEN newsletter_test")
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute("NOTIFY newsletter_test")
                assert _select.select([conn.fileno()], [], [], 60)[0]  # the notification is there to read
                assert lock.held()
                assert not _select.select([conn.fileno()], [], [], 0)[0]  # read by the check's query
                pids = admin.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database "
                                     "= (SELECT oid FROM pg_database WHERE datname = current_database())").fetchall()
                assert len(pids) == 1
                admin.execute("SELECT pg_terminate_backend(%s)", pids[0])
                for _ in range(6000):  # until the server has ended that session (bounded)
                    if not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", pids[0]).fetchone():
                        break
                    time.sleep(0.01)
            assert not lock.held() and not lock.held()
            with store.lock(issue="001", list_name="l") as again:  # released on the server with its session
                assert again.held()
    assert not lock.held()


def test_a_statement_postgresql_refuses_names_no_row(pg_database: str) -> None:
    """PostgreSQL's DETAIL and CONTEXT quote the failing row or key (addresses, names, merge fields); the
    StoreError that reaches the terminal, serve's log and a CI log keeps only the primary message."""
    from pipeline.store._postgres import PostgresStore

    store = PostgresStore(pg_database, migrate=True)
    try:
        rows: list[tuple[object, ...]] = [("Ada.Private@example.org", "manual", "cli", "2026-01-01T00:00:00Z"),
                                          ("ada.private@example.org", "manual", "cli", "2026-01-01T00:00:00Z")]
        with pytest.raises(StoreError) as refused:
            store.load("suppressions", ["email", "reason", "source", "created_at"], rows)
    finally:
        store.close()
    assert "suppressions_email" in str(refused.value)
    assert "ada.private" not in str(refused.value).lower()


def test_the_sqlite_send_log_is_readable_by_its_user_only(tmp_path: Path) -> None:
    """Personal data: the file, its WAL and its folder are not for other users of the machine."""
    store = SQLiteStore(tmp_path / "state" / "sendlog.sqlite3")
    try:
        recorded_send(store)
        files = [tmp_path / "state" / name for name in ("sendlog.sqlite3", "sendlog.sqlite3-wal")]
        assert all(f.is_file() and f.stat().st_mode & 0o077 == 0 for f in files)
        assert (tmp_path / "state").stat().st_mode & 0o077 == 0
    finally:
        store.close()


def test_unreadable_webhook_bodies_are_kept_up_to_a_bound(store: Store) -> None:
    """Each may be 5 MiB and hold readers' data; a bug that makes every post unreadable must not fill the disk."""
    from pipeline.store._types import MAX_REJECTS

    for i in range(MAX_REJECTS + 5):
        store.record_reject(f"not json {i}".encode(), "unreadable")
    store.record_reject(f"not json {MAX_REJECTS + 4}".encode(), "unreadable")  # SendGrid's retry of the last
    assert select(store, "SELECT count(*) FROM webhook_rejects") == [(MAX_REJECTS,)]
    assert select(store, "SELECT max(times) FROM webhook_rejects") == [(2,)]
