"""`newsletter serve` as a real process: refuses to start without its keys, serves, logs no addresses,
and shares the send log with a concurrent writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from loop_support import SECRET, Signer, body_of, event, free_port, request
from storekit import count, seed_send, site_store

from pipeline import tokens


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def keys(signer: Signer) -> dict[str, str]:
    return {"NEWSLETTER_SECRET": SECRET.decode(), "SENDGRID_WEBHOOK_PUBLIC_KEY": signer.public_base64}


def test_refuses_to_start_without_the_secret(site: Path, signer: Signer) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_SECRET"}
    result = subprocess.run([sys.executable, "-m", "pipeline", "serve", "--port", str(free_port())], cwd=site,
                            env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "NEWSLETTER_SECRET is not set" in result.stderr and "Traceback" not in result.stderr


def test_refuses_to_start_without_the_webhook_key(site: Path) -> None:
    result = run_cli(site, "serve", "--port", str(free_port()),
                     env={"NEWSLETTER_SECRET": SECRET.decode(), "SENDGRID_WEBHOOK_PUBLIC_KEY": ""})
    assert result.returncode == 2 and "--no-webhook" in result.stderr
    result = run_cli(site, "serve", "--port", str(free_port()),
                     env={"NEWSLETTER_SECRET": SECRET.decode(), "SENDGRID_WEBHOOK_PUBLIC_KEY": "bm90IGEga2V5"})
    assert result.returncode == 2 and "not a base64 public key" in result.stderr


@pytest.fixture
def serving(site: Path, signer: Signer, store_env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[str], int]]:
    """`serve` on the test's engine, issue 001-hello sent to list `sample`."""
    store = site_store(site, store_env)
    send_id = seed_send(store)
    store.close()
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--port", str(port)], cwd=site,
                               env={**os.environ, "PYTHONPATH": str(REPO), **keys(signer), **store_env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # wait until it answers (bounded; no timing is asserted)
            if process.poll() is not None:
                raise AssertionError(f"serve ended: {process.communicate()}")
            try:
                if request("GET", f"{url}/healthz")[0] == 200:
                    break
            except OSError:
                threading.Event().wait(0.05)
        yield url, process, send_id
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)


def test_serves_and_never_logs_the_token_or_address(serving: tuple[str, subprocess.Popen[str], int],
                                                   signer: Signer, site: Path, store_env: dict[str, str]) -> None:
    url, process, send_id = serving
    token = tokens.sign(SECRET, email="ada@example.org", list_name="sample", issue="001-hello")
    assert request("GET", f"{url}/unsubscribe/{token}")[0] == 200
    status, _, _ = request("POST", f"{url}/unsubscribe/{token}", data=b"List-Unsubscribe=One-Click",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    body = body_of([event("bounce", "grace@example.org", send_id=str(send_id), type="bounce")])
    status, _, answer = request("POST", f"{url}/webhooks/sendgrid", data=body, headers=signer.headers(body))
    assert status == 200 and json.loads(answer)["applied"] == 1
    assert request("GET", f"{url}/archive/001-hello/")[0] == 200
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert "/unsubscribe/[token] 200" in err and "POST /webhooks/sendgrid 200" in err
    for secret in (token, token.split(".")[0], "ada@example.org", "grace@example.org", SECRET.decode()):
        assert secret not in out + err
    store = site_store(site, store_env)
    assert {s.email: s.reason for s in store.list_suppressions()} == {"ada@example.org": "unsubscribed",
                                                                      "grace@example.org": "bounced"}
    store.close()


def test_webhook_waits_for_a_concurrent_send_instead_of_failing(serving: tuple[str, subprocess.Popen[str], int],
                                                                signer: Signer, site: Path,
                                                                store_env: dict[str, str]) -> None:
    """A `send` holding a write lock (a batch being claimed) makes the webhook wait, not fail: SQLite's one
    write lock, or on PostgreSQL a lock on the events table that every insert into it waits for."""
    url, _, send_id = serving
    store = site_store(site, store_env)
    body = body_of([event("delivered", send_id=str(send_id))])
    answers: list[int] = []

    def post_while_locked() -> threading.Thread:
        poster = threading.Thread(target=lambda: answers.append(
            request("POST", f"{url}/webhooks/sendgrid", data=body, headers=signer.headers(body))[0]))
        poster.start()
        poster.join(0.5)  # give it the chance to hit the lock; the outcome must not depend on it
        assert answers == []  # whenever it got there, it cannot have been answered while we hold the lock
        return poster

    try:
        if store.engine == "sqlite":
            with store.transaction() as conn:  # type: ignore[attr-defined]
                conn.execute("UPDATE sends SET finished_at = finished_at")  # the write lock is ours now
                poster = post_while_locked()
        else:
            with store._tx() as conn:  # type: ignore[attr-defined]
                conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
                poster = post_while_locked()
        poster.join()
        assert answers == [200]
        assert count(store, "SELECT count(*) FROM events WHERE event = 'delivered'") == 1
    finally:
        store.close()
