"""PostgreSQL: what stopping a send keeps (issue 12); the twin of _sqlite_stop, whose SQL it shares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from pipeline.store._sqlite_stop import (
    HELD_COUNTS_SQL,
    OUTCOMES_SQL,
    PREVIOUS_SQL,
    REOPEN_SQL,
    SEND_SQL,
    held_bands,
    outcomes_of,
    send_of,
)
from pipeline.store._types import Outcomes, Schedule, Send, now


class PgStopMixin:
    def _tx(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        raise NotImplementedError

    def find_send_by_id(self, send_id: int) -> Send | None:
        with self._tx() as conn:
            row = conn.execute(SEND_SQL.format(p="%s"), (send_id,)).fetchone()
        return send_of(row) if row else None

    def schedule(self, send_id: int) -> Schedule:
        with self._tx() as conn:
            row = conn.execute("SELECT batch_id, schedule_state, schedule_changed_at FROM sends WHERE id = %s",
                               (send_id,)).fetchone()
        return Schedule(batch_id=row[0], state=row[1], changed_at=row[2]) if row else \
            Schedule(batch_id=None, state=None, changed_at=None)

    def set_batch_id(self, send_id: int, batch_id: str | None) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE sends SET batch_id = %s WHERE id = %s", (batch_id, send_id))

    def set_schedule_state(self, send_id: int, state: str | None) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE sends SET schedule_state = %s, schedule_changed_at = %s WHERE id = %s",
                         (state, now(), send_id))

    def held_counts(self, send_id: int, *, stopped_at: int, margin: int) -> tuple[int, int, int]:
        surely, maybe = held_bands(send_id, stopped_at, margin)
        with self._tx() as conn:
            row = conn.execute(HELD_COUNTS_SQL.format(p="%s"), (*surely, *maybe)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def reopen_cancelled(self, send_id: int, *, stopped_at: int, margin: int) -> None:
        """As SQLite's: the deliveries of mail the cancel discarded go back to pending; the batch id is dropped."""
        stamp = now()
        with self._tx() as conn:
            for sql, band in zip(REOPEN_SQL, held_bands(send_id, stopped_at, margin), strict=True):
                conn.execute(sql.format(p="%s"), (stamp, *band))
            conn.execute("UPDATE sends SET batch_id = NULL, schedule_state = NULL, schedule_changed_at = %s, "
                         "finished_at = NULL WHERE id = %s", (stamp, send_id))

    def outcomes(self, send: Send, *, after_event: int = 0) -> Outcomes:
        with self._tx() as conn:
            rows: Iterator[tuple[Any, ...]] = conn.execute(
                OUTCOMES_SQL.format(p="%s"), (send.issue, send.list_name, after_event, send.id))
            return outcomes_of(list(rows), after_event)

    def previous_send(self, send: Send) -> Send | None:
        with self._tx() as conn:
            row = conn.execute(PREVIOUS_SQL.format(p="%s"), (send.list_name, send.id)).fetchone()
        return self.find_send_by_id(int(row[0])) if row and row[0] is not None else None
