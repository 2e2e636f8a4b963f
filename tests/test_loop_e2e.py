"""The whole loop with real processes: send through the stand-in, SendGrid's events and a one-click
unsubscribe into `serve`, the report, and a next send that skips everyone who left or bounced."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli
from loop_support import Signer, body_of, free_port, request
from standin import StandIn

pytest.importorskip("pipeline.lists.subscribers", reason="the send stack's subscriber reader has not landed yet")

KEY = "SG.e2e-key"
SECRET = "e2e-secret-of-enough-length"
FIXTURES = Path(__file__).parent / "fixtures"


def events_for(accepted: list[Any], kind: str, **extra: Any) -> list[dict[str, Any]]:
    """What SendGrid would post for every recipient of the accepted requests: custom_args as top-level keys."""
    found = []
    for record in accepted:
        for i, personalization in enumerate(record.body["personalizations"]):
            for to in personalization["to"]:
                found.append({"email": to["email"], "event": kind, "timestamp": 1_768_500_000 + i,
                              "sg_event_id": f"{kind}-{to['email']}",
                              "sg_message_id": f"{record.message_id}.filter0001.{i}.0",
                              **record.body["custom_args"], **extra})
    return found


def test_send_events_unsubscribe_report_and_the_next_send(site: Path, tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "extra-issues" / "002-second", site / "issues" / "002-second")
    signer = Signer()
    env = {"SENDGRID_API_KEY": KEY, "NEWSLETTER_SECRET": SECRET, "SENDGRID_WEBHOOK_PUBLIC_KEY": signer.public_base64}
    with StandIn(api_key=KEY) as sg:
        env["SENDGRID_API_HOST"] = sg.url
        sent = run_cli(site, "send", "issues/001-hello", "--list", "sample", "--yes", env=env)
        assert sent.returncode == 0, sent.stderr
        first = list(sg.accepted)
        port = free_port()
        serve = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--port", str(port)], cwd=site,
                                 env={**os.environ, "PYTHONPATH": str(REPO), **env},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                assert serve.poll() is None, serve.communicate()
                try:
                    if request("GET", f"{url}/healthz")[0] == 200:
                        break
                except OSError:
                    threading.Event().wait(0.05)
            events = events_for(first, "delivered") + events_for(first, "open")
            grace = [e for e in events_for(first, "bounce", type="bounce") if e["email"] == "grace@example.org"]
            body = body_of(events + grace)
            status, _, answer = request("POST", f"{url}/webhooks/sendgrid", data=body, headers=signer.headers(body))
            assert status == 200, answer
            # Ada unsubscribes with her mail client's one-click button: the URL the send put into her mail.
            ada = next(p for r in first for p in r.body["personalizations"] if p["to"][0]["email"] == "ada@example.org")
            link = ada["headers"]["List-Unsubscribe"].split(">")[0].lstrip("<")
            assert link.startswith("https://news.example.org/unsubscribe/")
            local = url + link.removeprefix("https://news.example.org")
            status, _, _ = request("POST", local, data=b"List-Unsubscribe=One-Click",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert status == 200
            assert request("GET", f"{url}/archive/001-hello/")[0] == 200  # sent, so published
            assert request("GET", f"{url}/archive/002-second/")[0] == 404  # not yet
        finally:
            serve.send_signal(signal.SIGINT)
            out, err = serve.communicate(timeout=30)
        assert "ada@example.org" not in out + err

        report = run_cli(site, "report", "issues/001-hello", "--html", str(tmp_path / "r.html"))
        assert report.returncode == 0, report.stderr
        counts = {line[:24].strip(): line[24:].split()[0] for line in report.stdout.splitlines()
                  if line.startswith("  ") and line[24:].strip()}  # the count; its rate follows
        assert counts["Delivered"] == "3" and counts["Bounced"] == "1" and counts["Unsubscribes"] == "1"
        assert counts["Unique opens"] == "3"

        sg.clear()
        again = run_cli(site, "send", "issues/002-second", "--list", "sample", "--yes", env=env)
        assert again.returncode == 0, again.stderr
        assert set(sg.recipients()) == {"alan@example.org"}  # ada left, grace bounced


def test_webhook_posts_while_a_send_runs_both_succeed(site: Path, store_env: dict[str, str]) -> None:
    """A real `send` process writes the store while serve applies events to it (either engine)."""
    from loop_support import running
    from sendkit import write_list
    from storekit import count, site_store

    from pipeline.config import load_config
    from pipeline.web.app import Settings, create_app
    from pipeline.web.webhook import public_key_from_base64

    addresses = write_list(site, "big", 400)  # batch_size 2 in the fixture: 200 requests
    signer = Signer()
    config = load_config(site)
    site_store(site, store_env).close()  # migrated before either opens it
    settings = Settings(config=config, secret=SECRET.encode(), open_store=lambda: site_store(site, store_env),
                        webhook_key=public_key_from_base64(signer.public_base64))
    env = {**os.environ, "PYTHONPATH": str(REPO), "SENDGRID_API_KEY": KEY, "NEWSLETTER_SECRET": SECRET, **store_env}
    answers: list[int] = []
    with StandIn(api_key=KEY) as sg, running(create_app(settings)) as url:
        env["SENDGRID_API_HOST"] = sg.url
        sender = subprocess.Popen([sys.executable, "-m", "pipeline", "send", "issues/001-hello", "--list", "big",
                                   "--yes"], cwd=site, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True)
        posted = 0
        for _ in range(2400):  # bounded; ends as soon as the send has ended and its requests' events are posted
            done = sender.poll() is not None
            accepted = list(sg.accepted)
            if len(accepted) > posted:
                body = body_of(events_for(accepted[posted:], "delivered"))
                answers.append(request("POST", f"{url}/webhooks/sendgrid", data=body, headers=signer.headers(body))[0])
                posted = len(accepted)
            elif done:
                break
            else:
                threading.Event().wait(0.05)
        out, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    assert answers and set(answers) == {200}
    store = site_store(site, store_env)
    try:
        assert count(store, "SELECT count(*) FROM events WHERE status = 'applied'") == len(addresses)
        assert count(store, "SELECT count(*) FROM delivery_log WHERE state = 'accepted'") == len(addresses)
    finally:
        store.close()
