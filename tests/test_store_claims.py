"""Claiming batches on both engines: intent before the request, the answer after, the fast claim's fallbacks;
and on PostgreSQL, a connection that the server kills."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sendkit import recorded_send
from storekit import select

from pipeline.errors import StoreError
from pipeline.store import Finish, Store


def another(store: Store) -> Store:
    """A second store on the same database, as `newsletter serve` in another process opens it."""
    if store.engine == "sqlite":
        from pipeline.store._sqlite import SQLiteStore

        return SQLiteStore(Path(store.where))
    from pipeline.store._postgres import PostgresStore

    return PostgresStore(store._url, migrate=False)  # type: ignore[attr-defined]


def test_claim_finish_and_counts(store: Store) -> None:
    send = recorded_send(store)
    store.add_suppression("r1@example.org", reason="bounced", source="test")
    first = store.claim_batch(send.id, size=2, request_id="a")
    assert first is not None
    assert [r[1] for r in first.rows] == ["r0@example.org"]  # r1 is suppressed: a smaller batch
    assert store.counts(send.id)["in_flight"] == 1
    store.record([Finish(claim=first, state="accepted", attempts=1, http_status=202, message_id="M1")])
    second = store.claim_batch(send.id, size=2, after=first.last, request_id="b")
    assert second is not None
    store.record([Finish(claim=second, state="failed", attempts=1, http_status=400, error="bad")])
    counts = store.counts(send.id)
    assert (counts["accepted"], counts["failed"], counts["suppressed"], counts["pending"]) == (1, 2, 1, 1)
    # failed = certainly not sent: a later run takes them again
    third = store.claim_batch(send.id, size=10, request_id="c")
    assert third is not None and len(third.rows) == 3
    first_at, last_at = store.send_times(send.id)
    assert first_at is not None and first_at == last_at


def test_claim_peeked_takes_the_peeked_rows_or_nothing(store: Store) -> None:
    send = recorded_send(store, 6)
    peeked = store.peek_batch(send.id, size=2)
    claim = store.claim_peeked(send.id, peeked, request_id="a")
    assert claim is not None and claim.rows is peeked.rows and store.counts(send.id)["in_flight"] == 2
    rows = peeked.rows
    assert select(store, "SELECT size, first_delivery, last_delivery FROM batches WHERE id = ?", (claim.id,)) == \
        [(2, rows[0][0], rows[1][0])]
    # a suppression committed by another process (`newsletter serve`) after the peek: nothing is taken
    peeked = store.peek_batch(send.id, size=2, after=claim.last)
    other = another(store)
    other.add_suppression("R3@example.org", reason="unsubscribed", source="webhook")
    other.close()
    assert store.claim_peeked(send.id, peeked, request_id="b") is None
    assert store.counts(send.id)["in_flight"] == 2
    assert select(store, "SELECT count(*) FROM batches") == [(1,)]
    slow = store.claim_batch(send.id, size=2, after=claim.last, request_id="b")
    assert slow is not None and [r[1] for r in slow.rows] == ["r2@example.org"]
    assert store.counts(send.id)["suppressed"] == 1
    empty = store.peek_batch(send.id, size=2, after=10**9)
    assert empty.rows == [] and store.claim_peeked(send.id, empty, request_id="c") is None


def test_claim_peeked_refuses_when_a_suppressed_row_lies_between(store: Store) -> None:
    send = recorded_send(store, 3)
    store.add_suppression("r1@example.org", reason="manual", source="test")
    peeked = store.peek_batch(send.id, size=3)
    assert [r[1] for r in peeked.rows] == ["r0@example.org", "r2@example.org"]  # the peek skips it, the range has it
    assert store.claim_peeked(send.id, peeked, request_id="a") is None
    claim = store.claim_batch(send.id, size=3, request_id="a")
    assert claim is not None and claim.rows == peeked.rows
    assert store.counts(send.id)["suppressed"] == 1


def test_claim_peeked_records_the_last_answer_claimed_or_not(store: Store) -> None:
    send = recorded_send(store, 6)
    first = store.claim_batch(send.id, size=2, request_id="a")
    assert first is not None
    peeked = store.peek_batch(send.id, size=2, after=first.last)
    done = Finish(claim=first, state="accepted", attempts=1, http_status=202, message_id="M1")
    second = store.claim_peeked(send.id, peeked, request_id="b", finished=[done])
    assert second is not None
    assert (store.counts(send.id)["accepted"], store.counts(send.id)["in_flight"]) == (2, 2)
    peeked = store.peek_batch(send.id, size=2, after=second.last)
    other = another(store)
    other.add_suppression("r5@example.org", reason="bounced", source="webhook")
    other.close()
    done = Finish(claim=second, state="accepted", attempts=1, http_status=202, message_id="M2")
    assert store.claim_peeked(send.id, peeked, request_id="c", finished=[done]) is None
    counts = store.counts(send.id)
    assert (counts["accepted"], counts["in_flight"], counts["pending"]) == (4, 0, 2)


def test_claim_peeked_keeps_the_answer_when_the_range_does_not_match(store: Store) -> None:
    send = recorded_send(store, 4)
    first = store.claim_batch(send.id, size=1, request_id="a")
    assert first is not None
    store.add_suppression("r2@example.org", reason="manual", source="test")
    peeked = store.peek_batch(send.id, size=3, after=first.last)
    done = Finish(claim=first, state="accepted", attempts=1, http_status=202)
    assert store.claim_peeked(send.id, peeked, request_id="b", finished=[done]) is None
    counts = store.counts(send.id)
    assert (counts["accepted"], counts["in_flight"], counts["pending"]) == (1, 0, 3)
    assert select(store, "SELECT count(*) FROM batches") == [(1,)]


def test_the_message_id_and_time_of_an_answer_are_on_the_batch(store: Store) -> None:
    send = recorded_send(store, 2)
    claim = store.claim_batch(send.id, size=2, request_id="a")
    assert claim is not None
    store.record([Finish(claim=claim, state="accepted", attempts=1, http_status=202, message_id="M1")])
    rows = select(store, "SELECT d.state, b.message_id, b.finished_at IS NOT NULL FROM deliveries d "
                         "JOIN batches b ON b.id = d.batch_id WHERE d.send_id = ?", (send.id,))
    assert [(state, mid, bool(done)) for state, mid, done in rows] == [("accepted", "M1", True)] * 2
    log = select(store, "SELECT email, state, request_id, message_id, answered_at IS NOT NULL FROM delivery_log "
                        "WHERE send_id = ? ORDER BY delivery_id", (send.id,))
    assert [(*r[:4], bool(r[4])) for r in log] == [("r0@example.org", "accepted", "a", "M1", True),
                                                   ("r1@example.org", "accepted", "a", "M1", True)]


def test_claim_peeked_refuses_when_suppressed_rows_come_before_the_peeked_ones(store: Store) -> None:
    """The end of one peeked window and the start of the next can be suppressed rows the peek skipped:
    only `claim_batch` marks them, so the fast claim must not step over them."""
    send = recorded_send(store, 4)
    store.add_suppression("r0@example.org", reason="manual", source="test")
    peeked = store.peek_batch(send.id, size=2)
    assert [r[1] for r in peeked.rows] == ["r1@example.org"]
    assert store.claim_peeked(send.id, peeked, request_id="a") is None
    claim = store.claim_batch(send.id, size=2, request_id="a")
    assert claim is not None and claim.rows == peeked.rows
    counts = store.counts(send.id)
    assert (counts["suppressed"], counts["in_flight"], counts["pending"]) == (1, 1, 2)


def test_a_retry_is_bracketed_and_outcomes_come_in_one_transaction(store: Store) -> None:
    send = recorded_send(store, 4)
    first = store.claim_batch(send.id, size=2, request_id="a")
    second = store.claim_batch(send.id, size=2, after=2 if first is None else first.last, request_id="b")
    assert first is not None and second is not None
    store.mark_waiting(first, attempts=1, http_status=503, error="503 Service Unavailable")
    assert select(store, "SELECT state, http_status FROM batches WHERE id = ?", (first.id,)) == [("waiting", 503)]
    assert store.mark_in_flight(first) == first  # no suppression came: the same claim
    store.record([Finish(claim=first, state="accepted", attempts=2, http_status=202),
                  Finish(claim=second, state="in_doubt", attempts=1, error="timeout")])
    counts = store.counts(send.id)
    assert (counts["accepted"], counts["in_doubt"], counts["in_flight"]) == (2, 2, 0)
    assert store.in_doubt_addresses(send.id) == ["r2@example.org", "r3@example.org"]


@pytest.mark.parametrize("peeked", [False, True])  # on SQLite a peeked claim of untouched rows is deferred
def test_a_retry_leaves_out_readers_suppressed_while_it_waited(store: Store, peeked: bool) -> None:
    """A 429 made the batch wait; meanwhile `serve` (another connection) recorded an unsubscribe of one of
    its readers, spelt in other case. The retry takes that reader out; the answer counts only the rest."""
    send = recorded_send(store, 4)
    claim = (store.claim_peeked(send.id, store.peek_batch(send.id, size=3), request_id="a") if peeked
             else store.claim_batch(send.id, size=3, request_id="a"))
    assert claim is not None and len(claim.rows) == 3
    store.mark_waiting(claim, attempts=1, http_status=429, error="429 Too Many Requests")
    other = another(store)
    try:
        assert other.add_suppression("R1@Example.org", reason="unsubscribed", source="link")
    finally:
        other.close()
    retry = store.mark_in_flight(claim)
    assert retry is not None and [row[1] for row in retry.rows] == ["r0@example.org", "r2@example.org"]
    assert store.counts(send.id)["suppressed"] == 1
    store.record([Finish(claim=retry, state="accepted", attempts=2, http_status=202)])
    counts = store.counts(send.id)
    assert (counts["accepted"], counts["suppressed"], counts["in_flight"], counts["pending"]) == (2, 1, 0, 1)
    assert select(store, "SELECT size FROM batches WHERE id = ?", (claim.id,)) == [(2,)]
    rest = store.claim_batch(send.id, size=3, after=claim.last, request_id="b")
    assert rest is not None and [row[1] for row in rest.rows] == ["r3@example.org"]


def test_a_retry_whose_readers_all_unsubscribed_meanwhile_is_dropped(store: Store) -> None:
    send = recorded_send(store, 3)
    claim = store.claim_batch(send.id, size=2, request_id="a")
    assert claim is not None
    store.mark_waiting(claim, attempts=1, http_status=503, error="503 Service Unavailable")
    store.add_suppressions([("r0@example.org", "unsubscribed"), ("r1@example.org", "bounced")], source="webhook")
    retry = store.mark_in_flight(claim)
    assert retry is not None and retry.rows == []
    assert select(store, "SELECT count(*) FROM batches WHERE id = ?", (claim.id,)) == [(0,)]
    counts = store.counts(send.id)
    assert (counts["suppressed"], counts["in_flight"], counts["pending"]) == (2, 0, 1)


def test_a_retry_is_refused_once_another_run_recovered_the_send(store: Store) -> None:
    """A run that lost its send lock while a batch waited: the run that took the send over failed that batch
    (certainly not sent) and sends it itself, so the first run's retry must not go out."""
    send = recorded_send(store, 4)
    first = store.claim_batch(send.id, size=2, request_id="a")
    assert first is not None
    store.mark_waiting(first, attempts=1, http_status=429, error="429 Too Many Requests")
    other = another(store)
    try:
        other.recover_in_flight(send.id)
    finally:
        other.close()
    assert store.mark_in_flight(first) is None
    assert select(store, "SELECT state FROM batches WHERE id = ?", (first.id,)) == [("failed",)]
    counts = store.counts(send.id)
    assert (counts["failed"], counts["in_flight"], counts["pending"]) == (2, 0, 2)


