"""`sending.concurrency`: several requests in flight, and still exactly once, in list order, paused together.

The stand-in measures what the sender did (how many requests it had in flight at once, when each request
arrived, when it answered 429); its gate holds the first answers until the sender has 4 requests out, so
the overlap is seen however fast or slow the machine is. Nothing waits on a clock to decide an assertion.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.send.job import SendJob
from pipeline.send.plan import SendOptions, Summary
from tests.sendkit import ISSUE, KEY, Quiet, cli, write_list
from tests.standin import StandIn
from tests.storekit import select, site_store

CONCURRENCY = 4


@pytest.fixture
def site4(site: Path) -> Path:
    """The fixture site with four requests in flight and three recipients a request."""
    config = site / "newsletter.yaml"
    text = config.read_text("utf-8").replace("concurrency: 1", f"concurrency: {CONCURRENCY}")
    config.write_text(text.replace("batch_size: 2", "batch_size: 3"), "utf-8")
    return site


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(api_key=KEY, retry_after=0, slow_seconds=120) as sg:
        yield sg



def _send(site: Path, env: dict[str, str]) -> Summary:
    """A send in this process on the real clock (the stand-in measures real pauses)."""
    with SendJob(site / ISSUE, load_config(site), SendOptions(list_name="big"), environ=env) as job:
        job.prepare()
        return job.run(Quiet())


def _index(address: str) -> int:
    found = re.fullmatch(r"person(\d{5})@example\.org", address)
    assert found, address
    return int(found.group(1))


def _batches(standin: StandIn) -> list[list[int]]:
    """Each accepted request's recipients as list positions, in the request's order."""
    found = []
    for record in standin.accepted:
        assert record.body is not None
        found.append([_index(p["to"][0]["email"]) for p in record.body["personalizations"]])
    return found


def test_four_in_flight_each_address_once_each_batch_contiguous(site4: Path, standin: StandIn,
                                                                env: dict[str, str]) -> None:
    addresses = write_list(site4, "big", 40)
    standin.gate = CONCURRENCY
    summary = _send(site4, env)
    assert summary.finished and summary.accepted == 40 and summary.requests == 14
    assert standin.max_in_flight == CONCURRENCY  # the gate made it reach 4; the sender kept it at most 4
    assert standin.recipients() == dict.fromkeys(addresses, 1)
    batches = _batches(standin)
    for batch in batches:
        assert batch == list(range(batch[0], batch[0] + len(batch))), batch  # a contiguous part of the list
    assert sorted(i for batch in batches for i in batch) == list(range(40))
    assert sorted(len(b) for b in batches) == [1] + [3] * 13


def test_a_429_pauses_every_worker(site4: Path, standin: StandIn, env: dict[str, str]) -> None:
    """The first request gets 429 with Retry-After: 1 while three others are out. The stand-in answers the
    429 first and holds the other three until the second has passed, so the sender has a free slot only by
    ignoring the pause: no request may arrive between the 429 and the end of its Retry-After."""
    addresses = write_list(site4, "big", 30)
    standin.gate, standin.hold_after_429, standin.retry_after = CONCURRENCY, True, 1
    standin.script(["429"])
    summary = _send(site4, env)
    assert summary.finished and standin.recipients() == dict.fromkeys(addresses, 1)
    assert len(standin.answered_429) == 1 and standin.max_in_flight == CONCURRENCY
    paused_at = standin.answered_429[0]
    later = [t for t in standin.arrivals if t > paused_at]
    assert len(later) == summary.requests - CONCURRENCY  # the retry and the rest came after the 429
    assert all(t >= paused_at + standin.retry_after for t in later), [t - paused_at for t in later]


def test_kill_9_leaves_at_most_four_batches_in_doubt(site4: Path, standin: StandIn, env: dict[str, str]) -> None:
    addresses = write_list(site4, "big", 45)  # 15 requests of 3
    standin.script(["ok"] * 3 + ["slow"] * CONCURRENCY)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "send", ISSUE, "--list", "big", "--yes"], cwd=site4,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120  # bounded wait for a state; nothing asserted about durations
    while len(standin.accepted) < 3 + CONCURRENCY:  # three answered, then four slow ones fill every slot
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "gave up waiting for four slow requests"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(standin.accepted) == 3 + CONCURRENCY  # no fifth request could start: every slot was busy
    # What the killed send left in flight: the requests whose answer it never saw. (Which of the seven the
    # stand-in recorded first is a race between its threads, so the send log says which they are.)
    store = site_store(site4, env)
    try:
        slow = {r[0] for r in select(store, "SELECT email FROM delivery_log WHERE state = 'in_flight'")}
    finally:
        store.close()
    mailed = {a for record in standin.accepted for a in _addresses(record)}
    assert len(slow) == 3 * CONCURRENCY and slow <= mailed  # four batches of three, each one really sent

    again = cli(site4, "send", ISSUE, "--list", "big", "--yes", env=env)
    assert again.returncode == 5 and f"{len(slow)} recipient(s) are in doubt" in again.stderr, again.stderr
    assert max(standin.recipients().values()) == 1  # nobody mailed twice
    assert set(standin.recipients()) == set(addresses)
    store = site_store(site4, env)
    try:
        doubtful = select(store, "SELECT count(*) FROM batches WHERE state = 'in_doubt'")[0][0]
        send = store.find_send(issue="001-hello", list_name="big", transport="sendgrid")
        assert send is not None and set(store.in_doubt_addresses(send.id)) == slow
    finally:
        store.close()
    assert 1 <= doubtful <= CONCURRENCY
    status = cli(site4, "status", ISSUE, env=env)
    assert all(a in status.stdout for a in slow)


def _addresses(record: object) -> list[str]:
    body = record.body  # type: ignore[attr-defined]
    assert body is not None
    return [p["to"][0]["email"] for p in body["personalizations"]]


def test_the_loop_frees_the_cycles_its_requests_leave(site4: Path, standin: StandIn, env: dict[str, str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The cyclic GC is paused while a send runs; without these collections, what each request leaves in
    reference cycles stayed until the send ended: 70 MB over 10 million recipients."""
    from pipeline.send import loop

    monkeypatch.setattr(loop, "COLLECT_EVERY", 2)
    collected: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and not gc.isenabled():  # paused: only the loop's own collections run
            collected.append(info["collected"])

    write_list(site4, "big", 30)
    gc.callbacks.append(seen)
    try:
        summary = _send(site4, env)
    finally:
        gc.callbacks.remove(seen)
    assert summary.finished and summary.requests == 10
    assert len(collected) == 5  # every second request
    assert sum(collected) > 0  # and there was something to free
