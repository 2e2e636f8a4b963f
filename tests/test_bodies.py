"""Bodies built ahead by the forked helper: the same text as built in the sending process, in order, and a
helper that dies only costs time."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sendkit import recorded_send
from storekit import same_store

from pipeline.send.batches import Batch, Personalizer
from pipeline.send.bodies import BodyBuilder, Lookahead
from pipeline.store import TO_SEND, DeliveryRow, Store
from tests.test_batches import ROWS, _personalizer


def _body(p: Personalizer, rows: list[DeliveryRow]) -> str:
    return p.body(Batch(id=0, request_id="", rows=rows))


def test_helper_builds_the_same_bodies_in_order(site: Path) -> None:
    p = _personalizer(site)
    builder = BodyBuilder(p)
    try:
        batches = [ROWS[:1], ROWS[1:], [(9, f"r{i}@example.org", f"R{i}", None) for i in range(1000)]]
        for rows in batches:
            builder.submit(rows)
        assert [builder.result() for _ in batches] == [_body(p, rows) for rows in batches]
        builder._process.kill()  # a helper that died: the caller builds the bodies itself
        builder._process.join()
        builder.submit(ROWS)
        assert builder.result() is None
    finally:
        builder.close()


def test_lookahead_uses_bodies_built_ahead_or_builds_here(site: Path, store: Store,
                                                          database_url: str | None) -> None:
    p = _personalizer(site)
    send_id = recorded_send(store, 7).id
    builder = BodyBuilder(p)
    try:
        ahead = Lookahead(store, send_id, size=3, states=TO_SEND, build=lambda rows: _body(p, rows),
                          builder=builder)
        ahead.fill(0)
        head = ahead.head
        assert head is not None and [r[1] for r in head.rows] == ["r0@example.org", "r1@example.org", "r2@example.org"]
        claim = store.claim_peeked(send_id, head, request_id="a")
        assert claim is not None and ahead.body(claim) == _body(p, claim.rows)
        ahead.fill(claim.last)
        # as `newsletter serve` would, between peek and claim
        other = same_store(store, database_url)
        other.add_suppression("r3@example.org", reason="unsubscribed", source="web")
        other.close()
        head = ahead.head
        assert head is not None and store.claim_peeked(send_id, head, request_id="b") is None
        claim = store.claim_batch(send_id, size=3, after=claim.last, request_id="b")
        assert claim is not None and [r[1] for r in claim.rows] == ["r4@example.org", "r5@example.org"]
        assert ahead.body(claim) == _body(p, claim.rows)  # the bodies built ahead are dropped
        assert ahead.head is None
        ahead.fill(claim.last)
        head = ahead.head
        assert head is not None and [r[1] for r in head.rows] == ["r6@example.org"]
    finally:
        builder.close()


def test_a_helper_too_late_is_given_up(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BodyBuilder, "patience", 0.2)
    builder = BodyBuilder(_personalizer(site))
    try:
        assert builder._process.pid is not None
        os.kill(builder._process.pid, signal.SIGSTOP)  # as if other work on the machine took every core
        builder.submit(ROWS)
        started = time.monotonic()
        assert builder.result() is None and builder.result() is None
        assert time.monotonic() - started < 1.0
    finally:
        if builder._process.pid is not None:
            os.kill(builder._process.pid, signal.SIGCONT)
        builder.close()