@pytest.mark.parametrize("peeked", [False, True])  # on SQLite a peeked claim of untouched rows is deferred
def test_an_answer_after_another_run_put_the_batch_in_doubt_is_kept(store: Store, peeked: bool) -> None:
    """The answer to a request that was out when the send was taken over comes after the other run's
    recovery put it in doubt: the batch and its rows take the answer together."""
    send = recorded_send(store, 4)
    claim = (store.claim_peeked(send.id, store.peek_batch(send.id, size=2), request_id="a") if peeked
             else store.claim_batch(send.id, size=2, request_id="a"))
    assert claim is not None
    other = another(store)
    try:
        assert other.recover_in_flight(send.id) == 1
    finally:
        other.close()
    assert store.counts(send.id)["in_doubt"] == 2
    store.record([Finish(claim=claim, state="accepted", attempts=1, http_status=202, message_id="M1")])
    assert select(store, "SELECT state, message_id FROM batches WHERE id = ?", (claim.id,)) == [("accepted", "M1")]
    counts = store.counts(send.id)
    assert (counts["accepted"], counts["in_doubt"], counts["pending"]) == (2, 0, 2)
    assert store.in_doubt_addresses(send.id) == []


def test_a_429_after_another_run_put_the_batch_in_doubt_does_not_make_it_wait_again(store: Store) -> None:
    """The send was taken over while a request was out; the other run put its batch in doubt and, with
    --resend-in-doubt, sent its rows itself. The late 429 certainly sent nothing, but it must not make the
    batch wait again: a retry of it would mail those rows a second time."""
    send = recorded_send(store, 4)
    claim = store.claim_batch(send.id, size=2, request_id="a")
    assert claim is not None
    other = another(store)
    try:
        assert other.recover_in_flight(send.id) == 1
        again = other.claim_batch(send.id, size=2, states=("pending", "failed", "in_doubt"), request_id="b")
        assert again is not None and again.rows == claim.rows
    finally:
        other.close()
    store.mark_waiting(claim, attempts=1, http_status=429, error="429 Too Many Requests")
    assert store.mark_in_flight(claim) is None


