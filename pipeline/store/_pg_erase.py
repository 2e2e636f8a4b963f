"""Erasure on request in the PostgreSQL store: the SQLite engine's (_sqlite_erase), whose docstrings say what each
method means.

PostgreSQL keeps old row versions until VACUUM makes their space reusable, and its WAL (and any base backup
or replica) keeps them longer: after the commit the touched tables are vacuumed, which hides the old versions
from everything but the files; the README says what stays (Erasing a reader).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg

from pipeline.errors import StoreError
from pipeline.store._erasing import (
    delivery_pseudonym,
    event_pseudonym,
    fold,
    holds,
    minimal_payload,
    scrub_record,
    scrub_text,
)
from pipeline.store._pg_schema import key
from pipeline.store._sqlite_erase import UNSENT
from pipeline.store._types import Erased, EventRecord, erased_marker, now

_ADDRESS = f"{key('email')} = {key('%s::text')}"
_EVENTS = (f"SELECT id, email, delivery_id, event, occurred_at, url FROM events WHERE {_ADDRESS} "
           f'OR strpos(lower(payload COLLATE "C"), %s) > 0 OR strpos(lower(url COLLATE "C"), %s) > 0')
_ERRORS = 'SELECT id, error FROM batches WHERE strpos(lower(error COLLATE "C"), %s) > 0'
# As in _sqlite_erase: readers readmitted after the send was created, which it still skips.
_READMITTED_SINCE = ('SELECT r.marker FROM readmitted r JOIN sends s ON s.id = %s '
                     'WHERE r.readmitted_at COLLATE "C" > s.created_at COLLATE "C"')
TOUCHED = ("deliveries", "events", "batches", "suppressions", "webhook_rejects")
# Advisory lock key ("nl_erase"): an erase takes it alone, every transaction that may write an address shares it.
# READ COMMITTED lets an erase miss rows that a webhook post or a recording list commits after the erase read
# (SQLite has one writer at a time: no such gap).
ERASE_LOCK = 0x6E6C5F6572617365


class PgEraseMixin:
    def _tx(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        raise NotImplementedError

    def _connect(self, **defaults: Any) -> psycopg.Connection[Any]:
        raise NotImplementedError

    @contextmanager
    def _writing_addresses(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction that may write an address (events, suppressions, a list recorded): it waits for an erase
        under way, and an erase waits for it, so the erase sees every row it committed."""
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (ERASE_LOCK,))
            yield conn

    def erased_markers(self, send_id: int | None = None) -> set[str]:
        """The markers of erased readers; for a send, also of those readmitted since it was created."""
        with self._tx() as conn:
            markers = {str(row[0]) for row in conn.execute("SELECT marker FROM erased")}
            if send_id is not None:
                markers.update(str(row[0]) for row in conn.execute(_READMITTED_SINCE, (send_id,)))
            return markers

    def readmit(self, email: str) -> bool:
        """Lift the erase of `email` (the reader asked to be mailed again); False if it was not erased."""
        marker = erased_marker(email)
        with self._tx() as conn:
            conn.execute("INSERT INTO readmitted (marker, erased_at, readmitted_at) SELECT marker, erased_at, %s FROM "
                         "erased WHERE marker = %s ON CONFLICT (marker) DO UPDATE SET erased_at = excluded.erased_at, "
                         "readmitted_at = excluded.readmitted_at", (now(), marker))
            return conn.execute("DELETE FROM erased WHERE marker = %s", (marker,)).rowcount == 1

    def recorded_erased(self, send_id: int, markers: set[str]) -> list[str]:
        with self._tx() as conn, conn.cursor(name="recorded_erased") as cursor:  # on the server: a few rows at a time
            cursor.execute("SELECT email FROM deliveries WHERE send_id = %s", (send_id,))
            return [str(email) for (email,) in cursor if erased_marker(email) in markers]

    def is_erased(self, email: str) -> bool:
        with self._tx() as conn:
            return conn.execute("SELECT 1 FROM erased WHERE marker = %s", (erased_marker(email),)).fetchone() \
                is not None

    def _scrub_erased(self, conn: psycopg.Connection[Any], events: list[EventRecord]) -> list[EventRecord]:
        """Events of erased addresses stored without the address (inside the caller's transaction)."""
        if not events or conn.execute("SELECT 1 FROM erased LIMIT 1").fetchone() is None:
            return events
        markers = {erased_marker(r.email) for r in events if r.email}
        erased = {str(row[0]) for row in conn.execute("SELECT marker FROM erased WHERE marker = ANY(%s)",
                                                      (list(markers),))}
        return [scrub_record(r) if r.email and erased_marker(r.email) in erased else r for r in events]

    def find_address(self, email: str) -> Erased:
        """Where the address is kept (case-insensitively), counted; nothing is changed."""
        with self._tx() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return self._find(conn, email.strip())

    def _find(self, conn: psycopg.Connection[Any], address: str) -> Erased:
        folded = fold(address)
        sends = conn.execute(f"SELECT s.issue, s.list, s.transport, count(*) FROM deliveries d JOIN sends s ON "
                             f"s.id = d.send_id WHERE {key('d.email')} = {key('%s::text')} GROUP BY s.id ORDER BY "
                             f"s.id", (address,)).fetchall()
        events = len(conn.execute(_EVENTS, (address, folded, folded)).fetchall())
        row = conn.execute(f"SELECT count(*) FROM suppressions WHERE {_ADDRESS}", (address,)).fetchone()
        errors = len(conn.execute(_ERRORS, (folded,)).fetchall())
        marked = conn.execute("SELECT 1 FROM erased WHERE marker = %s", (erased_marker(address),)).fetchone()
        return Erased(deliveries=sum(int(r[3]) for r in sends), sends=tuple((str(i), str(n), str(t))
                                                                            for i, n, t, _ in sends),
                      events=events, suppressions=int(row[0]) if row else 0,
                      rejects=len(self._rejects_holding(conn, address)), batch_errors=errors, marked=marked is not None)

    def _rejects_holding(self, conn: psycopg.Connection[Any], address: str) -> list[str]:
        keys = [str(row[0]) for row in conn.execute("SELECT body_sha256 FROM webhook_rejects")]
        found = []
        for digest in keys:
            row = conn.execute("SELECT body FROM webhook_rejects WHERE body_sha256 = %s", (digest,)).fetchone()
            if row is not None and holds(bytes(row[0]), address):
                found.append(digest)
        return found

    def erase_address(self, email: str, *, leave_no_copy: bool = True) -> Erased:
        """Erase every trace of the address in one transaction and keep its marker; then vacuum the tables."""
        address, folded = email.strip(), fold(email)
        unsent = ", ".join(f"'{s}'" for s in UNSENT)
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ERASE_LOCK,))
            found = self._find(conn, address)
            stamp = now()
            for (send_id, delivery_id) in conn.execute(f"SELECT send_id, id FROM deliveries WHERE {_ADDRESS} "
                                                       f"FOR UPDATE", (address,)).fetchall():
                conn.execute(f"UPDATE deliveries SET email = %s, name = '', fields = NULL, state = CASE WHEN state "
                             f"IN ({unsent}) THEN 'suppressed' ELSE state END, updated_at = CASE WHEN state IN "
                             f"({unsent}) THEN %s ELSE updated_at END WHERE send_id = %s AND id = %s",
                             (delivery_pseudonym(delivery_id), stamp, send_id, delivery_id))
            for event_id, old, delivery_id, event, occurred_at, url in conn.execute(
                    _EVENTS, (address, folded, folded)).fetchall():
                mine = old is not None and fold(old) == folded  # else the address was only in its payload or URL
                conn.execute("UPDATE events SET email = %s, payload = %s, url = %s WHERE id = %s",
                             (event_pseudonym(event_id, delivery_id) if mine else old,
                              minimal_payload(event, occurred_at), scrub_text(url, address), event_id))
            for batch_id, error in conn.execute(_ERRORS, (folded,)).fetchall():
                conn.execute("UPDATE batches SET error = %s WHERE id = %s", (scrub_text(error, address), batch_id))
            conn.execute(f"DELETE FROM suppressions WHERE {_ADDRESS}", (address,))
            for digest in self._rejects_holding(conn, address):
                conn.execute("DELETE FROM webhook_rejects WHERE body_sha256 = %s", (digest,))
            conn.execute("INSERT INTO erased (marker, erased_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                         (erased_marker(address), stamp))
            conn.execute("DELETE FROM readmitted WHERE marker = %s", (erased_marker(address),))
        if leave_no_copy:
            self.leave_no_copy()
        return found

    def leave_no_copy(self) -> None:
        """VACUUM of the touched tables, so that the old row versions go (it cannot run inside a transaction: on
        a connection of its own, in autocommit)."""
        try:
            with self._connect() as conn:
                conn.autocommit = True
                conn.execute(f"VACUUM {', '.join(TOUCHED)}")
        except psycopg.Error as exc:
            tables, why = ", ".join(TOUCHED), exc.diag.message_primary or type(exc).__name__
            raise StoreError(f"the address was erased, but VACUUM of {tables} failed ({why}) — run `VACUUM {tables}` "
                             f"on the database yourself (as the tables' owner), so that the old row versions go") \
                from None
