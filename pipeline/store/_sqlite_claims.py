"""A batch's way through the SQLite store: its intent committed before its request, its outcome after.

`peek_batch` reads the rows the next request will take (its body is built ahead), `claim_batch` /
`claim_peeked` mark them `in_flight` under a new batch row and commit, together with the outcomes of
earlier requests (one commit per request), `record` writes outcomes on their own, `mark_waiting` /
`mark_in_flight` bracket a retry. The send loop runs these inside `store.sending()`.

Deferred batches. A claim of peeked rows that are all untouched (`pending`, no batch) writes only its batch
row, marked `deferred`: its deliveries are exactly the untouched rows of its id range (and of the editions
it was claimed for), and their state is the batch's (`waiting` reads as `in_flight`). An accepted answer
then updates that one row too. Writing 1,000 delivery rows twice per request was most of the store's CPU
in a send (2.8 of 3.5 ms) and most of what it wrote to disk. Answers other than 202 (rare) and
`recover_in_flight` (at the start of every run, so deferred batches only ever belong to the run under way)
write the states into the rows (`settle`); readers of states go through `_sqlite_state`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from pipeline.store._sqlite_state import settle_batch
from pipeline.store._sqlite_tx import transaction
from pipeline.store._types import TO_SEND, Claim, DeliveryRow, Editions, Finish, Peeked, now


def _only(editions: Editions) -> tuple[str, tuple[str, ...]]:
    """The batch filter of an edition-by-edition send: a condition to append, and its parameters."""
    if editions is None:
        return "", ()
    return f" AND edition IN ({','.join('?' * len(editions))})", tuple(editions)


class ClaimsMixin:
    conn: sqlite3.Connection

    def _new_batch(self, send_id: int, request_id: str, *, size: int, first: int, last: int, stamp: str,
                   send_at: int | None, deferred: bool = False, editions: Editions = None) -> int:
        """The batch row of a claim, `in_flight` from the start; returns its id. A deferred one keeps the
        editions it was claimed for: its rows are those editions' untouched ones in its range."""
        batch_id = self.conn.execute(
            "INSERT INTO batches (send_id, request_id, state, size, first_delivery, last_delivery, created_at, "
            "send_at, deferred, editions) VALUES (?, ?, 'in_flight', ?, ?, ?, ?, ?, ?, ?)",
            (send_id, request_id, size, first, last, stamp, send_at, int(deferred),
             json.dumps(list(editions)) if deferred and editions is not None else None)).lastrowid
        assert batch_id is not None
        return batch_id

    def data_version(self) -> int:
        """Changes whenever another connection (`newsletter serve` adding a suppression) commits."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def peek_batch(self, send_id: int, *, size: int, after: int = 0, states: Sequence[str] = TO_SEND,
                   editions: Editions = None) -> Peeked:
        """Read only: the rows `claim_batch` would take now (to build the next request ahead of time)."""
        version = self.data_version()
        marks = ",".join("?" * len(states))
        only, langs = _only(editions)
        sql = (f"SELECT id, email, name, fields FROM deliveries WHERE +send_id = ? AND id > ? AND state IN ({marks})"
               f"{only} ORDER BY id LIMIT ?")
        # With no suppressions the probe of their index for each row is skipped: 0.4 of 0.9 ms a peek. One
        # added after this read changes data_version, and claim_peeked then claims the slow way.
        if self.conn.execute("SELECT EXISTS (SELECT 1 FROM suppressions)").fetchone()[0]:
            sql = f"SELECT * FROM ({sql}) WHERE email NOT IN (SELECT email FROM suppressions) ORDER BY id"
        rows = self.conn.execute(sql, (send_id, after, *states, *langs, size)).fetchall()
        return Peeked(rows, after, version)

    def claim_batch(self, send_id: int, *, size: int, after: int = 0, states: Sequence[str] = TO_SEND,
                    request_id: str, finished: Sequence[Finish] = (), editions: Editions = None,
                    send_at: int | None = None) -> Claim | None:
        """Take up to `size` deliveries in `states` with id > after (marking suppressed ones `suppressed`),
        mark them in flight under a new batch row, commit, and return them; None when nothing is left.
        `editions`: only deliveries of these editions (a request has one content).

        Deliveries are taken in id order (the list's order) by rowid ranges: `+send_id` keeps SQLite from
        using the (send_id, email) index, which would sort the whole send for every batch.
        """
        conn = self.conn
        marks = ",".join("?" * len(states))
        only, langs = _only(editions)
        with transaction(conn):
            self._finish_all(finished)
            stamp = now()
            any_suppressed = conn.execute("SELECT EXISTS (SELECT 1 FROM suppressions)").fetchone()[0]
            while True:
                lo, hi = conn.execute(
                    f"SELECT min(id), max(id) FROM (SELECT id FROM deliveries WHERE +send_id = ? AND id > ? "
                    f"AND state IN ({marks}){only} ORDER BY id LIMIT ?)", (send_id, after, *states, *langs, size)
                ).fetchone()
                if lo is None:
                    return None
                span = (send_id, lo, hi, *states, *langs)
                if any_suppressed:
                    conn.execute(f"UPDATE deliveries SET state = 'suppressed', updated_at = ? WHERE +send_id = ? AND "
                                 f"id BETWEEN ? AND ? AND state IN ({marks}){only} AND email IN (SELECT email "
                                 f"FROM suppressions)", (stamp, *span))
                batch_id = self._new_batch(send_id, request_id, size=0, first=lo, last=hi, stamp=stamp,
                                           send_at=send_at)
                rows: list[DeliveryRow] = conn.execute(
                    f"UPDATE deliveries SET state = 'in_flight', batch_id = ? WHERE +send_id = ? AND id "
                    f"BETWEEN ? AND ? AND state IN ({marks}){only} RETURNING id, email, name, fields",
                    (batch_id, *span)).fetchall()
                if rows:
                    break
                conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))  # every one of them was suppressed
                after = hi
            rows.sort()
            conn.execute("UPDATE batches SET size = ? WHERE id = ?", (len(rows), batch_id))
        return Claim(id=batch_id, request_id=request_id, rows=rows)

    def claim_peeked(self, send_id: int, peeked: Peeked, *, states: Sequence[str] = TO_SEND, request_id: str,
                     finished: Sequence[Finish] = (), editions: Editions = None,
                     send_at: int | None = None) -> Claim | None:
        """`claim_batch` of rows that `peek_batch` read, without reading them again: one UPDATE of the ids
        after `peeked.after` up to their last. Only if nothing can have changed: no other connection
        committed since (so no suppression arrived) and that range holds exactly these rows to send (none
        suppressed before or between them: `claim_batch` marks those). Otherwise nothing is claimed and None
        returned: the caller uses `claim_batch`. `data_version` sees other connections' commits only: between
        the peek and the claim, this connection must not change those rows or the suppressions (the send
        loop writes only earlier batches).

        `finished`, the outcomes of earlier requests, are recorded in the same transaction, claimed or not.
        """
        conn, rows = self.conn, peeked.rows
        marks = ",".join("?" * len(states))
        only, langs = _only(editions)
        with transaction(conn):
            self._finish_all(finished)
            if not rows or self.data_version() != peeked.version:
                return None
            span = (send_id, peeked.after, rows[-1][0], *states, *langs)
            listed, untouched = conn.execute(
                f"SELECT count(*), count(*) FILTER (WHERE state = 'pending' AND batch_id IS NULL) FROM deliveries "
                f"WHERE +send_id = ? AND id > ? AND id <= ? AND state IN ({marks}){only}", span).fetchone()
            if listed != len(rows):
                return None
            deferred = untouched == len(rows)
            batch_id = self._new_batch(send_id, request_id, size=len(rows), first=rows[0][0], last=rows[-1][0],
                                       stamp=now(), send_at=send_at, deferred=deferred, editions=editions)
            if not deferred:
                conn.execute(f"UPDATE deliveries SET state = 'in_flight', batch_id = ? WHERE +send_id = ? AND id > ? "
                             f"AND id <= ? AND state IN ({marks}){only}", (batch_id, *span))
        return Claim(id=batch_id, request_id=request_id, rows=rows, deferred=deferred)

    def record(self, finished: Sequence[Finish]) -> None:
        """Outcomes of requests, in one transaction."""
        if finished:
            with transaction(self.conn):
                self._finish_all(finished)

    def _finish_all(self, finished: Sequence[Finish]) -> None:
        for f in finished:
            assert f.state in ("accepted", "in_doubt", "failed")
            # A batch that another run's recovery put in doubt takes the answer (with its rows, unless that
            # run sent them again); one it failed (it was waiting) was not sent from here, and stays so.
            row = self.conn.execute(
                "UPDATE batches SET state = ?, attempts = ?, http_status = ?, message_id = ?, error = ?, "
                "finished_at = ? WHERE id = ? AND state IN ('in_flight', 'waiting', 'in_doubt') RETURNING deferred",
                (f.state, f.attempts, f.http_status, f.message_id, f.error, now(), f.claim.id)).fetchone()
            if row is None:
                continue
            if row[0]:
                if f.state != "accepted":  # rare: the rows take the state, so that a re-run finds them
                    settle_batch(self.conn, f.claim.id)
                continue
            # The message id and the time are the batch row's: on each of a million rows they grew every row by
            # 50 bytes, and the pages split (0.4 ms of 1.8 per request).
            self.conn.execute("UPDATE deliveries SET state = ? WHERE id BETWEEN ? AND ? AND batch_id = ? "
                              "AND state IN ('in_flight', 'in_doubt')", (f.state, f.claim.first, f.claim.last,
                                                                          f.claim.id))

    def mark_waiting(self, claim: Claim, *, attempts: int, http_status: int | None, error: str) -> None:
        """A retryable answer (429, 5xx, no connection): certainly not sent; the batch waits to be retried.
        Only a batch still in flight: one that another run's recovery put in doubt meanwhile stays so (that run
        may send its rows again), and `mark_in_flight` then refuses its retry."""
        self._one("UPDATE batches SET state = 'waiting', attempts = ?, http_status = ?, error = ? WHERE id = ? "
                  "AND state = 'in_flight'", (attempts, http_status, error, claim.id))

    def mark_in_flight(self, claim: Claim) -> Claim | None:
        """Before the retry's request: from here on an interruption leaves the batch in doubt again. None
        (and nothing changed) when the batch no longer waits: another run recovered the send meanwhile and
        failed it, to be sent by that run; this one must not send it.

        Readers suppressed while the batch waited (an unsubscribe through `serve`, a bounce) are taken out of
        it in the same transaction: their deliveries become `suppressed`, and the claim returned holds the
        rest. With no rest the batch row is deleted and the claim has no rows: nothing to request."""
        conn = self.conn
        with transaction(conn):
            if conn.execute("UPDATE batches SET state = 'in_flight' WHERE id = ? AND state = 'waiting'",
                            (claim.id,)).rowcount != 1:
                return None
            # suppressions.email is NOCASE: the probe matches an address however either side spells its case
            if not conn.execute("SELECT EXISTS (SELECT 1 FROM suppressions WHERE email IN (SELECT value FROM "
                                "json_each(?)))", (json.dumps([row[1] for row in claim.rows]),)).fetchone()[0]:
                return claim
            settle_batch(conn, claim.id)  # a deferred batch's rows take its state and id first
            gone = {i for (i,) in conn.execute(
                "UPDATE deliveries SET state = 'suppressed', batch_id = NULL, updated_at = ? WHERE id BETWEEN ? "
                "AND ? AND batch_id = ? AND email IN (SELECT email FROM suppressions) RETURNING id",
                (now(), claim.first, claim.last, claim.id))}
            rest = claim.without(gone)
            if rest.rows:
                conn.execute("UPDATE batches SET size = ? WHERE id = ?", (len(rest.rows), claim.id))
            else:
                conn.execute("DELETE FROM batches WHERE id = ?", (claim.id,))
        return rest

    def _one(self, sql: str, params: tuple[object, ...]) -> None:
        with transaction(self.conn):
            self.conn.execute(sql, params)
