"""SQLite: what stopping a send keeps (issue 12): the batch id, paused / cancelled, the webhook's counts.

PostgreSQL's twin is _pg_stop; the statements are the same but for the placeholders.
"""

from __future__ import annotations

import sqlite3

from pipeline.store._sqlite_tx import transaction
from pipeline.store._types import Outcomes, Schedule, Send, now

# Events that tell how a send is received; counted from `events` (index events_progress: issue, list, event, id).
OUTCOME_EVENTS = {"delivered": "delivered", "bounce": "bounced", "spamreport": "complaints"}
_PLACES = ", ".join(f"'{e}'" for e in OUTCOME_EVENTS)
OUTCOMES_SQL = ("SELECT event, count(*), max(id) FROM events WHERE issue = {p} AND list = {p} AND event IN "
                f"({_PLACES}) AND id > {{p}} AND status = 'applied' AND send_id = {{p}} GROUP BY event")
PREVIOUS_SQL = "SELECT max(id) FROM sends WHERE list = {p} AND transport = 'sendgrid' AND id < {p}"

# What a cancel (or a pause kept past SendGrid's 72 hours) at a time T discarded is the mail still held then:
# that of batches due after T. SendGrid takes a cancel no later than 10 minutes ahead (the margin): mail due more
# than that after T was surely held, mail due sooner may have gone out, earlier mail went out. {p}: placeholder.
_BAND = ("FROM deliveries WHERE send_id = {p} AND batch_id IN (SELECT id FROM batches WHERE send_id = {p} "
         "AND send_at > {p} AND send_at <= {p})")
HELD_COUNTS_SQL = ("SELECT count(*) FILTER (WHERE state = 'accepted' AND band = 1), "
                   "count(*) FILTER (WHERE state = 'in_doubt' AND band = 1), "
                   "count(*) FILTER (WHERE state = 'accepted' AND band = 2) FROM (SELECT state, 1 AS band "
                   + _BAND + " UNION ALL SELECT state, 2 AS band " + _BAND + ") AS held")
REOPEN_SQL = ("UPDATE deliveries SET state = 'pending', updated_at = {p} WHERE state IN ('accepted', 'in_doubt') "
              "AND id IN (SELECT id " + _BAND + ")",
              "UPDATE deliveries SET state = 'in_doubt', updated_at = {p} WHERE state = 'accepted' "
              "AND id IN (SELECT id " + _BAND + ")")
NEVER = 2**62  # a send_at no batch has: no upper bound


def held_bands(send_id: int, stopped_at: int, margin: int) -> tuple[tuple[int, int, int, int], ...]:
    """The parameters of `_BAND` for mail surely held (1) and maybe held (2) when the send stopped."""
    return (send_id, send_id, stopped_at + margin, NEVER), (send_id, send_id, stopped_at, stopped_at + margin)


SEND_SQL = "SELECT id, issue, list, transport, content_hash, subject, send_at, created_at, finished_at FROM sends " \
           "WHERE id = {p}"


def send_of(row: tuple[object, ...]) -> Send:
    i, issue, list_name, transport, content_hash, subject, send_at, created, finished = row
    return Send(id=int(i), issue=str(issue), list_name=str(list_name), transport=str(transport),  # type: ignore[call-overload]
                content_hash=str(content_hash), subject=str(subject), send_at=None if send_at is None else str(send_at),
                created_at=str(created), finished_at=None if finished is None else str(finished))


def outcomes_of(rows: list[tuple[object, ...]], after_event: int) -> Outcomes:
    counts = {field: 0 for field in OUTCOME_EVENTS.values()}
    last = after_event
    for event, count, top in rows:
        counts[OUTCOME_EVENTS[str(event)]] = int(count)  # type: ignore[call-overload]
        last = max(last, int(top))  # type: ignore[call-overload]
    return Outcomes(**counts, last_event=last)


class StopMixin:
    conn: sqlite3.Connection

    def find_send_by_id(self, send_id: int) -> Send | None:
        row = self.conn.execute(SEND_SQL.format(p="?"), (send_id,)).fetchone()
        return send_of(row) if row else None

    def schedule(self, send_id: int) -> Schedule:
        row = self.conn.execute("SELECT batch_id, schedule_state, schedule_changed_at FROM sends WHERE id = ?",
                                (send_id,)).fetchone()
        return Schedule(batch_id=row[0], state=row[1], changed_at=row[2]) if row else \
            Schedule(batch_id=None, state=None, changed_at=None)

    def set_batch_id(self, send_id: int, batch_id: str | None) -> None:
        with transaction(self.conn):
            self.conn.execute("UPDATE sends SET batch_id = ? WHERE id = ?", (batch_id, send_id))

    def set_schedule_state(self, send_id: int, state: str | None) -> None:
        with transaction(self.conn):
            self.conn.execute("UPDATE sends SET schedule_state = ?, schedule_changed_at = ? WHERE id = ?",
                              (state, now(), send_id))

    def held_counts(self, send_id: int, *, stopped_at: int, margin: int) -> tuple[int, int, int]:
        """For `send --resend-cancelled`, before it asks: (accepted, in doubt) deliveries of mail surely held when
        the send was cancelled at `stopped_at` (epoch seconds), and accepted ones of mail maybe held."""
        surely, maybe = held_bands(send_id, stopped_at, margin)
        row = self.conn.execute(HELD_COUNTS_SQL.format(p="?"), (*surely, *maybe)).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def reopen_cancelled(self, send_id: int, *, stopped_at: int, margin: int) -> None:
        """`send --resend-cancelled`: the deliveries of mail surely held when the send was cancelled (or paused
        too long) go back to pending, to be sent again under a new batch id; accepted ones of mail maybe held
        become in doubt; the batch id and the stop are dropped."""
        stamp = now()
        with transaction(self.conn):
            for sql, band in zip(REOPEN_SQL, held_bands(send_id, stopped_at, margin), strict=True):
                self.conn.execute(sql.format(p="?"), (stamp, *band))
            self.conn.execute("UPDATE sends SET batch_id = NULL, schedule_state = NULL, schedule_changed_at = ?, "
                              "finished_at = NULL WHERE id = ?", (stamp, send_id))

    def outcomes(self, send: Send, *, after_event: int = 0) -> Outcomes:
        """Delivered, bounce and spam-report events of this send stored after event id `after_event`."""
        rows = self.conn.execute(OUTCOMES_SQL.format(p="?"), (send.issue, send.list_name, after_event,
                                                            send.id)).fetchall()
        return outcomes_of(rows, after_event)

    def previous_send(self, send: Send) -> Send | None:
        """The latest other real send to the same list created before this one (ids only grow)."""
        row = self.conn.execute(PREVIOUS_SQL.format(p="?"), (send.list_name, send.id)).fetchone()
        return self.find_send_by_id(int(row[0])) if row and row[0] is not None else None