def test_an_answer_leaves_rows_that_another_run_sent_again(store: Store) -> None:
    """With --resend-in-doubt, the run that took over claims the in-doubt rows under its own batch: a late
    answer to the first request changes that batch's row, not the rows now in the other run's request."""
    send = recorded_send(store, 2)
    claim = store.claim_batch(send.id, size=2, request_id="a")
    assert claim is not None
    other = another(store)
    try:
        other.recover_in_flight(send.id)
        again = other.claim_batch(send.id, size=2, states=("pending", "failed", "in_doubt"), request_id="b")
        assert again is not None and again.rows == claim.rows
    finally:
        other.close()
    store.record([Finish(claim=claim, state="accepted", attempts=1, http_status=202, message_id="M1")])
    assert store.counts(send.id)["in_flight"] == 2  # the other run's request decides them


def test_postgresql_honours_a_suppression_committed_between_peek_and_claim(pg_database: str) -> None:
    """Only the suppression of an address the claim would take makes it fall back; the slow claim then marks
    it and mails the rest. A suppression of an address later in the list changes nothing now."""
    from pipeline.store._postgres import PostgresStore

    sender = PostgresStore(pg_database, migrate=True)
    serve = PostgresStore(pg_database, migrate=False)
    send = recorded_send(sender, 4)
    peeked = sender.peek_batch(send.id, size=2)
    serve.add_suppression("r3@example.org", reason="unsubscribed", source="web")  # not in this batch
    claim = sender.claim_peeked(send.id, peeked, request_id="a")
    assert claim is not None and [r[1] for r in claim.rows] == ["r0@example.org", "r1@example.org"]
    peeked = sender.peek_batch(send.id, size=2, after=claim.last)
    assert [r[1] for r in peeked.rows] == ["r2@example.org"]
    serve.link_unsubscribe(email="R2@Example.org", list_name="sample", issue="001")
    assert sender.claim_peeked(send.id, peeked, request_id="b") is None
    assert sender.claim_batch(send.id, size=2, after=claim.last, request_id="b") is None  # nothing left to mail
    counts = sender.counts(send.id)
    assert (counts["in_flight"], counts["suppressed"], counts["pending"]) == (2, 2, 0)
    serve.close()
    sender.close()


def test_postgresql_connection_killed_mid_send_is_a_store_error(pg_database: str, pg_url: str) -> None:
    """The server ends the store's session (as a restart does): the claim fails with a StoreError that says
    nothing was counted and how to go on; the next call connects again, and the claim never happened."""
    from pipeline.store._postgres import PostgresStore

    store = PostgresStore(pg_database, migrate=True)
    send = recorded_send(store, 4)
    first = store.claim_batch(send.id, size=2, request_id="a")
    assert first is not None
    backend = store.conn.info.backend_pid
    with psycopg.connect(pg_url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone() == (True,)
    done = Finish(claim=first, state="accepted", attempts=1, http_status=202)
    with pytest.raises(StoreError, match="went away .*nothing unrecorded was counted as sent — run the same"):
        store.claim_batch(send.id, size=2, after=first.last, request_id="b", finished=[done])
    counts = store.counts(send.id)  # a new connection
    assert store.conn.info.backend_pid != backend
    assert (counts["in_flight"], counts["accepted"], counts["pending"]) == (2, 0, 2)
    assert store.recover_in_flight(send.id) == 1
    store.close()
