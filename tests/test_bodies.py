"""Bodies built ahead by the forked worker: the same text as built in the sending process, in order, and a
worker that dies, or is too late, only costs time."""

from __future__ import annotations

import multiprocessing
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


def test_helper_builds_the_same_bodies_in_order(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BodyBuilder, "patience", 60)  # a busy machine may keep the idle worker waiting
    p = _personalizer(site)
    others = set(multiprocessing.active_children())  # workers of earlier tests may still be ending
    builder = BodyBuilder(p)
    try:
        batches = [ROWS[:1], ROWS[1:], [(9, f"r{i}@example.org", f"R{i}", None) for i in range(1000)]]
        for rows in batches:
            builder.submit(rows)
        assert [builder.result() for _ in batches] == [_body(p, rows) for rows in batches]
        [worker] = set(multiprocessing.active_children()) - others
        worker.kill()  # a worker that died: the caller builds the bodies itself
        worker.join()
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


def test_a_worker_too_late_is_not_waited_for(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that gets no CPU (stopped here) costs a wait of `patience` per body, then the bodies are
    built here; once it runs again its bodies are used again, and closing does not wait for it."""
    p = _personalizer(site)
    monkeypatch.setattr(BodyBuilder, "patience", 60)  # a busy machine may keep the idle worker waiting
    others = set(multiprocessing.active_children())  # workers of earlier tests may still be ending
    builder = BodyBuilder(p)
    builder.submit(ROWS)
    assert builder.result() == _body(p, ROWS)
    [worker] = set(multiprocessing.active_children()) - others
    assert worker.pid is not None
    monkeypatch.setattr(BodyBuilder, "patience", 0.2)
    os.kill(worker.pid, signal.SIGSTOP)  # as if other work on the machine took every core
    try:
        builder.submit(ROWS)
        builder.submit(ROWS[:1])
        assert builder.result() is None and builder.result() is None
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    monkeypatch.setattr(BodyBuilder, "patience", 60)
    builder.submit(ROWS[1:])
    assert builder.result() == _body(p, ROWS[1:])  # the bodies given up on were dropped, not paired with this
    builder.close()
    assert _ends(worker.pid)


def _ends(pid: int, within: float = 30) -> bool:
    """The process has exited (gone, or a zombie its parent has not reaped yet): read from /proc, because the
    executor's own thread may be joining the same child at the same moment (is_alive() races with it)."""
    deadline = time.monotonic() + within  # a bounded wait for a state, nothing asserted about durations
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_the_worker_dies_with_the_sending_process(site: Path, tmp_path: Path) -> None:
    """kill -9 of the send leaves no worker behind (it would hold the send lock's descriptor)."""
    paths = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]
    code = (f"import sys, os, time; sys.path[:0] = {paths!r}\n"
            "from pathlib import Path\n"
            "from pipeline.send.bodies import BodyBuilder\n"
            "from tests.test_batches import ROWS, _personalizer\n"
            f"b = BodyBuilder(_personalizer(Path({str(site)!r})))\n"
            "b.submit(ROWS); b.result()\n"
            "import multiprocessing; print(multiprocessing.active_children()[0].pid, flush=True)\n"
            "time.sleep(600)\n")
    import subprocess
    import sys
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        status = Path(f"/proc/{worker}/stat").read_text() if Path(f"/proc/{worker}/stat").exists() else ""
        if ") Z " in status:
            break  # dead, not yet reaped by init
        time.sleep(0.01)
    stat = Path(f"/proc/{worker}/stat")
    assert not stat.exists() or ") Z " in stat.read_text()
