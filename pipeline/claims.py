"""A batch's way through the send log: its intent committed before its request, its outcome after.

`peek_batch` reads the rows the next request will take (its body is built ahead), `claim_batch` /
`claim_peeked` mark them `in_flight` under a new batch row and commit, `finish_batch` / `record` write
the answer (`accepted`, `in_doubt`, `failed`), `mark_waiting` / `mark_in_flight` bracket a retry. The
tables, states and the rest of the send log are in pipeline.sendlog. The send loop runs these inside
`sendlog.unchecked_writes`, as their values are fixed ones.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.sendlog import TO_SEND, now, transaction

DeliveryRow = tuple[int, str, str, str | None]  # (delivery id, email, name, fields JSON or None)


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    """A batch whose intent is committed: its deliveries are `in_flight` before the request is made."""

    id: int
    request_id: str
    rows: list[DeliveryRow]  # in delivery id order

    @property
    def first(self) -> int:
        return self.rows[0][0]

    @property
    def last(self) -> int:
        return self.rows[-1][0]


def _new_batch(conn: sqlite3.Connection, send_id: int, request_id: str, *, size: int, first: int, last: int,
               stamp: str) -> int:
    """The batch row of a claim, `in_flight` from the start; returns its id."""
    batch_id = conn.execute(
        "INSERT INTO batches (send_id, request_id, state, size, first_delivery, last_delivery, created_at) "
        "VALUES (?, ?, 'in_flight', ?, ?, ?, ?)", (send_id, request_id, size, first, last, stamp)).lastrowid
    assert batch_id is not None
    return batch_id


def peek_batch(conn: sqlite3.Connection, send_id: int, *, size: int, after: int = 0,
               states: Sequence[str] = TO_SEND) -> list[DeliveryRow]:
    """Read only: the rows `claim_batch` would take now (to build the next request ahead of time)."""
    marks = ",".join("?" * len(states))
    return conn.execute(
        f"SELECT id, email, name, fields FROM (SELECT id, email, name, fields FROM deliveries WHERE +send_id = ? "
        f"AND id > ? AND state IN ({marks}) ORDER BY id LIMIT ?) WHERE email NOT IN (SELECT email FROM suppressions) "
        f"ORDER BY id", (send_id, after, *states, size)).fetchall()


def claim_batch(conn: sqlite3.Connection, send_id: int, *, size: int, after: int = 0,
                states: Sequence[str] = TO_SEND, request_id: str) -> Claim | None:
    """Take up to `size` deliveries in `states` with id > after (marking suppressed ones `suppressed`),
    mark them in flight under a new batch row, commit, and return them; None when nothing is left.

    Deliveries are taken in id order (the list's order) by rowid ranges: `+send_id` keeps SQLite from
    using the (send_id, email) index, which would sort the whole send for every batch.
    """
    marks = ",".join("?" * len(states))
    with transaction(conn):
        stamp = now()
        any_suppressed = conn.execute("SELECT EXISTS (SELECT 1 FROM suppressions)").fetchone()[0]
        while True:
            lo, hi = conn.execute(
                f"SELECT min(id), max(id) FROM (SELECT id FROM deliveries WHERE +send_id = ? AND id > ? "
                f"AND state IN ({marks}) ORDER BY id LIMIT ?)", (send_id, after, *states, size)).fetchone()
            if lo is None:
                return None
            span = (send_id, lo, hi, *states)
            if any_suppressed:
                conn.execute(f"UPDATE deliveries SET state = 'suppressed', updated_at = ? WHERE +send_id = ? AND id "
                             f"BETWEEN ? AND ? AND state IN ({marks}) AND email IN (SELECT email FROM suppressions)",
                             (stamp, *span))
            batch_id = _new_batch(conn, send_id, request_id, size=0, first=lo, last=hi, stamp=stamp)
            rows = conn.execute(
                f"UPDATE deliveries SET state = 'in_flight', batch_id = ? WHERE +send_id = ? AND id "
                f"BETWEEN ? AND ? AND state IN ({marks}) RETURNING id, email, name, fields",
                (batch_id, *span)).fetchall()
            if rows:
                break
            conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))  # every one of them was suppressed
            after = hi
        rows.sort()
        conn.execute("UPDATE batches SET size = ? WHERE id = ?", (len(rows), batch_id))
    return Claim(id=batch_id, request_id=request_id, rows=rows)


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection (`newsletter serve` adding a suppression) commits."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


@dataclass(frozen=True, kw_only=True, slots=True)
class Finish:
    """A request's outcome to record: `accepted`, `in_doubt` or `failed` (its deliveries go back to be sent)."""

    claim: Claim
    state: str
    attempts: int
    http_status: int | None = None
    message_id: str | None = None
    error: str | None = None


def claim_peeked(conn: sqlite3.Connection, send_id: int, rows: list[DeliveryRow], *, after: int, version: int,
                 states: Sequence[str] = TO_SEND, request_id: str, finished: Finish | None = None) -> Claim | None:
    """`claim_batch` of rows that `peek_batch(after=after)` read when `data_version` was `version`, without
    reading them again: one UPDATE of the ids from `after` to their last. Only if nothing can have changed:
    no other connection committed since (so no suppression arrived) and that range holds exactly these
    rows to send (none suppressed before or between them: `claim_batch` marks those). Otherwise nothing is
    claimed and None returned: the caller uses `claim_batch`.
    `data_version` sees other connections' commits only: between the peek and the claim, this connection
    itself must not change the rows or the suppressions (the send loop writes only earlier batches).

    `finished`, the outcome of the previous request, is recorded in the same transaction, claimed or not:
    one commit (and fsync) per request instead of two.
    """
    marks = ",".join("?" * len(states))
    with transaction(conn):
        if finished is not None:
            _finish(conn, finished)
        if not rows or data_version(conn) != version:
            return None
        conn.execute("SAVEPOINT claim")
        batch_id = _new_batch(conn, send_id, request_id, size=len(rows), first=rows[0][0], last=rows[-1][0],
                              stamp=now())
        taken = conn.execute(f"UPDATE deliveries SET state = 'in_flight', batch_id = ? WHERE +send_id = ? AND "
                             f"id > ? AND id <= ? AND state IN ({marks})",
                             (batch_id, send_id, after, rows[-1][0], *states)).rowcount
        if taken != len(rows):
            conn.execute("ROLLBACK TO claim")  # the outcome recorded above stays
            return None
    return Claim(id=batch_id, request_id=request_id, rows=rows)


def finish_batch(conn: sqlite3.Connection, claim: Claim, *, state: str, attempts: int,
                 http_status: int | None = None, message_id: str | None = None, error: str | None = None) -> None:
    """Record a request's outcome: `accepted`, `in_doubt` or `failed` (its deliveries go back to be sent)."""
    record(conn, Finish(claim=claim, state=state, attempts=attempts, http_status=http_status,
                        message_id=message_id, error=error))


def record(conn: sqlite3.Connection, finished: Finish) -> None:
    """`finish_batch` of a Finish."""
    with transaction(conn):
        _finish(conn, finished)


def _finish(conn: sqlite3.Connection, f: Finish) -> None:
    assert f.state in ("accepted", "in_doubt", "failed")
    stamp = now()
    conn.execute("UPDATE batches SET state = ?, attempts = ?, http_status = ?, message_id = ?, error = ?, "
                 "finished_at = ? WHERE id = ?", (f.state, f.attempts, f.http_status, f.message_id, f.error, stamp,
                                                  f.claim.id))
    # The message id and the time are the batch row's: on each of a million rows they grew every row by 50
    # bytes, and the pages split (0.4 ms of 1.8 per request).
    conn.execute("UPDATE deliveries SET state = ? WHERE id BETWEEN ? AND ? AND batch_id = ? AND state = 'in_flight'",
                 (f.state, f.claim.first, f.claim.last, f.claim.id))


def mark_waiting(conn: sqlite3.Connection, claim: Claim, *, attempts: int, http_status: int | None,
                 error: str) -> None:
    """A retryable answer (429, 5xx, no connection): certainly not sent; the batch waits to be retried."""
    with transaction(conn):
        conn.execute("UPDATE batches SET state = 'waiting', attempts = ?, http_status = ?, error = ? WHERE id = ?",
                     (attempts, http_status, error, claim.id))


def mark_in_flight(conn: sqlite3.Connection, claim: Claim) -> None:
    """Before the retry's request: from here on an interruption leaves the batch in doubt again."""
    with transaction(conn):
        conn.execute("UPDATE batches SET state = 'in_flight' WHERE id = ?", (claim.id,))
