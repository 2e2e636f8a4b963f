"""Erasure on request in the SQLite store: find every trace of an address, erase it in one transaction.

What is written in place of the address is decided in _erasing. The file must not keep the erased bytes:
the transaction runs with `secure_delete` on (SQLite zeroes what it frees and rewrites), a checkpoint then
copies the new pages over the old ones and truncates the WAL, and when the file has free pages (freed
earlier, without zeroing, by an older version or another program) it is rebuilt with VACUUM, once per store:
an erase of several addresses rebuilds a large send log once, not once per address.
"""

from __future__ import annotations

import sqlite3

from pipeline.store._erasing import (
    delivery_pseudonym,
    event_pseudonym,
    fold,
    holds,
    minimal_payload,
    scrub_record,
    scrub_text,
)
from pipeline.store._sqlite_state import settle_send
from pipeline.store._sqlite_tx import snapshot, transaction
from pipeline.store._types import Erased, EventRecord, erased_marker, now

# Deliveries that could still be mailed (a resumed send, --resend-in-doubt) become `suppressed` when erased:
# their address is a pseudonym that must never be sent to. Accepted, suppressed and removed rows keep their state.
UNSENT = ("pending", "failed", "in_doubt", "in_flight")
# Readers readmitted after a send was created: it may have mailed them before their erase, so it still skips them.
_READMITTED_SINCE = "SELECT r.marker FROM readmitted r JOIN sends s ON s.id = ? WHERE r.readmitted_at > s.created_at"
_EVENTS = ("SELECT id, email, delivery_id, event, occurred_at, url FROM events WHERE email = ? "
           "OR instr(lower(payload), ?) > 0 OR instr(lower(coalesce(url, '')), ?) > 0")


