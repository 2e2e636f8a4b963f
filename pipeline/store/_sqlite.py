"""The SQLite engine: one file (WAL) beside the newsletter, nothing to set up; the embedded default.

Delivery states: ``pending`` (not sent yet), ``in_flight`` (its request is under way), ``accepted``
(SendGrid answered 202), ``in_doubt`` (the request died without an answer: maybe sent), ``failed``
(SendGrid refused the request or retries ran out: certainly not sent; a re-run sends it again),
``suppressed`` (suppressed before it was sent), ``removed`` (no longer in the list on a re-run).
Batch states: ``in_flight`` (request under way), ``waiting`` (got 429/5xx, waiting to retry: certainly
not sent), ``accepted``, ``in_doubt``, ``failed``. Only ``accepted`` deliveries count as sent.
Addresses compare case-insensitively (ASCII, as the list reader dedupes them).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import SendError
from pipeline.store._bulk import insert_chunks, json_columns
from pipeline.store._lock import SendLock
from pipeline.store._sqlite_claims import ClaimsMixin
from pipeline.store._sqlite_erase import EraseMixin
from pipeline.store._sqlite_events import EventsMixin
from pipeline.store._sqlite_schema import MIGRATIONS
from pipeline.store._sqlite_state import (
    HOLDER_JOIN,
    ROW_STATE,
    deferred_counts,
    deferred_edition_counts,
    settle_send,
)
from pipeline.store._sqlite_stop import StopMixin
from pipeline.store._sqlite_tx import snapshot, transaction
from pipeline.store._types import STATES, ListRow, Send, Suppression, erased_marker, now

WAL_KEPT_BYTES = 64 * 1024 * 1024
TABLES = ("sends", "batches", "deliveries", "suppressions", "events", "delivery_status", "webhook_rejects", "erased",
          "readmitted")


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


_SEND_COLUMNS = "id, issue, list, transport, content_hash, subject, send_at, created_at, finished_at"
_COUNTS = "SELECT " + ", ".join(f"count(*) FILTER (WHERE state = '{s}')" for s in STATES) + " FROM deliveries"
_EDITION = "coalesce(json_extract(value, '$[3]'), '')"  # a ListRow's edition, '' when it has none


def _send(row: tuple[object, ...]) -> Send:
    i, issue, list_name, transport, content_hash, subject, send_at, created, finished = row
    return Send(id=int(i), issue=str(issue), list_name=str(list_name), transport=str(transport),  # type: ignore[call-overload]
                content_hash=str(content_hash), subject=str(subject), send_at=send_at,  # type: ignore[arg-type]
                created_at=str(created), finished_at=finished)  # type: ignore[arg-type]


class SQLiteStore(EraseMixin, ClaimsMixin, EventsMixin, StopMixin):
    """The store in one SQLite file. Autocommit mode: every write is in an explicit transaction."""

    engine = "sqlite"

    def __init__(self, path: Path, *, state_dir: Path | None = None) -> None:
        self.path = path
        self.where = str(path)
        self._state_dir = state_dir or path.parent
        try:
            # Personal data: the file (and the WAL and shm files SQLite makes with its mode) for this user only.
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a committed intent survives a power cut too, so a request is never made for an intent that
            # could be lost (a sub-millisecond fsync per commit, one commit per request)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA cache_size = -32768")  # 32 MB: a million-row send keeps its indexes in memory
            conn.execute("PRAGMA temp_store = MEMORY")
            # What a delete or an update frees is zeroed, so an erased reader's bytes do not stay in free pages
            # (the sqlite3 library of Debian 12 has it on already: the figures in README were measured with it)
            conn.execute("PRAGMA secure_delete = ON")
            # Recording a list of 10M leaves a 1.1 GB WAL; kept, its stale pages took page cache the send
            # loop needed for the database's own (a 10M send read 480 MB of them back from disk): the first
            # commit after a checkpoint cuts it back to this size
            conn.execute(f"PRAGMA journal_size_limit = {WAL_KEPT_BYTES}")
            self.conn = conn
            # Embedded and single-user: migrations are applied on open, as `newsletter db migrate` would.
            self.migrate()
        except sqlite3.Error as exc:
            raise SendError(f"{path}: cannot open the send log ({exc}) — check that the folder is writable; "
                            "if the file is damaged, move it away (it holds what was sent: keep it)") from None

    def close(self) -> None:
        self.conn.close()

    def transaction(self) -> transaction:
        return transaction(self.conn)

    # --- migrations, locks, the send loop's mode --------------------------------------------------------

    def applied_migrations(self) -> list[str]:
        self.conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, "
                          "applied_at TEXT NOT NULL)")
        # in the order they are applied (two applied within one millisecond tie on applied_at)
        return [row[0] for row in self.conn.execute("SELECT name FROM schema_migrations ORDER BY rowid")]

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet, each in its own transaction; return their names."""
        applied = set(self.applied_migrations())
        done = []
        for name, script in MIGRATIONS:
            if name in applied:
                continue
            with transaction(self.conn) as conn:
                if conn.execute("SELECT 1 FROM schema_migrations WHERE name = ?", (name,)).fetchone():
                    continue  # another process applied it meanwhile
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, now()))
            done.append(name)
        return done

    def lock(self, *, issue: str, list_name: str) -> SendLock:
        """An OS file lock beside the database: one send of an issue to a list at a time on this machine."""
        return SendLock(self._state_dir, issue=issue, list_name=list_name)

    @contextmanager
    def sending(self) -> Iterator[None]:
        """CHECK and foreign key checks off around the send loop, whose writes are fixed ones (constant states,
        a batch row inserted in the same transaction). SQLite evaluates the `state IN (...)` CHECK at ~0.8 µs
        a row, more than the rest of a claim's UPDATE. The pragmas are no-ops inside a transaction, so this
        goes around the whole loop: each switch makes SQLite prepare every statement again."""
        self._checks(on=False)
        try:
            yield
        finally:
            self._checks(on=True)

    def _checks(self, *, on: bool) -> None:
        self.conn.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")
        self.conn.execute(f"PRAGMA ignore_check_constraints = {'OFF' if on else 'ON'}")

    # --- suppressions -----------------------------------------------------------------------------------

    def _insert_suppression(self, email: str, *, reason: str, source: str) -> bool:
        """Not for an erased address: its marker suppresses it already, and the address must not come back."""
        cursor = self.conn.execute("INSERT OR IGNORE INTO suppressions (email, reason, source, created_at) "
                                   "SELECT ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM erased WHERE marker = ?)",
                                   (email.strip(), reason, source, now(), erased_marker(email)))
        return cursor.rowcount == 1

    def add_suppression(self, email: str, *, reason: str, source: str) -> bool:
        """Suppress an address for every list; False if it already was (the first reason is kept)."""
        with transaction(self.conn):
            return self._insert_suppression(email, reason=reason, source=source)

    def add_suppressions(self, found: Iterable[tuple[str, str]], *, source: str) -> int:
        """(address, reason) pairs in one transaction; returns how many were new."""
        with transaction(self.conn):
            return sum(self._insert_suppression(email, reason=reason, source=source) for email, reason in found)

    def remove_suppression(self, email: str) -> bool:
        """Allow mail to an address again; False if it was not suppressed."""
        with transaction(self.conn):
            cursor = self.conn.execute("DELETE FROM suppressions WHERE email = ?", (email.strip(),))
        return cursor.rowcount == 1

    def list_suppressions(self) -> list[Suppression]:
        rows = self.conn.execute("SELECT email, reason, source, created_at FROM suppressions "
                                 "ORDER BY created_at, email")
        return [Suppression(email=e, reason=r, source=s, created_at=c) for e, r, s, c in rows]

    def is_suppressed(self, email: str) -> bool:
        return self.conn.execute("SELECT 1 FROM suppressions WHERE email = ?", (email.strip(),)).fetchone() is not None

    def suppressed_set(self) -> set[str]:
        """Every suppressed address, lower-cased: a fast membership test while streaming a list."""
        return {row[0].lower() for row in self.conn.execute("SELECT email FROM suppressions")}

    # --- sends ------------------------------------------------------------------------------------------

    def find_send(self, *, issue: str, list_name: str, transport: str) -> Send | None:
        row = self.conn.execute(f"SELECT {_SEND_COLUMNS} FROM sends WHERE issue = ? AND list = ? AND transport = ?",
                                (issue, list_name, transport)).fetchone()
        return _send(row) if row else None

    def sends_of_issue(self, issue: str) -> list[Send]:
        rows = self.conn.execute(f"SELECT {_SEND_COLUMNS} FROM sends WHERE issue = ? ORDER BY list, transport",
                                 (issue,))
        return [_send(row) for row in rows]

    def create_send(self, *, issue: str, list_name: str, transport: str, content_hash: str, subject: str,
                    send_at: str | None = None) -> Send:
        with transaction(self.conn):
            self.conn.execute("INSERT INTO sends (issue, list, transport, content_hash, subject, send_at, created_at) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (issue, list_name, transport, content_hash, subject, send_at, now()))
        found = self.find_send(issue=issue, list_name=list_name, transport=transport)
        assert found is not None
        return found

    def update_send(self, send_id: int, *, content_hash: str, subject: str, send_at: str | None) -> None:
        """After the operator allowed changed content: the rest of the send uses the new build."""
        with transaction(self.conn):
            self.conn.execute("UPDATE sends SET content_hash = ?, subject = ?, send_at = ? WHERE id = ?",
                              (content_hash, subject, send_at, send_id))

    def delete_send(self, send_id: int) -> None:
        """Forget a send entirely (outbox runs start afresh each time; never used for real sends)."""
        with transaction(self.conn):
            self.conn.execute("DELETE FROM deliveries WHERE send_id = ?", (send_id,))
            self.conn.execute("DELETE FROM batches WHERE send_id = ?", (send_id,))
            self.conn.execute("DELETE FROM sends WHERE id = ?", (send_id,))

    def finish_send(self, send_id: int) -> None:
        with transaction(self.conn):
            self.conn.execute("UPDATE sends SET finished_at = ? WHERE id = ?", (now(), send_id))

    def sent_issues(self) -> set[str]:
        """Issues that are public: a real send of them has had at least one request accepted."""
        rows = self.conn.execute("SELECT DISTINCT s.issue FROM sends s JOIN batches b ON b.send_id = s.id "
                                 "WHERE s.transport = 'sendgrid' AND b.state = 'accepted'")
        return {str(row[0]) for row in rows}

    # --- deliveries -------------------------------------------------------------------------------------

    def add_recipients(self, send_id: int, rows: Iterable[ListRow]) -> int:
        """Record the recipients of a new send (one transaction); duplicates are ignored. Returns rows added.

        `rows` is read in a helper thread while SQLite inserts (see _bulk). The send's row is checked once
        instead of a foreign key lookup for each of a million rows, and the state is the default one.
        """
        with self.sending(), transaction(self.conn) as conn:
            if conn.execute("SELECT 1 FROM sends WHERE id = ?", (send_id,)).fetchone() is None:
                raise SendError(f"send {send_id} is not in the send log")
            before = conn.total_changes
            insert_chunks(conn, f"INSERT OR IGNORE INTO deliveries (send_id, email, name, fields, edition) "
                          f"SELECT {int(send_id)}, {json_columns(3)}, {_EDITION} FROM json_each(?)", rows)
            added = conn.total_changes - before
        self._after_bulk()
        return added

    def sync_recipients(self, send_id: int, rows: Iterable[ListRow]) -> int:
        """On a re-run: add recipients new to the list, mark unsent ones no longer in it `removed`.

        Rows already recorded keep their name and fields (the resumed send mails what the first part did);
        a `removed` row back in the list, or a `suppressed` one no longer suppressed (the reader skips
        suppressed addresses), becomes `pending` again. Returns rows added.
        """
        with transaction(self.conn) as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS listed (email TEXT PRIMARY KEY COLLATE NOCASE, "
                         "name TEXT, fields TEXT, edition TEXT)")
            conn.execute("DELETE FROM temp.listed")
            insert_chunks(conn, f"INSERT OR IGNORE INTO temp.listed (email, name, fields, edition) "
                          f"SELECT {json_columns(3)}, {_EDITION} FROM json_each(?)", rows)
            before = conn.total_changes
            conn.execute("INSERT OR IGNORE INTO deliveries (send_id, email, name, fields, edition) "
                         "SELECT ?, email, name, fields, edition FROM temp.listed ORDER BY rowid", (send_id,))
            added = conn.total_changes - before
            stamp = now()
            for new, condition in (("suppressed", "IN (SELECT email FROM suppressions)"),
                                   ("removed", "NOT IN (SELECT email FROM temp.listed)")):
                conn.execute(f"UPDATE deliveries SET state = '{new}', updated_at = ? WHERE send_id = ? "
                             f"AND state IN ('pending', 'failed') AND email {condition}", (stamp, send_id))
            conn.execute("UPDATE deliveries SET state = 'pending', updated_at = ? WHERE send_id = ? AND state IN "
                         "('removed', 'suppressed') AND email IN (SELECT email FROM temp.listed)", (stamp, send_id))
            conn.execute("DELETE FROM temp.listed")
        self._after_bulk()
        return added

    def _after_bulk(self) -> None:
        """After recording a list: the page cache it filled (32 MB) is of no use to the send loop, which reads
        each page once; freed, so that the body worker forked next does not inherit it (see send.bodies)."""
        self.conn.execute("PRAGMA shrink_memory")

    def recover_in_flight(self, send_id: int) -> int:
        """After a process died (call with the send's lock held): requests it left in flight are in doubt;
        batches it left waiting to retry (last answer 429/5xx, so certainly not sent) are failed, to be sent
        again. Returns the number of batches put in doubt."""
        with transaction(self.conn) as conn:
            settle_send(conn, send_id)  # every run starts from states held by the rows (see _sqlite_state)
            stamp = now()
            for state, new in (("waiting", "failed"), ("in_flight", "in_doubt")):
                conn.execute(f"UPDATE deliveries SET state = '{new}', updated_at = ? WHERE send_id = ? AND state = "
                             f"'in_flight' AND batch_id IN (SELECT id FROM batches WHERE send_id = ? AND state = ?)",
                             (stamp, send_id, send_id, state))
                cursor = conn.execute(f"UPDATE batches SET state = '{new}', finished_at = ?, error = "
                                      f"'process ended ' || coalesce('after: ' || error, 'before the answer') "
                                      f"WHERE send_id = ? AND state = ?", (stamp, send_id, state))
        return cursor.rowcount

    def counts(self, send_id: int) -> dict[str, int]:
        """Deliveries per state, in one pass (GROUP BY would sort a million rows: a third slower)."""
        with snapshot(self.conn):  # the rows and the deferred batches as of one moment
            row = self.conn.execute(f"{_COUNTS} WHERE send_id = ?", (send_id,)).fetchone()
            change = deferred_counts(self.conn, send_id)
        return {state: n + change[state] for state, n in zip(STATES, row, strict=True)}

    def in_doubt_addresses(self, send_id: int) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT email FROM deliveries WHERE send_id = ? AND state = "
                                                "'in_doubt' ORDER BY id", (send_id,))]

    def send_times(self, send_id: int) -> tuple[str | None, str | None]:
        """When the first and the last accepted request of a send finished."""
        row = self.conn.execute("SELECT min(finished_at), max(finished_at) FROM batches WHERE send_id = ? "
                                "AND state = 'accepted'", (send_id,)).fetchone()
        return row[0], row[1]

    # --- copying to another store -----------------------------------------------------------------------

    def snapshot(self) -> snapshot:
        """One read transaction around several reads (`db copy`: its dumps and counts see one moment)."""
        return snapshot(self.conn)

    def send_lists(self) -> list[tuple[str, str]]:
        """The (issue, list) of every send recorded: the send locks `db copy` holds."""
        return [(str(i), str(n)) for i, n in self.conn.execute("SELECT DISTINCT issue, list FROM sends "
                                                              "ORDER BY issue, list")]

    def table_counts(self) -> dict[str, int]:
        with snapshot(self.conn):  # the counts of one moment (inside `db copy`'s snapshot: the copied rows)
            return {t: int(self.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}

    def dump(self, table: str) -> Iterator[tuple[list[str], list[tuple[object, ...]]]]:
        """A table's rows in primary-key order, 10,000 at a time, with their column names."""
        assert table in TABLES
        cursor = self.conn.execute(self._dump_sql(table))
        columns = [d[0] for d in cursor.description]
        while chunk := cursor.fetchmany(10_000):
            yield columns, [tuple(r) for r in chunk]

    def _dump_sql(self, table: str) -> str:
        """Rows as the other engine keeps them: deliveries with the state and batch a deferred batch gives them,
        batches without their `deferred` mark and editions (see _sqlite_state)."""
        names = [str(r[1]) for r in self.conn.execute(f"PRAGMA table_info({table})")]
        if table == "batches":
            return f"SELECT {', '.join(n for n in names if n not in ('deferred', 'editions'))} FROM batches ORDER BY id"
        if table != "deliveries":
            return f"SELECT * FROM {table} ORDER BY rowid"
        special = {"state": f"CASE WHEN r.id IS NULL THEN d.state ELSE {ROW_STATE.format(b='r')} END AS state",
                   "batch_id": "coalesce(d.batch_id, r.id) AS batch_id"}
        picked = ", ".join(special.get(n, f"d.{n}") for n in names)
        return f"SELECT {picked} FROM deliveries d {HOLDER_JOIN.format(d='d', r='r')} ORDER BY d.id"

    def load(self, table: str, columns: list[str], rows: list[tuple[object, ...]]) -> None:
        assert table in TABLES
        with transaction(self.conn) as conn:
            conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                             rows)

    # --- editions ---------------------------------------------------------------------------------------

    def edition_counts(self, send_id: int) -> dict[str, dict[str, int]]:
        """Deliveries per edition and state ('' is the default edition of rows recorded before editions)."""
        found: dict[str, dict[str, int]] = {}
        with snapshot(self.conn):
            for edition, *row in self.conn.execute(f"{_COUNTS.replace('SELECT ', 'SELECT edition, ', 1)} WHERE "
                                                   "send_id = ? GROUP BY edition ORDER BY edition", (send_id,)):
                found[str(edition)] = dict(zip(STATES, row, strict=True))
            for edition, state, n in deferred_edition_counts(self.conn, send_id):
                found[edition]["pending"] -= n
                found[edition][state] += n
        return found
