"""Claiming batches: intent before the request, the answer after, and the fast claim's fallbacks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sendkit import recorded_send

from pipeline import claims, sendlog


def test_claim_finish_and_counts(conn: sqlite3.Connection) -> None:
    send = recorded_send(conn)
    sendlog.add_suppression(conn, "r1@example.org", reason="bounced", source="test")
    first = claims.claim_batch(conn, send.id, size=2, request_id="a")
    assert first is not None
    assert [r[1] for r in first.rows] == ["r0@example.org"]  # r1 is suppressed: a smaller batch
    assert sendlog.counts(conn, send.id)["in_flight"] == 1
    claims.finish_batch(conn, first, state="accepted", attempts=1, http_status=202, message_id="M1")
    second = claims.claim_batch(conn, send.id, size=2, after=first.last, request_id="b")
    assert second is not None
    claims.finish_batch(conn, second, state="failed", attempts=1, http_status=400, error="bad")
    counts = sendlog.counts(conn, send.id)
    assert (counts["accepted"], counts["failed"], counts["suppressed"], counts["pending"]) == (1, 2, 1, 1)
    # failed = certainly not sent: a later run takes them again
    third = claims.claim_batch(conn, send.id, size=10, request_id="c")
    assert third is not None and len(third.rows) == 3
    first_at, last_at = sendlog.send_times(conn, send.id)
    assert first_at is not None and first_at == last_at


def test_claim_peeked_takes_the_peeked_rows_or_nothing(conn: sqlite3.Connection, tmp_path: Path) -> None:
    send = recorded_send(conn, 6)
    version = claims.data_version(conn)
    rows = claims.peek_batch(conn, send.id, size=2)
    claim = claims.claim_peeked(conn, send.id, rows, after=0, version=version, request_id="a")
    assert claim is not None and claim.rows is rows and sendlog.counts(conn, send.id)["in_flight"] == 2
    batch = conn.execute("SELECT size, first_delivery, last_delivery FROM batches WHERE id = ?", (claim.id,))
    assert tuple(batch.fetchone()) == (2, rows[0][0], rows[1][0])
    # a suppression committed by another process (`newsletter serve`) after the peek: nothing is taken
    version = claims.data_version(conn)
    rows = claims.peek_batch(conn, send.id, size=2, after=claim.last)
    other = sendlog.open_sendlog(tmp_path / "state" / "sendlog.sqlite3")
    sendlog.add_suppression(other, "R3@example.org", reason="unsubscribed", source="webhook")
    other.close()
    assert claims.claim_peeked(conn, send.id, rows, after=claim.last, version=version, request_id="b") is None
    assert sendlog.counts(conn, send.id)["in_flight"] == 2
    assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 1
    slow = claims.claim_batch(conn, send.id, size=2, after=claim.last, request_id="b")
    assert slow is not None and [r[1] for r in slow.rows] == ["r2@example.org"]
    assert sendlog.counts(conn, send.id)["suppressed"] == 1
    assert claims.claim_peeked(conn, send.id, [], after=0, version=version, request_id="c") is None


def test_claim_peeked_refuses_when_a_suppressed_row_lies_between(conn: sqlite3.Connection) -> None:
    send = recorded_send(conn, 3)
    sendlog.add_suppression(conn, "r1@example.org", reason="manual", source="test")
    version = claims.data_version(conn)
    rows = claims.peek_batch(conn, send.id, size=3)
    assert [r[1] for r in rows] == ["r0@example.org", "r2@example.org"]  # the peek skips it, the range has it
    assert claims.claim_peeked(conn, send.id, rows, after=0, version=version, request_id="a") is None
    claim = claims.claim_batch(conn, send.id, size=3, request_id="a")
    assert claim is not None and claim.rows == rows
    assert sendlog.counts(conn, send.id)["suppressed"] == 1


def test_claim_peeked_records_the_last_answer_claimed_or_not(conn: sqlite3.Connection, tmp_path: Path) -> None:
    send = recorded_send(conn, 6)
    first = claims.claim_batch(conn, send.id, size=2, request_id="a")
    assert first is not None
    version = claims.data_version(conn)
    rows = claims.peek_batch(conn, send.id, size=2, after=first.last)
    done = claims.Finish(claim=first, state="accepted", attempts=1, http_status=202, message_id="M1")
    second = claims.claim_peeked(conn, send.id, rows, after=first.last, version=version, request_id="b",
                                  finished=done)
    assert second is not None
    assert (sendlog.counts(conn, send.id)["accepted"], sendlog.counts(conn, send.id)["in_flight"]) == (2, 2)
    rows = claims.peek_batch(conn, send.id, size=2, after=second.last)
    other = sendlog.open_sendlog(tmp_path / "state" / "sendlog.sqlite3")
    sendlog.add_suppression(other, "r5@example.org", reason="bounced", source="webhook")
    other.close()
    done = claims.Finish(claim=second, state="accepted", attempts=1, http_status=202, message_id="M2")
    assert claims.claim_peeked(conn, send.id, rows, after=second.last, version=version, request_id="c",
                                finished=done) is None
    counts = sendlog.counts(conn, send.id)
    assert (counts["accepted"], counts["in_flight"], counts["pending"]) == (4, 0, 2)


def test_claim_peeked_keeps_the_answer_when_the_range_does_not_match(conn: sqlite3.Connection) -> None:
    send = recorded_send(conn, 4)
    first = claims.claim_batch(conn, send.id, size=1, request_id="a")
    assert first is not None
    sendlog.add_suppression(conn, "r2@example.org", reason="manual", source="test")
    version = claims.data_version(conn)
    rows = claims.peek_batch(conn, send.id, size=3, after=first.last)
    done = claims.Finish(claim=first, state="accepted", attempts=1, http_status=202)
    assert claims.claim_peeked(conn, send.id, rows, after=first.last, version=version, request_id="b",
                                finished=done) is None
    counts = sendlog.counts(conn, send.id)
    assert (counts["accepted"], counts["in_flight"], counts["pending"]) == (1, 0, 3)
    assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 1


def test_the_message_id_and_time_of_an_answer_are_on_the_batch(conn: sqlite3.Connection) -> None:
    send = recorded_send(conn, 2)
    claim = claims.claim_batch(conn, send.id, size=2, request_id="a")
    assert claim is not None
    claims.finish_batch(conn, claim, state="accepted", attempts=1, http_status=202, message_id="M1")
    rows = conn.execute("SELECT d.state, b.message_id, b.finished_at IS NOT NULL FROM deliveries d "
                        "JOIN batches b ON b.id = d.batch_id WHERE d.send_id = ?", (send.id,)).fetchall()
    assert rows == [("accepted", "M1", 1), ("accepted", "M1", 1)]
    log = conn.execute("SELECT email, state, request_id, message_id, answered_at IS NOT NULL FROM delivery_log "
                       "WHERE send_id = ? ORDER BY delivery_id", (send.id,)).fetchall()
    assert log == [("r0@example.org", "accepted", "a", "M1", 1), ("r1@example.org", "accepted", "a", "M1", 1)]


def test_claim_peeked_refuses_when_suppressed_rows_come_before_the_peeked_ones(conn: sqlite3.Connection) -> None:
    """The end of one peeked window and the start of the next can be suppressed rows the peek skipped:
    only `claim_batch` marks them, so the fast claim must not step over them."""
    send = recorded_send(conn, 4)
    sendlog.add_suppression(conn, "r0@example.org", reason="manual", source="test")
    version = claims.data_version(conn)
    rows = claims.peek_batch(conn, send.id, size=2)
    assert [r[1] for r in rows] == ["r1@example.org"]
    assert claims.claim_peeked(conn, send.id, rows, after=0, version=version, request_id="a") is None
    claim = claims.claim_batch(conn, send.id, size=2, request_id="a")
    assert claim is not None and claim.rows == rows
    counts = sendlog.counts(conn, send.id)
    assert (counts["suppressed"], counts["in_flight"], counts["pending"]) == (1, 1, 2)
