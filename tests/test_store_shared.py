"""Two working copies of one newsletter (two `site` folders, as on two machines) sharing one PostgreSQL
database: one send of an issue to a list at a time across them, a send that died in one finished from the
other, `serve` in one recording an unsubscribe that a send in the other honours, and the database going
away mid-send. Real processes, the real stand-in, real kill -9; PostgreSQL only (skipped without a server).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline import tokens
from tests.conftest import FIXTURES, PG_URL_ENV
from tests.loop_support import free_port, request
from tests.sendkit import ISSUE, KEY, SECRET, cli, environ, write_list
from tests.standin import StandIn
from tests.storekit import migrate, select, site_store


@pytest.fixture
def shared_url() -> Iterator[str]:
    base = os.environ.get(PG_URL_ENV)
    if not base:
        pytest.skip(f"no PostgreSQL for the tests: set {PG_URL_ENV}")
    from tests.pg_support import fresh_database

    with fresh_database(base) as url:
        yield url


@pytest.fixture
def copies(tmp_path: Path) -> tuple[Path, Path]:
    """Two working copies of the same newsletter, with the same 12-address list `big`."""
    found = []
    for name in ("laptop", "ci"):
        root = tmp_path / name
        shutil.copytree(FIXTURES / "site", root)
        config = root / "newsletter.yaml"
        config.write_text(config.read_text("utf-8").replace("timeout_seconds: 5", "timeout_seconds: 60"), "utf-8")
        write_list(root, "big", 12)
        found.append(root)
    return found[0], found[1]


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(api_key=KEY, retry_after=0, slow_seconds=120) as sg:
        yield sg


@pytest.fixture
def env(standin: StandIn, shared_url: str) -> dict[str, str]:
    env = environ(standin.url, NEWSLETTER_DATABASE_URL=shared_url)
    migrate(env)
    return env


ADDRESSES = [f"person{i:05d}@example.org" for i in range(12)]


def _wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str] | None = None) -> None:
    """Until a state is reached (bounded; no assertion depends on how long it took)."""
    deadline = time.monotonic() + 120
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended while waiting for {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def _start_send(site: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "send", ISSUE, "--list", "big", "--yes"], cwd=site,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _cut_the_lock(shared_url: str, sender: subprocess.Popen[str]) -> None:
    """End the session that holds the send's advisory lock (pg_terminate_backend), as a cut network would."""
    import psycopg

    with psycopg.connect(shared_url, autocommit=True) as admin:
        holders = admin.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
                                "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchall()
        assert len(holders) == 1
        admin.execute("SELECT pg_terminate_backend(%s)", holders[0])
        _wait_for(lambda: admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", holders[0]).fetchone()
                  is None, "the lock's session to end", sender)


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_the_same_issue_from_two_copies_at_once_one_refuses(copies: tuple[Path, Path], standin: StandIn,
                                                            env: dict[str, str]) -> None:
    laptop, ci = copies
    standin.script(["slow"])  # the laptop's first request stays out
    first = _start_send(laptop, env)
    _wait_for(lambda: len(standin.accepted) == 1, "the laptop's first request", first)
    second = cli(ci, "send", ISSUE, "--list", "big", "--yes", env=env)
    assert second.returncode == 5, second.stderr
    assert f"pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr
    assert "Traceback" not in second.stderr and standin.request_count == 1
    _kill(first)


def test_a_send_killed_in_one_copy_is_finished_from_the_other(copies: tuple[Path, Path], standin: StandIn,
                                                              env: dict[str, str]) -> None:
    laptop, ci = copies
    standin.script(["ok", "slow"])
    first = _start_send(laptop, env)
    _wait_for(lambda: len(standin.accepted) == 2, "the laptop's slow request", first)
    _kill(first)  # mid-request: the mail of the slow request went out, its answer never came back
    in_doubt = [p["to"][0]["email"] for p in standin.accepted[1].body["personalizations"]]  # type: ignore[index]
    done = cli(ci, "send", ISSUE, "--list", "big", "--yes", env=env)
    assert done.returncode == 5 and f"{len(in_doubt)} recipient(s) are in doubt" in done.stderr, done.stderr
    assert standin.recipients() == dict.fromkeys(ADDRESSES, 1)  # everyone once: nobody twice
    status = cli(ci, "status", ISSUE, env=env)
    assert status.returncode == 0 and all(a in status.stdout for a in in_doubt), status.stdout


def test_serve_in_one_copy_unsubscribes_during_a_send_from_the_other(copies: tuple[Path, Path],
                                                                     standin: StandIn, env: dict[str, str]) -> None:
    laptop, ci = copies
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--no-webhook", "--port", str(port)],
                             cwd=laptop, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _answers(f"{url}/healthz"), "serve to answer", serve)
        standin.answers_open.clear()  # the send's first request waits while the reader unsubscribes
        sender = _start_send(ci, env)
        _wait_for(lambda: standin.request_count == 1, "the send's first request", sender)
        leaving = ADDRESSES[-1]
        token = tokens.sign(SECRET.encode(), email=leaving, list_name="big", issue="001-hello")
        status, _, _ = request("POST", f"{url}/unsubscribe/{token}", data=b"List-Unsubscribe=One-Click",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200
        standin.answers_open.set()
        out, err = sender.communicate(timeout=120)
        assert sender.returncode == 0, err
    finally:
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=30)
    assert standin.recipients() == dict.fromkeys(ADDRESSES[:-1], 1)  # the one who left was not mailed
    store = site_store(ci, env)
    try:
        assert store.is_suppressed(leaving)
        assert select(store, "SELECT state FROM deliveries WHERE email = ?", (leaving,)) == [("suppressed",)]
    finally:
        store.close()


