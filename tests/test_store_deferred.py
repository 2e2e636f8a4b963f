"""States held by the batch row (SQLite's deferred batches): every reader sees what the rows would say.

The engine-independent tests run on both engines and must agree; the SQLite ones check that the common
claim really leaves the rows untouched, when it does not, and that the next run settles them.
"""

from __future__ import annotations

from pathlib import Path

from sendkit import recorded_send
from storekit import select

from pipeline.store import Claim, Finish, Store
from pipeline.store._sqlite import SQLiteStore


def _claim(store: Store, send_id: int, size: int, after: int = 0, request_id: str = "r",
           editions: tuple[str, ...] | None = None) -> Claim:
    peeked = store.peek_batch(send_id, size=size, after=after, editions=editions)
    claim = store.claim_peeked(send_id, peeked, request_id=request_id, editions=editions)
    assert claim is not None
    return claim


def _log(store: Store, send_id: int) -> dict[str, str]:
    return dict(select(store, "SELECT email, state FROM delivery_log WHERE send_id = ?", (send_id,)))


def _accept(claim: Claim, message_id: str = "M") -> Finish:
    return Finish(claim=claim, state="accepted", attempts=1, http_status=202, message_id=message_id)


def test_every_reader_sees_the_states_of_claimed_and_answered_batches(store: Store) -> None:
    send = recorded_send(store, 7)
    with store.sending():
        first = _claim(store, send.id, 3, request_id="a")
        second = _claim(store, send.id, 2, after=first.last, request_id="b")
        assert store.counts(send.id) == {"pending": 2, "in_flight": 5, "accepted": 0, "in_doubt": 0, "failed": 0,
                                         "suppressed": 0, "removed": 0}
        store.record([_accept(first), Finish(claim=second, state="in_doubt", attempts=1, error="timeout")])
    counts = store.counts(send.id)
    assert (counts["accepted"], counts["in_doubt"], counts["pending"], counts["in_flight"]) == (3, 2, 2, 0)
    assert store.edition_counts(send.id) == {"": counts}
    assert store.in_doubt_addresses(send.id) == ["r3@example.org", "r4@example.org"]
    log = _log(store, send.id)
    assert [log[f"r{i}@example.org"] for i in range(7)] == ["accepted"] * 3 + ["in_doubt"] * 2 + ["pending"] * 2
    assert select(store, "SELECT DISTINCT request_id, message_id FROM delivery_log WHERE state = 'accepted'") == \
        [("a", "M")]
    report = store.event_counts(send, {"bounced": ("bounce",)})
    assert (report.recipients, report.accepted) == (7, 3)


def test_a_waiting_batch_reads_in_flight_and_a_new_run_makes_it_failed(store: Store) -> None:
    send = recorded_send(store, 4)
    with store.sending():
        claim = _claim(store, send.id, 4)
        store.mark_waiting(claim, attempts=1, http_status=429, error="slow down")
    assert store.counts(send.id)["in_flight"] == 4
    # the process died while waiting to retry: certainly not sent, so failed and sent again
    assert store.recover_in_flight(send.id) == 0
    assert set(_log(store, send.id).values()) == {"failed"}
    again = store.claim_batch(send.id, size=10, request_id="again")
    assert again is not None and len(again.rows) == 4


def test_a_run_that_died_leaves_its_requests_in_doubt(store: Store) -> None:
    send = recorded_send(store, 5)
    with store.sending():
        first = _claim(store, send.id, 2, request_id="a")
        _claim(store, send.id, 2, after=first.last, request_id="b")
        store.record([_accept(first)])
    assert store.recover_in_flight(send.id) == 1
    assert [s for _, s in sorted(_log(store, send.id).items())] == \
        ["accepted", "accepted", "in_doubt", "in_doubt", "pending"]
    assert store.in_doubt_addresses(send.id) == ["r2@example.org", "r3@example.org"]
    # the next run takes only what was certainly not sent
    rest = store.claim_batch(send.id, size=10, request_id="c")
    assert rest is not None and [r[1] for r in rest.rows] == ["r4@example.org"]


# --- SQLite: what the rows hold -------------------------------------------------------------------------------


def _rows(store: SQLiteStore, send_id: int) -> list[tuple[str, int | None]]:
    return [(s, b) for s, b in store.conn.execute("SELECT state, batch_id FROM deliveries WHERE send_id = ? "
                                                  "ORDER BY id", (send_id,))]


def test_sqlite_an_accepted_claim_writes_the_batch_row_only(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "send.sqlite3")
    send = recorded_send(store, 3)
    with store.sending():
        claim = _claim(store, send.id, 3)
        assert claim.deferred
        store.record([_accept(claim)])
    assert _rows(store, send.id) == [("pending", None)] * 3
    assert select(store, "SELECT state, deferred, size FROM batches") == [("accepted", 1, 3)]
    # the next run of the send writes the states into the rows before it changes any
    store.recover_in_flight(send.id)
    assert _rows(store, send.id) == [("accepted", claim.id)] * 3
    assert select(store, "SELECT deferred FROM batches") == [(0,)]
    assert store.counts(send.id)["accepted"] == 3


def test_sqlite_other_answers_are_written_into_the_rows_at_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "send.sqlite3")
    send = recorded_send(store, 4)
    with store.sending():
        first = _claim(store, send.id, 2, request_id="a")
        second = _claim(store, send.id, 2, after=first.last, request_id="b")
        store.record([Finish(claim=first, state="failed", attempts=1, http_status=400, error="bad"),
                      Finish(claim=second, state="in_doubt", attempts=1, error="timeout")])
    assert _rows(store, send.id) == [("failed", first.id)] * 2 + [("in_doubt", second.id)] * 2
    assert select(store, "SELECT sum(deferred) FROM batches") == [(0,)]


