"""The send log: one SQLite file (WAL) that makes every send exactly-once and resumable.

Tables (see MIGRATIONS; every change is a new, append-only migration):

- ``sends``: one row per (issue, list, transport): content hash, subject, schedule, timestamps.
  ``transport`` is ``sendgrid`` for real mail and ``outbox`` for `.eml` files: the two never mix.
- ``batches``: one row per request: state, our ``request_id``, SendGrid's ``X-Message-Id``, HTTP status,
  error, attempts, the id range of its deliveries, timestamps.
- ``deliveries``: one row per (send, recipient): state, batch (whose row has the message id and the
  times of the request), the time of other changes (suppressed, removed), and the recipient's name and
  merge fields as they were when the send started (a resume sends the same).
- ``delivery_log`` (a view): one row per recipient of a send with its state, request id, SendGrid's
  message id and the times of its request: what to query when asking "what happened to this address?".
- ``suppressions``: addresses never to mail again, whatever the list (unsubscribed, bounced, ...).
- ``schema_migrations``: the names of the migrations applied. Other modules add their own tables with
  `open_sendlog(path, migrations=THEIRS)`; names are global, so prefix them with the module's name.

Delivery states: ``pending`` (not sent yet), ``in_flight`` (its request is under way), ``accepted``
(SendGrid answered 202), ``in_doubt`` (the request died without an answer: maybe sent), ``failed``
(SendGrid refused the request or retries ran out: certainly not sent; a re-run sends it again),
``suppressed`` (suppressed before it was sent), ``removed`` (no longer in the list on a re-run).
Batch states: ``in_flight`` (request under way), ``waiting`` (got 429/5xx, waiting to retry: certainly
not sent), ``accepted``, ``in_doubt``, ``failed``. Only ``accepted`` deliveries count as sent.

Addresses compare case-insensitively (ASCII, as the list reader dedupes them).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.bulk import insert_chunks, json_columns
from pipeline.errors import SendError

Migration = tuple[str, str]  # (globally unique name, SQL script)

MIGRATIONS: list[Migration] = [
    ("sendlog_001_initial", """
        CREATE TABLE sends (
            id INTEGER PRIMARY KEY,
            issue TEXT NOT NULL,
            list TEXT NOT NULL,
            transport TEXT NOT NULL CHECK (transport IN ('sendgrid', 'outbox')),
            content_hash TEXT NOT NULL,
            subject TEXT NOT NULL,
            send_at TEXT,
            created_at TEXT NOT NULL,
            finished_at TEXT,
            UNIQUE (issue, list, transport)
        );
        CREATE TABLE batches (
            id INTEGER PRIMARY KEY,
            send_id INTEGER NOT NULL REFERENCES sends (id) ON DELETE CASCADE,
            request_id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL CHECK (state IN ('in_flight', 'waiting', 'accepted', 'in_doubt', 'failed')),
            size INTEGER NOT NULL,
            first_delivery INTEGER NOT NULL,
            last_delivery INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            http_status INTEGER,
            message_id TEXT,
            error TEXT,
            created_at TEXT NOT NULL,
            finished_at TEXT
        );
        CREATE INDEX batches_send ON batches (send_id, state);
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            send_id INTEGER NOT NULL REFERENCES sends (id) ON DELETE CASCADE,
            email TEXT NOT NULL COLLATE NOCASE,
            name TEXT NOT NULL DEFAULT '',
            fields TEXT,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN
                ('pending', 'in_flight', 'accepted', 'in_doubt', 'failed', 'suppressed', 'removed')),
            batch_id INTEGER REFERENCES batches (id),
            message_id TEXT,
            updated_at TEXT,
            UNIQUE (send_id, email)
        );
        CREATE TABLE suppressions (
            email TEXT PRIMARY KEY COLLATE NOCASE,
            reason TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
    """),
    ("sendlog_002_delivery_log", """
        CREATE VIEW delivery_log AS
        SELECT d.send_id, s.issue, s.list, d.id AS delivery_id, d.email, d.state, b.request_id, b.message_id,
               b.created_at AS requested_at, b.finished_at AS answered_at, d.updated_at
        FROM deliveries d JOIN sends s ON s.id = d.send_id LEFT JOIN batches b ON b.id = d.batch_id;
    """),
]

STATES = ("pending", "in_flight", "accepted", "in_doubt", "failed", "suppressed", "removed")
TO_SEND = ("pending", "failed")  # certainly not sent: what a run sends
REASONS = ("unsubscribed", "bounced", "blocked", "invalid", "complained", "manual")


def now() -> str:
    """UTC timestamps as ISO 8601 text, to the millisecond."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations not applied yet, each in its own transaction; return their names."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    applied = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    done = []
    for name, script in migrations:
        if name in applied:
            continue
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("SELECT 1 FROM schema_migrations WHERE name = ?", (name,)).fetchone():
                continue  # another process applied it meanwhile
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, now()))
        done.append(name)
    return done