def test_the_database_going_away_mid_send_stops_it_resumably(copies: tuple[Path, Path], standin: StandIn,
                                                             env: dict[str, str], shared_url: str) -> None:
    """Every connection of the send is cut (pg_terminate_backend, as a restart would) while its request is
    out: the send stops with a clear message, the re-run finishes it, and nobody is mailed twice."""
    import psycopg

    laptop, _ = copies
    standin.answers_open.clear()
    sender = _start_send(laptop, env)
    _wait_for(lambda: standin.request_count == 1, "the send's first request", sender)
    with psycopg.connect(shared_url, autocommit=True) as admin:
        cut = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()
    assert cut is not None and cut[0] >= 1
    standin.answers_open.set()
    out, err = sender.communicate(timeout=120)
    assert sender.returncode != 0 and "Traceback" not in err, err
    assert "database" in err and "run the same command again" in err, err
    again = cli(laptop, "send", ISSUE, "--list", "big", "--yes", env=env)
    assert again.returncode in (0, 5), again.stderr  # 5: the request out when the database went is in doubt
    sent = standin.recipients()
    assert set(sent) == set(ADDRESSES) and max(sent.values()) == 1


def test_a_send_that_lost_its_lock_stops_and_the_rerun_finishes_it(copies: tuple[Path, Path], standin: StandIn,
                                                                   env: dict[str, str], shared_url: str) -> None:
    """Only the send lock's connection is cut (pg_terminate_backend of the session holding the advisory lock)
    while the first request is out: another machine could take the lock now, so the send records that
    request's answer, claims nothing more and stops with exit code 6 and a message saying so; the re-run
    finishes the send, and nobody is mailed twice."""
    laptop, _ = copies  # 12 addresses, 2 a request, 1 request at a time
    standin.answers_open.clear()
    sender = _start_send(laptop, env)
    _wait_for(lambda: standin.request_count == 1, "the send's first request", sender)
    _cut_the_lock(shared_url, sender)
    standin.answers_open.set()
    out, err = sender.communicate(timeout=120)
    assert sender.returncode == 6 and "Traceback" not in err, err
    assert "the send lock on postgresql://" in err and "was lost (its connection ended)" in err, err
    assert "nothing more was sent" in err and "run the same command again to resume" in err, err
    assert standin.request_count == 1 and standin.recipients() == dict.fromkeys(ADDRESSES[:2], 1)
    store = site_store(laptop, env)
    try:  # the request that was out is recorded as answered; the rest is still to send
        assert dict(select(store, "SELECT state, count(*) FROM delivery_log GROUP BY state")) == \
            {"accepted": 2, "pending": 10}
    finally:
        store.close()
    again = cli(laptop, "send", ISSUE, "--list", "big", "--yes", env=env)
    assert again.returncode == 0, again.stderr
    assert standin.recipients() == dict.fromkeys(ADDRESSES, 1)  # everyone once: nobody twice


def test_a_send_that_lost_its_lock_while_a_batch_waits_does_not_retry_it(
        copies: tuple[Path, Path], standin: StandIn, env: dict[str, str], shared_url: str) -> None:
    """The first request is answered 429 (Retry-After 8 s), and while it waits the send lock's connection is
    cut and the other copy takes the send over: its recovery marks the waiting batch failed and sends it.
    When the retry comes due, the first copy must not send it again: it stops (exit code 6)."""
    laptop, ci = copies
    config = laptop / "newsletter.yaml"
    config.write_text(config.read_text("utf-8").replace("retry_budget_seconds: 5", "retry_budget_seconds: 60"),
                      "utf-8")
    standin.retry_after = 8
    standin.script(["429"])
    sender = _start_send(laptop, env)
    store = site_store(laptop, env)
    try:
        _wait_for(lambda: select(store, "SELECT count(*) FROM batches WHERE state = 'waiting'") == [(1,)],
                  "the first batch to wait for its retry", sender)
    finally:
        store.close()
    _cut_the_lock(shared_url, sender)
    other = cli(ci, "send", ISSUE, "--list", "big", "--yes", env=env)
    assert other.returncode == 0, other.stderr
    out, err = sender.communicate(timeout=120)
    assert sender.returncode == 6 and "Traceback" not in err, err
    assert "was lost (its connection ended)" in err, err
    assert standin.recipients() == dict.fromkeys(ADDRESSES, 1)  # the waiting batch went once, from the other copy


def _answers(url: str) -> bool:
    try:
        return request("GET", url)[0] == 200
    except OSError:
        return False