def test_sqlite_a_claim_over_rows_that_failed_before_is_not_deferred(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "send.sqlite3")
    send = recorded_send(store, 4)
    failed = store.claim_batch(send.id, size=2, request_id="old")
    assert failed is not None
    store.record([Finish(claim=failed, state="failed", attempts=1, http_status=400, error="bad")])
    with store.sending():  # those rows carry their batch: the claim writes its own into them
        claim = store.claim_peeked(send.id, store.peek_batch(send.id, size=4), request_id="new")
    assert claim is not None and not claim.deferred and len(claim.rows) == 4
    assert _rows(store, send.id) == [("in_flight", claim.id)] * 4


def _two_editions(store: Store) -> tuple[int, list[str]]:
    """A send whose rows alternate between editions ko and en: each edition's ranges span the other's rows."""
    send = store.create_send(issue="027", list_name="mixed", transport="sendgrid", content_hash="h", subject="s")
    editions = ["ko", "en"] * 4
    store.add_recipients(send.id, [(f"m{i}@example.org", "", None, e) for i, e in enumerate(editions)])
    return send.id, editions


def test_editions_claimed_one_at_a_time_keep_their_own_rows(store: Store) -> None:
    send_id, editions = _two_editions(store)
    with store.sending():
        ko = _claim(store, send_id, 4, request_id="ko", editions=("ko",))
        en = _claim(store, send_id, 2, request_id="en", editions=("en",))
        store.record([_accept(ko, "K"), Finish(claim=en, state="in_doubt", attempts=1, error="timeout")])
    log = select(store, "SELECT email, state, message_id FROM delivery_log WHERE send_id = ? ORDER BY delivery_id",
                 (send_id,))
    expected = []
    seen_en = 0
    for i, edition in enumerate(editions):
        if edition == "ko":
            expected.append((f"m{i}@example.org", "accepted", "K"))
        else:
            seen_en += 1
            expected.append((f"m{i}@example.org", "in_doubt" if seen_en <= 2 else "pending", None))
    assert log == expected
    assert store.edition_counts(send_id) == {
        "en": {**dict.fromkeys(("pending", "in_flight", "accepted", "in_doubt", "failed", "suppressed", "removed"), 0),
               "in_doubt": 2, "pending": 2},
        "ko": {**dict.fromkeys(("pending", "in_flight", "accepted", "in_doubt", "failed", "suppressed", "removed"), 0),
               "accepted": 4}}
    # the next run settles the rows: the same states, now held by the rows themselves
    store.recover_in_flight(send_id)
    assert select(store, "SELECT email, state, message_id FROM delivery_log WHERE send_id = ? ORDER BY delivery_id",
                  (send_id,)) == expected
    rest = store.claim_batch(send_id, size=10, request_id="rest", editions=("en",))
    assert rest is not None and [r[1] for r in rest.rows] == ["m5@example.org", "m7@example.org"]


def test_sqlite_an_edition_claim_is_deferred_and_settles_its_own_rows_only(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "send.sqlite3")
    send_id, _ = _two_editions(store)
    with store.sending():
        ko = _claim(store, send_id, 4, request_id="ko", editions=("ko",))
        assert ko.deferred
        store.record([Finish(claim=ko, state="failed", attempts=1, http_status=400, error="bad")])
    assert _rows(store, send_id) == [("failed", ko.id), ("pending", None)] * 4


def test_sqlite_copy_to_postgresql_carries_the_states_deferred_batches_hold(pg_database: str,
                                                                            tmp_path: Path) -> None:
    from pipeline.store._copy import copy_store
    from pipeline.store._postgres import PostgresStore

    source = SQLiteStore(tmp_path / "source.sqlite3")
    send = recorded_send(source, 3)
    with source.sending():
        claim = _claim(source, send.id, 2)
        source.record([_accept(claim, "M9")])
    target = PostgresStore(pg_database, migrate=True)
    copy_store(source, target)
    assert target.counts(send.id) == source.counts(send.id)
    assert select(target, "SELECT email, state, message_id FROM delivery_log ORDER BY delivery_id") == \
        [("r0@example.org", "accepted", "M9"), ("r1@example.org", "accepted", "M9"),
         ("r2@example.org", "pending", None)]
    target.close()


def test_sqlite_copy_to_postgresql_of_a_send_of_two_editions(pg_database: str, tmp_path: Path) -> None:
    from pipeline.store._copy import copy_store
    from pipeline.store._postgres import PostgresStore

    source = SQLiteStore(tmp_path / "source.sqlite3")
    send_id, _ = _two_editions(source)
    with source.sending():
        ko = _claim(source, send_id, 4, request_id="ko", editions=("ko",))
        assert ko.deferred
        source.record([_accept(ko)])
    target = PostgresStore(pg_database, migrate=True)
    copy_store(source, target)
    assert target.edition_counts(send_id) == source.edition_counts(send_id)
    assert select(target, "SELECT email, state FROM delivery_log ORDER BY delivery_id") == \
        select(source, "SELECT email, state FROM delivery_log ORDER BY delivery_id")
    assert select(target, "SELECT count(*) FROM deliveries WHERE state = 'accepted' AND batch_id = %s",
                  (ko.id,)) == [(4,)]
    target.close()
