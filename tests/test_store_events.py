"""`record_events` on both engines: a post's events found, stored and applied as if one by one (the
PostgreSQL engine does each step for the whole post in one statement)."""

from __future__ import annotations

from sendkit import recorded_send
from storekit import select

from pipeline.store import Finish, Store
from pipeline.store._types import EventRecord


def _event(n: int, kind: str, email: str, send_id: int, at: int, *, key: str | None = None,
           outcome: str | None = None, suppress: tuple[str, str] | None = None) -> EventRecord:
    return EventRecord(key=key or f"k{n}", event=kind, status="applied", source="webhook", email=email,
                       send_id=str(send_id), issue="001", list_name="sample", occurred_at=at, url=None,
                       payload="{}", outcome=outcome, suppress=suppress)


def test_a_post_is_applied_as_if_event_by_event(store: Store) -> None:
    send_id = recorded_send(store, 3).id
    claim = store.claim_batch(send_id, size=10, request_id="a")
    assert claim is not None
    store.record([Finish(claim=claim, state="accepted", attempts=1, http_status=202, message_id="m")])
    events = [
        _event(1, "delivered", "r0@example.org", send_id, 20, outcome="delivered"),
        _event(2, "processed", "R0@example.org", send_id, 30, outcome="processed"),  # later, lower: no change
        _event(3, "bounce", "r1@example.org", send_id, 10, outcome="bounce", suppress=("bounced", "webhook bounce")),
        _event(4, "dropped", "r1@example.org", send_id, 10, outcome="dropped"),  # same rank and time: first stays
        _event(5, "delivered", "r0@example.org", send_id, 20, key="k1"),  # same key in the same post
        _event(6, "open", "nobody@example.org", send_id, 40),  # no such delivery
        _event(7, "open", "r2@example.org", send_id + 1, 40),  # another send
        _event(8, "bounce", "r1@example.org", send_id, 11, key="k8", suppress=("bounced", "webhook bounce")),
    ]
    done = store.record_events(events)
    assert done == [("applied", False), ("applied", False), ("applied", True), ("applied", False),
                    ("duplicate", False), ("unmatched", False), ("unmatched", False), ("applied", False)]
    outcomes = dict(select(store, "SELECT d.email, s.outcome FROM delivery_status s JOIN deliveries d "
                                  "ON d.id = s.delivery_id"))
    assert outcomes == {"r0@example.org": "delivered", "r1@example.org": "bounce"}
    assert store.record_events(events[:1]) == [("duplicate", False)]
