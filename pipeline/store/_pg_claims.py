"""A batch's way through the PostgreSQL store: its intent committed before its request, its outcome after.

The same methods and guarantees as the SQLite engine's (_sqlite_claims). PostgreSQL has no data_version:
`claim_peeked` instead checks, inside its transaction, that its UPDATE took exactly the peeked rows and that
none of them is suppressed now; READ COMMITTED gives each statement a fresh snapshot, so a suppression that
any connection committed before the claim's statement is seen by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from pipeline.store._pg_schema import key
from pipeline.store._types import TO_SEND, Claim, DeliveryRow, Editions, Finish, Peeked, now

_SUPPRESSED = f"EXISTS (SELECT 1 FROM suppressions s WHERE {key('s.email')} = {key('d.email')})"
# The intent of a peeked batch in one statement: its batch row, its deliveries in flight under it, and what
# the caller checks (the ids taken; whether any of them is suppressed now).
_CLAIM_PEEKED = (  # {only}: an edition filter, or nothing
    "WITH b AS (INSERT INTO batches (send_id, request_id, state, size, first_delivery, last_delivery, created_at, "
    "send_at) VALUES (%s, %s, 'in_flight', %s, %s, %s, %s, %s) RETURNING id), "
    "d AS (UPDATE deliveries SET state = 'in_flight', batch_id = (SELECT id FROM b) WHERE send_id = %s AND id > %s "
    "AND id <= %s AND state = ANY(%s){only} RETURNING id, email) "
    f"SELECT (SELECT id FROM b), (SELECT array_agg(id ORDER BY id) FROM d), (SELECT bool_or({_SUPPRESSED}) FROM d)")


def _only(editions: Editions) -> tuple[str, tuple[list[str], ...]]:
    """The batch filter of an edition-by-edition send: a condition to append, and its parameter."""
    return ("", ()) if editions is None else (" AND edition = ANY(%s)", (list(editions),))


class PgClaimsMixin:
    def _tx(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        raise NotImplementedError

    def _new_batch(self, conn: psycopg.Connection[Any], send_id: int, request_id: str, *, size: int, first: int,
                   last: int, send_at: int | None) -> int:
        """The batch row of a claim, `in_flight` from the start; returns its id."""
        row = conn.execute(
            "INSERT INTO batches (send_id, request_id, state, size, first_delivery, last_delivery, created_at, "
            "send_at) VALUES (%s, %s, 'in_flight', %s, %s, %s, %s, %s) RETURNING id",
            (send_id, request_id, size, first, last, now(), send_at)).fetchone()
        assert row is not None
        return int(row[0])

    def peek_batch(self, send_id: int, *, size: int, after: int = 0, states: Sequence[str] = TO_SEND,
                   editions: Editions = None) -> Peeked:
        """Read only: the rows `claim_batch` would take now (to build the next request ahead of time)."""
        only, langs = _only(editions)
        with self._tx() as conn:
            rows: list[DeliveryRow] = conn.execute(
                f"SELECT id, email, name, fields FROM (SELECT id, email, name, fields FROM deliveries "
                f"WHERE send_id = %s AND id > %s AND state = ANY(%s){only} ORDER BY id LIMIT %s) d "
                f"WHERE NOT {_SUPPRESSED} ORDER BY id", (send_id, after, list(states), *langs, size)).fetchall()
        return Peeked(rows, after, 0)

    def claim_batch(self, send_id: int, *, size: int, after: int = 0, states: Sequence[str] = TO_SEND,
                    request_id: str, finished: Sequence[Finish] = (), editions: Editions = None,
                    send_at: int | None = None) -> Claim | None:
        """Take up to `size` deliveries in `states` with id > after (marking suppressed ones `suppressed`),
        mark them in flight under a new batch row, commit, and return them; None when nothing is left.
        `editions`: only deliveries of these editions (a request has one content)."""
        wanted = list(states)
        only, langs = _only(editions)
        with self._tx() as conn:
            self._finish_all(conn, finished)
            while True:
                span_row = conn.execute(
                    f"SELECT min(id), max(id) FROM (SELECT id FROM deliveries WHERE send_id = %s AND id > %s "
                    f"AND state = ANY(%s){only} ORDER BY id LIMIT %s) t", (send_id, after, wanted, *langs, size)
                ).fetchone()
                if span_row is None or span_row[0] is None:
                    return None
                lo, hi = int(span_row[0]), int(span_row[1])
                span = (send_id, lo, hi, wanted, *langs)
                conn.execute(f"UPDATE deliveries d SET state = 'suppressed', updated_at = %s WHERE send_id = %s "
                             f"AND id BETWEEN %s AND %s AND state = ANY(%s){only} AND {_SUPPRESSED}", (now(), *span))
                batch_id = self._new_batch(conn, send_id, request_id, size=0, first=lo, last=hi, send_at=send_at)
                rows: list[DeliveryRow] = conn.execute(
                    f"UPDATE deliveries SET state = 'in_flight', batch_id = %s WHERE send_id = %s AND id "
                    f"BETWEEN %s AND %s AND state = ANY(%s){only} RETURNING id, email, name, fields",
                    (batch_id, *span)).fetchall()
                if rows:
                    break
                conn.execute("DELETE FROM batches WHERE id = %s", (batch_id,))  # every one of them was suppressed
                after = hi
            rows.sort()
            conn.execute("UPDATE batches SET size = %s WHERE id = %s", (len(rows), batch_id))
        return Claim(id=batch_id, request_id=request_id, rows=rows)

    def claim_peeked(self, send_id: int, peeked: Peeked, *, states: Sequence[str] = TO_SEND, request_id: str,
                     finished: Sequence[Finish] = (), editions: Editions = None,
                     send_at: int | None = None) -> Claim | None:
        """`claim_batch` of rows that `peek_batch` read, without reading them again: one UPDATE of the ids
        after `peeked.after` up to their last, kept only if it took exactly the peeked ids (none suppressed
        before or between them: `claim_batch` marks those) and none of them is suppressed now. Otherwise it
        is rolled back and None returned: the caller uses `claim_batch`.

        `finished`, the outcomes of earlier requests, are recorded in the same transaction, claimed or not
        (when not, in a transaction of their own right after). The answers and the claim (batch row and
        deliveries in one statement) go to the server in one pipeline: one round trip and one commit.
        """
        rows = peeked.rows
        if not rows:
            self.record(finished)
            return None
        only, langs = _only(editions)
        with self._tx() as conn:
            with conn.pipeline():
                self._finish_all(conn, finished)
                cursor = conn.execute(_CLAIM_PEEKED.replace("{only}", only),
                                      (send_id, request_id, len(rows), rows[0][0], rows[-1][0], now(), send_at, send_id,
                                       peeked.after, rows[-1][0], list(states), *langs))
            batch_id, taken, suppressed = cursor.fetchone() or (None, None, None)
            if batch_id is not None and taken == [r[0] for r in rows] and not suppressed:
                return Claim(id=int(batch_id), request_id=request_id, rows=rows)
            raise psycopg.Rollback()
        self.record(finished)  # rolled back with the claim; kept now (this process has sent nothing since)
        return None

    def record(self, finished: Sequence[Finish]) -> None:
        """Outcomes of requests, in one transaction."""
        if finished:
            with self._tx() as conn, conn.pipeline():
                self._finish_all(conn, finished)

    def _finish_all(self, conn: psycopg.Connection[Any], finished: Sequence[Finish]) -> None:
        """Each outcome in one statement: the batch row, then its deliveries (found by the batch's send). Only
        the state changes, no indexed column: PostgreSQL updates the rows in place (HOT, fillfactor 50).
        A batch that a run on another machine put in doubt meanwhile (it took the send over) takes the answer,
        with its rows unless that run claimed them again; one it failed (it was waiting) stays failed."""
        for f in finished:
            assert f.state in ("accepted", "in_doubt", "failed")
            conn.execute("WITH b AS (UPDATE batches SET state = %s, attempts = %s, http_status = %s, "
                         "message_id = %s, error = %s, finished_at = %s WHERE id = %s AND state IN ('in_flight', "
                         "'waiting', 'in_doubt') RETURNING send_id) "
                         "UPDATE deliveries SET state = %s WHERE send_id = (SELECT send_id FROM b) AND id BETWEEN "
                         "%s AND %s AND batch_id = %s AND state IN ('in_flight', 'in_doubt')",
                         (f.state, f.attempts, f.http_status, f.message_id, f.error, now(), f.claim.id,
                          f.state, f.claim.first, f.claim.last, f.claim.id))

    def mark_waiting(self, claim: Claim, *, attempts: int, http_status: int | None, error: str) -> None:
        """A retryable answer (429, 5xx, no connection): certainly not sent; the batch waits to be retried.
        Only a batch still in flight (see the SQLite engine's)."""
        with self._tx() as conn:
            conn.execute("UPDATE batches SET state = 'waiting', attempts = %s, http_status = %s, error = %s "
                         "WHERE id = %s AND state = 'in_flight'", (attempts, http_status, error, claim.id))

    def mark_in_flight(self, claim: Claim) -> Claim | None:
        """Before the retry's request: from here on an interruption leaves the batch in doubt again. None
        (and nothing changed) when the batch no longer waits: a run on another machine took the send over
        (its lock was lost here), recovered it and failed the batch, to be sent by that run. Readers suppressed
        while it waited are taken out of it, as the SQLite engine's does."""
        with self._tx() as conn:
            if conn.execute("UPDATE batches SET state = 'in_flight' WHERE id = %s AND state = 'waiting'",
                            (claim.id,)).rowcount != 1:
                return None
            gone = {i for (i,) in conn.execute(
                "UPDATE deliveries d SET state = 'suppressed', batch_id = NULL, updated_at = %s WHERE d.send_id = "
                f"(SELECT send_id FROM batches WHERE id = %s) AND d.id BETWEEN %s AND %s AND d.batch_id = %s AND "
                f"{_SUPPRESSED} RETURNING d.id", (now(), claim.id, claim.first, claim.last, claim.id)).fetchall()}
            if not gone:
                return claim
            rest = claim.without(gone)
            if rest.rows:
                conn.execute("UPDATE batches SET size = %s WHERE id = %s", (len(rest.rows), claim.id))
            else:
                conn.execute("DELETE FROM batches WHERE id = %s", (claim.id,))
        return rest
