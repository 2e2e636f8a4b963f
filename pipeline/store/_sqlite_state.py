"""Delivery states where deferred batches hold them (see _sqlite_claims): how to read and settle them.

A deferred batch's deliveries are the rows of its send with ids in [first_delivery, last_delivery] that are
untouched (`pending`, no batch) and, when it has `editions` (a JSON list: one edition's loop of a send of
several), of those editions: the claim checked there were exactly `size` of them, and nothing touches them
until `settle_send` writes the batch's state into them, at the start of the next run of that send. Ranges
of one edition's batches never overlap (a loop claims in id order, and every run settles the earlier ones
first); ranges of different editions may, but their rows are not the same.
"""

from __future__ import annotations

import sqlite3

from pipeline.store._types import STATES

# The state a deferred batch gives its deliveries: a batch waiting to be retried is still in flight for them.
ROW_STATE = "CASE {b}.state WHEN 'waiting' THEN 'in_flight' ELSE {b}.state END"
# Row {d} is of an edition batch {b} was claimed for (every edition when it has none).
EDITION = "({b}.editions IS NULL OR {d}.edition IN (SELECT value FROM json_each({b}.editions)))"
# The deliveries of deferred batch {b} (join on the batches first: rowid ranges, no scan).
MEMBERS = ("+{d}.send_id = {b}.send_id AND {d}.id BETWEEN {b}.first_delivery AND {b}.last_delivery "
           "AND {d}.batch_id IS NULL AND {d}.state = 'pending' AND " + EDITION)
# For each row {d}: the deferred batch {r} that holds it, if any. The nearest range of the row's edition
# starting at or before it is the only candidate: an index probe, then a step back over other editions'.
HOLDER_JOIN = ("LEFT JOIN batches {r} ON {d}.batch_id IS NULL AND {d}.state = 'pending' AND {r}.id = (SELECT c.id "
               "FROM batches c WHERE c.send_id = {d}.send_id AND c.deferred = 1 AND c.first_delivery <= {d}.id AND "
               + EDITION.format(b="c", d="{d}") + " ORDER BY c.first_delivery DESC LIMIT 1) AND "
               "{r}.last_delivery >= {d}.id")


def settle_batch(conn: sqlite3.Connection, batch_id: int) -> None:
    """Write a deferred batch's state and id into its deliveries; from then on the rows hold them."""
    row = conn.execute("SELECT send_id, first_delivery, last_delivery, state, editions FROM batches WHERE id = ? "
                       "AND deferred = 1", (batch_id,)).fetchone()
    if row is None:
        return
    send_id, first, last, state, editions = row
    conn.execute("UPDATE deliveries SET state = ?, batch_id = ? WHERE +send_id = ? AND id BETWEEN ? AND ? AND "
                 "batch_id IS NULL AND state = 'pending' AND (? IS NULL OR edition IN (SELECT value FROM "
                 "json_each(?)))", ("in_flight" if state == "waiting" else state, batch_id, send_id, first, last,
                                    editions, editions))
    conn.execute("UPDATE batches SET deferred = 0 WHERE id = ?", (batch_id,))


def settle_send(conn: sqlite3.Connection, send_id: int) -> None:
    """Every deferred batch of a send (inside the caller's transaction): before a run changes any row."""
    for (batch_id,) in conn.execute("SELECT id FROM batches WHERE send_id = ? AND deferred = 1 ORDER BY id",
                                    (send_id,)).fetchall():
        settle_batch(conn, batch_id)


def deferred_counts(conn: sqlite3.Connection, send_id: int) -> dict[str, int]:
    """How the deferred batches of a send change its per-state counts of the rows (pending ones are theirs)."""
    change = dict.fromkeys(STATES, 0)
    for state, size in conn.execute("SELECT state, sum(size) FROM batches WHERE send_id = ? AND deferred = 1 "
                                    "GROUP BY state", (send_id,)):
        change["pending"] -= size
        change["in_flight" if state == "waiting" else state] += size
    return change


def deferred_edition_counts(conn: sqlite3.Connection, send_id: int) -> list[tuple[str, str, int]]:
    """(edition, state the deferred batches give, rows) for the deliveries those batches hold."""
    sql = (f"SELECT d.edition, {ROW_STATE.format(b='b')}, count(*) FROM batches b JOIN deliveries d ON "
           f"{MEMBERS.format(d='d', b='b')} WHERE b.send_id = ? AND b.deferred = 1 GROUP BY 1, 2")
    return [(str(e), str(s), int(n)) for e, s, n in conn.execute(sql, (send_id,))]