class EraseMixin:
    conn: sqlite3.Connection
    _rebuilt = False  # VACUUM ran once for this store: what is freed since was zeroed (secure_delete)

    def erased_markers(self, send_id: int | None = None) -> set[str]:
        """The markers of erased readers; for a send, also of those readmitted since it was created."""
        markers = {str(row[0]) for row in self.conn.execute("SELECT marker FROM erased")}
        if send_id is not None:
            markers.update(str(row[0]) for row in self.conn.execute(_READMITTED_SINCE, (send_id,)))
        return markers

    def readmit(self, email: str) -> bool:
        """Lift the erase of `email` (the reader asked to be mailed again); False if it was not erased."""
        marker = erased_marker(email)
        with transaction(self.conn) as conn:
            conn.execute("INSERT INTO readmitted (marker, erased_at, readmitted_at) SELECT marker, erased_at, ? FROM "
                         "erased WHERE marker = ? ON CONFLICT (marker) DO UPDATE SET erased_at = excluded.erased_at, "
                         "readmitted_at = excluded.readmitted_at", (now(), marker))
            return conn.execute("DELETE FROM erased WHERE marker = ?", (marker,)).rowcount == 1

    def recorded_erased(self, send_id: int, markers: set[str]) -> list[str]:
        """The addresses of the send's deliveries whose erased marker is in `markers` (each row hashed: rare)."""
        rows = self.conn.execute("SELECT email FROM deliveries WHERE send_id = ?", (send_id,))
        return [str(email) for (email,) in rows if erased_marker(email) in markers]

    def is_erased(self, email: str) -> bool:
        return self.conn.execute("SELECT 1 FROM erased WHERE marker = ?", (erased_marker(email),)).fetchone() \
            is not None

    def _scrub_erased(self, events: list[EventRecord]) -> list[EventRecord]:
        """Events of erased addresses stored without the address (inside the caller's transaction)."""
        if not events or self.conn.execute("SELECT 1 FROM erased LIMIT 1").fetchone() is None:
            return events
        markers = self.erased_markers()
        return [scrub_record(r) if r.email and erased_marker(r.email) in markers else r for r in events]

    def find_address(self, email: str) -> Erased:
        """Where the address is kept (case-insensitively), counted; nothing is changed."""
        with snapshot(self.conn):
            return self._find(email.strip())

    def _find(self, address: str) -> Erased:
        conn, folded = self.conn, fold(address)
        sends = conn.execute("SELECT s.issue, s.list, s.transport, count(*) FROM deliveries d JOIN sends s ON "
                             "s.id = d.send_id WHERE d.email = ? GROUP BY s.id ORDER BY s.id", (address,)).fetchall()
        events = conn.execute(_EVENTS.replace("SELECT id, email, delivery_id, event, occurred_at, url",
                                              "SELECT count(*)"), (address, folded, folded)).fetchone()[0]
        suppressed = conn.execute("SELECT count(*) FROM suppressions WHERE email = ?", (address,)).fetchone()[0]
        errors = conn.execute("SELECT count(*) FROM batches WHERE instr(lower(error), ?) > 0", (folded,)).fetchone()[0]
        return Erased(deliveries=sum(int(row[3]) for row in sends),
                      sends=tuple((str(i), str(n), str(t)) for i, n, t, _ in sends), events=int(events),
                      suppressions=int(suppressed), rejects=len(self._rejects_holding(address)),
                      batch_errors=int(errors), marked=self.is_erased(address))

    def _rejects_holding(self, address: str) -> list[str]:
        """Kept webhook bodies (at most MAX_REJECTS) that hold the address, read one at a time."""
        keys = [str(row[0]) for row in self.conn.execute("SELECT body_sha256 FROM webhook_rejects")]
        return [k for k in keys if holds(self.conn.execute("SELECT body FROM webhook_rejects WHERE body_sha256 = ?",
                                                           (k,)).fetchone()[0], address)]

    def erase_address(self, email: str, *, leave_no_copy: bool = True) -> Erased:
        """Erase every trace of the address in one transaction and keep its marker (see _erasing); returns what
        was changed. Call it with the locks of the sends it touches held: an unsent delivery becomes
        `suppressed`, and deferred batches are settled first (see _sqlite_state)."""
        address, conn = email.strip(), self.conn
        conn.execute("PRAGMA secure_delete = ON")  # as every connection of the store opens, whatever changed it
        with transaction(conn):
            found = self._find(address)
            mine = conn.execute("SELECT id, send_id FROM deliveries WHERE email = ?", (address,)).fetchall()
            for send_id in dict.fromkeys(send_id for _, send_id in mine):
                settle_send(conn, send_id)  # state and batch only: the ids read above stay the rows of the address
            stamp, unsent = now(), ", ".join(f"'{s}'" for s in UNSENT)
            for delivery_id, _ in mine:
                conn.execute(f"UPDATE deliveries SET email = ?, name = '', fields = NULL, state = CASE WHEN state "
                             f"IN ({unsent}) THEN 'suppressed' ELSE state END, updated_at = CASE WHEN state IN "
                             f"({unsent}) THEN ? ELSE updated_at END WHERE id = ?",
                             (delivery_pseudonym(delivery_id), stamp, delivery_id))
            self._erase_events(address)
            for batch_id, error in conn.execute("SELECT id, error FROM batches WHERE instr(lower(error), ?) > 0",
                                                (fold(address),)).fetchall():
                conn.execute("UPDATE batches SET error = ? WHERE id = ?", (scrub_text(error, address), batch_id))
            conn.execute("DELETE FROM suppressions WHERE email = ?", (address,))
            for digest in self._rejects_holding(address):
                conn.execute("DELETE FROM webhook_rejects WHERE body_sha256 = ?", (digest,))
            conn.execute("INSERT OR IGNORE INTO erased (marker, erased_at) VALUES (?, ?)",
                         (erased_marker(address), stamp))
            conn.execute("DELETE FROM readmitted WHERE marker = ?", (erased_marker(address),))
        if leave_no_copy:
            self.leave_no_copy()
        return found

    def _erase_events(self, address: str) -> None:
        folded = fold(address)
        for event_id, email, delivery_id, event, occurred_at, url in self.conn.execute(
                _EVENTS, (address, folded, folded)).fetchall():
            mine = email is not None and fold(email) == folded  # else the address was only in its payload or URL
            self.conn.execute("UPDATE events SET email = ?, payload = ?, url = ? WHERE id = ?",
                              (event_pseudonym(event_id, delivery_id) if mine else email,
                               minimal_payload(event, occurred_at), scrub_text(url, address), event_id))

    def leave_no_copy(self) -> None:
        """The erased bytes out of the file: checkpoint the WAL into it and truncate it; rebuild the file once
        when it has free pages (freed before every connection zeroed what it frees: an older send log, or
        another program). Rebuilt in a temporary file, not in memory: it is as large as the send log."""
        if not self._rebuilt and int(self.conn.execute("PRAGMA freelist_count").fetchone()[0]):
            self.conn.execute("PRAGMA temp_store = FILE")
            try:
                self.conn.execute("VACUUM")
            finally:
                self.conn.execute("PRAGMA temp_store = MEMORY")
            self._rebuilt = True
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