def _statements(script: str) -> list[str]:
    """executescript() would commit; split the (trigger-free) script so that it stays in one transaction."""
    parts, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            parts.append(current)
            current = ""
    if current.strip():
        parts.append(current)
    return parts


def open_sendlog(path: Path, *, migrations: Sequence[Migration] = ()) -> sqlite3.Connection:
    """Open (creating it and its folder if needed) and migrate the send log.

    Autocommit mode (isolation_level=None): every write is in an explicit `with transaction(conn)`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed intent survives a power cut too, so a request is never made for an intent that could
        # be lost (a sub-millisecond fsync per commit, two commits per request)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA cache_size = -32768")  # 32 MB: a million-row send keeps its indexes in memory
        conn.execute("PRAGMA temp_store = MEMORY")
        migrate(conn, [*MIGRATIONS, *migrations])
    except sqlite3.Error as exc:
        raise SendError(f"{path}: cannot open the send log ({exc}) — check that the folder is writable; "
                        "if the file is damaged, move it away (it holds what was sent: keep it)") from None
    return conn


class transaction:  # noqa: N801 - used like a function: `with transaction(conn):`
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): takes the write lock at once, so no surprises."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


@contextmanager
def unchecked_writes(conn: sqlite3.Connection) -> Iterator[None]:
    """CHECK and foreign key checks off around transactions whose values are known good: a send loop's
    fixed writes (constant states, a batch row inserted in the same transaction) and a list recorded for a
    send whose row is checked once. SQLite evaluates the `state IN (...)` CHECK at ~0.8 µs a row, more than
    the rest of a claim's UPDATE. The pragmas are no-ops inside a transaction, so this goes around them,
    and once around a whole loop: each switch makes SQLite prepare every statement again."""
    _checks(conn, on=False)
    try:
        yield
    finally:
        _checks(conn, on=True)


def _checks(conn: sqlite3.Connection, *, on: bool) -> None:
    conn.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")
    conn.execute(f"PRAGMA ignore_check_constraints = {'OFF' if on else 'ON'}")


# --- suppressions ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Suppression:
    email: str
    reason: str
    source: str
    created_at: str


def insert_suppression(conn: sqlite3.Connection, email: str, *, reason: str, source: str) -> bool:
    """add_suppression inside a transaction the caller holds (an event and its suppression commit together)."""
    cursor = conn.execute("INSERT OR IGNORE INTO suppressions (email, reason, source, created_at) VALUES (?, ?, ?, ?)",
                          (email.strip(), reason, source, now()))
    return cursor.rowcount == 1


def add_suppression(conn: sqlite3.Connection, email: str, *, reason: str, source: str) -> bool:
    """Suppress an address for every list; False if it already was (the first reason is kept)."""
    with transaction(conn):
        return insert_suppression(conn, email, reason=reason, source=source)


def add_suppressions(conn: sqlite3.Connection, found: Iterable[tuple[str, str]], *, source: str) -> int:
    """(address, reason) pairs in one transaction; returns how many were new."""
    with transaction(conn):
        return sum(insert_suppression(conn, email, reason=reason, source=source) for email, reason in found)


def remove_suppression(conn: sqlite3.Connection, email: str) -> bool:
    """Allow mail to an address again; False if it was not suppressed."""
    with transaction(conn):
        cursor = conn.execute("DELETE FROM suppressions WHERE email = ?", (email.strip(),))
    return cursor.rowcount == 1


def list_suppressions(conn: sqlite3.Connection) -> list[Suppression]:
    rows = conn.execute("SELECT email, reason, source, created_at FROM suppressions ORDER BY created_at, email")
    return [Suppression(email=e, reason=r, source=s, created_at=c) for e, r, s, c in rows]


def is_suppressed(conn: sqlite3.Connection, email: str) -> bool:
    return conn.execute("SELECT 1 FROM suppressions WHERE email = ?", (email.strip(),)).fetchone() is not None


def suppressed_set(conn: sqlite3.Connection) -> set[str]:
    """Every suppressed address, lower-cased: a fast membership test while streaming a list."""
    return {row[0].lower() for row in conn.execute("SELECT email FROM suppressions")}


# --- sends ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Send:
    id: int
    issue: str
    list_name: str
    transport: str
    content_hash: str
    subject: str
    send_at: str | None
    created_at: str
    finished_at: str | None


_SEND_COLUMNS = "id, issue, list, transport, content_hash, subject, send_at, created_at, finished_at"


def _send(row: Sequence[object]) -> Send:
    i, issue, list_name, transport, content_hash, subject, send_at, created, finished = row
    return Send(id=int(i), issue=str(issue), list_name=str(list_name), transport=str(transport),  # type: ignore[call-overload]
                content_hash=str(content_hash), subject=str(subject), send_at=send_at,  # type: ignore[arg-type]
                created_at=str(created), finished_at=finished)  # type: ignore[arg-type]


def find_send(conn: sqlite3.Connection, *, issue: str, list_name: str, transport: str) -> Send | None:
    row = conn.execute(f"SELECT {_SEND_COLUMNS} FROM sends WHERE issue = ? AND list = ? AND transport = ?",
                       (issue, list_name, transport)).fetchone()
    return _send(row) if row else None


def sends_of_issue(conn: sqlite3.Connection, issue: str) -> list[Send]:
    rows = conn.execute(f"SELECT {_SEND_COLUMNS} FROM sends WHERE issue = ? ORDER BY list, transport", (issue,))
    return [_send(row) for row in rows]


def create_send(conn: sqlite3.Connection, *, issue: str, list_name: str, transport: str, content_hash: str,
                subject: str, send_at: str | None = None) -> Send:
    with transaction(conn):
        conn.execute("INSERT INTO sends (issue, list, transport, content_hash, subject, send_at, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", (issue, list_name, transport, content_hash, subject, send_at,
                                                      now()))
    found = find_send(conn, issue=issue, list_name=list_name, transport=transport)
    assert found is not None
    return found


def update_send(conn: sqlite3.Connection, send_id: int, *, content_hash: str, subject: str,
                send_at: str | None) -> None:
    """After the operator allowed changed content: the rest of the send uses the new build."""
    with transaction(conn):
        conn.execute("UPDATE sends SET content_hash = ?, subject = ?, send_at = ? WHERE id = ?",
                     (content_hash, subject, send_at, send_id))


def delete_send(conn: sqlite3.Connection, send_id: int) -> None:
    """Forget a send entirely (outbox runs start afresh each time; never used for real sends)."""
    with transaction(conn):
        conn.execute("DELETE FROM deliveries WHERE send_id = ?", (send_id,))
        conn.execute("DELETE FROM batches WHERE send_id = ?", (send_id,))
        conn.execute("DELETE FROM sends WHERE id = ?", (send_id,))


def finish_send(conn: sqlite3.Connection, send_id: int) -> None:
    with transaction(conn):
        conn.execute("UPDATE sends SET finished_at = ? WHERE id = ?", (now(), send_id))


# --- deliveries -----------------------------------------------------------------------------------------

Row = tuple[str, str, str | None]  # (email, name, merge fields as JSON or None)


def add_recipients(conn: sqlite3.Connection, send_id: int, rows: Iterable[Row]) -> int:
    """Record the recipients of a new send (one transaction); duplicates are ignored. Returns rows added.

    `rows` is read in a helper thread while SQLite inserts (see pipeline.bulk). The send's row is checked
    once instead of a foreign key lookup for each of a million rows, and the state is the default one.
    """
    with unchecked_writes(conn), transaction(conn):
        if conn.execute("SELECT 1 FROM sends WHERE id = ?", (send_id,)).fetchone() is None:
            raise SendError(f"send {send_id} is not in the send log")
        before = conn.total_changes
        insert_chunks(conn, f"INSERT OR IGNORE INTO deliveries (send_id, email, name, fields) "
                      f"SELECT {int(send_id)}, {json_columns(3)} FROM json_each(?)", rows)
        return conn.total_changes - before


def sync_recipients(conn: sqlite3.Connection, send_id: int, rows: Iterable[Row]) -> int:
    """On a re-run: add recipients new to the list, mark unsent ones no longer in it `removed`.

    Rows already recorded keep their name and fields (the resumed send mails what the first part did);
    a `removed` row back in the list, or a `suppressed` one no longer suppressed (the reader skips suppressed
    addresses), becomes `pending` again. Returns rows added.
    """
    with transaction(conn):
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS listed (email TEXT PRIMARY KEY COLLATE NOCASE, "
                     "name TEXT, fields TEXT)")
        conn.execute("DELETE FROM temp.listed")
        insert_chunks(conn, f"INSERT OR IGNORE INTO temp.listed (email, name, fields) "
                      f"SELECT {json_columns(3)} FROM json_each(?)", rows)
        before = conn.total_changes
        conn.execute("INSERT OR IGNORE INTO deliveries (send_id, email, name, fields) "
                     "SELECT ?, email, name, fields FROM temp.listed ORDER BY rowid", (send_id,))
        added = conn.total_changes - before
        stamp = now()
        for new, condition in (("suppressed", "IN (SELECT email FROM suppressions)"),
                               ("removed", "NOT IN (SELECT email FROM temp.listed)")):
            conn.execute(f"UPDATE deliveries SET state = '{new}', updated_at = ? WHERE send_id = ? "
                         f"AND state IN ('pending', 'failed') AND email {condition}", (stamp, send_id))
        conn.execute("UPDATE deliveries SET state = 'pending', updated_at = ? WHERE send_id = ? AND state IN "
                     "('removed', 'suppressed') AND email IN (SELECT email FROM temp.listed)", (stamp, send_id))
        conn.execute("DELETE FROM temp.listed")
    return added


def recover_in_flight(conn: sqlite3.Connection, send_id: int) -> int:
    """After a process died (call with the send's lock held): requests it left in flight are in doubt;
    batches it left waiting to retry (last answer 429/5xx, so certainly not sent) are failed, to be sent
    again. Returns the number of batches put in doubt."""
    with transaction(conn):
        stamp = now()
        for state, new in (("waiting", "failed"), ("in_flight", "in_doubt")):
            conn.execute(f"UPDATE deliveries SET state = '{new}', updated_at = ? WHERE send_id = ? AND state = "
                         f"'in_flight' AND batch_id IN (SELECT id FROM batches WHERE send_id = ? AND state = ?)",
                         (stamp, send_id, send_id, state))
            cursor = conn.execute(f"UPDATE batches SET state = '{new}', finished_at = ?, error = "
                                  f"'process ended ' || coalesce('after: ' || error, 'before the answer') "
                                  f"WHERE send_id = ? AND state = ?", (stamp, send_id, state))
    return cursor.rowcount


_COUNTS = "SELECT " + ", ".join(f"count(*) FILTER (WHERE state = '{s}')" for s in STATES) + " FROM deliveries"


def counts(conn: sqlite3.Connection, send_id: int) -> dict[str, int]:
    """Deliveries per state, in one pass (GROUP BY would sort a million rows: a third slower)."""
    return dict(zip(STATES, conn.execute(f"{_COUNTS} WHERE send_id = ?", (send_id,)).fetchone(), strict=True))


def in_doubt_addresses(conn: sqlite3.Connection, send_id: int) -> list[str]:
    return [r[0] for r in conn.execute("SELECT email FROM deliveries WHERE send_id = ? AND state = 'in_doubt' "
                                       "ORDER BY id", (send_id,))]


def send_times(conn: sqlite3.Connection, send_id: int) -> tuple[str | None, str | None]:
    """When the first and the last accepted request of a send finished."""
    row = conn.execute("SELECT min(finished_at), max(finished_at) FROM batches WHERE send_id = ? "
                       "AND state = 'accepted'", (send_id,)).fetchone()
    return row[0], row[1]
