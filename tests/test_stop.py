"""Stopping a send (issue 12): batch ids, cancel / pause / resume of scheduled mail through the stand-in's
scheduled-sends API, a clean stop on Ctrl-C and SIGTERM, and the stop by itself when the webhook's events
show bounces. Real stand-in, real subprocesses where a user runs the command, both store engines."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config
from pipeline.errors import SendError
from pipeline.send.job import SendJob
from pipeline.send.plan import SendOptions
from pipeline.store import Store
from pipeline.web.webhook import process_events
from tests.sendkit import ISSUE, KEY, Quiet, cli, environ, write_list
from tests.standin import StandIn
from tests.storekit import migrate, site_store

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(api_key=KEY, retry_after=0) as sg:
        yield sg


def _at(minutes: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)).isoformat(timespec="seconds")


def _scheduled(site: Path, standin: StandIn, env: dict[str, str], *, minutes: float = 120, count: int = 6) -> str:
    """A send of `count` recipients scheduled `minutes` ahead; returns its batch id (on every request)."""
    write_list(site, "big", count)
    done = cli(site, "send", ISSUE, "--list", "big", "--yes", "--at", _at(minutes), env=env)
    assert done.returncode == 0, done.stderr
    ids = {record.body["batch_id"] for record in standin.accepted if record.body}
    assert len(ids) == 1 and len(standin.accepted) == count // 2  # batch_size 2: one batch id for all
    return ids.pop()


def _status(site: Path, env: dict[str, str]) -> dict[str, Any]:
    done = cli(site, "status", ISSUE, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["lists"]["big"])


# --- the store, both engines ----------------------------------------------------------------------------


def test_store_keeps_batch_id_schedule_and_counts_outcomes(store: Store) -> None:
    earlier = store.create_send(issue="000", list_name="big", transport="sendgrid", content_hash="h", subject="s")
    send = store.create_send(issue="001", list_name="big", transport="sendgrid", content_hash="h", subject="s")
    assert store.previous_send(send) == earlier and store.previous_send(earlier) is None
    store.add_recipients(send.id, [(f"r{i}@example.org", "", None) for i in range(4)])
    assert store.schedule(send.id).batch_id is None
    store.set_batch_id(send.id, "batch-1")
    store.set_schedule_state(send.id, "cancelled")
    schedule = store.schedule(send.id)
    assert (schedule.batch_id, schedule.state) == ("batch-1", "cancelled") and schedule.changed_at
    from pipeline.store import Finish

    # One request each: sent at once, due before the cancel, due less than 10 minutes after it (SendGrid may
    # have sent it), due an hour after it (surely held, so discarded).
    stopped, after = 1_800_000_000, 0
    for i, send_at in enumerate((None, stopped - 100, stopped + 300, stopped + 3600)):
        claim = store.claim_batch(send.id, size=1, after=after, request_id=f"r{i}", send_at=send_at)
        assert claim is not None
        after = claim.last
        store.record([Finish(claim=claim, state="accepted", attempts=1, http_status=202, message_id="m")])
    events = [{"email": f"r{i}@example.org", "event": kind, "timestamp": 1_768_500_000 + i, "sg_event_id": f"{kind}{i}",
               "sg_message_id": "m.x", "nl_send_id": str(send.id), "nl_issue": "001", "nl_list": "big"}
              for i, kind in enumerate(["delivered", "delivered", "bounce", "spamreport"])]
    process_events(store, events)
    counted = store.outcomes(send)
    assert (counted.delivered, counted.bounced, counted.complaints) == (2, 1, 1)
    assert store.outcomes(send, after_event=counted.last_event).delivered == 0  # only what came since
    assert store.held_counts(send.id, stopped_at=stopped, margin=600) == (1, 0, 1)
    store.reopen_cancelled(send.id, stopped_at=stopped, margin=600)
    counts = store.counts(send.id)
    assert (counts["accepted"], counts["in_doubt"], counts["pending"]) == (2, 1, 1)
    assert store.in_doubt_addresses(send.id) == ["r2@example.org"]
    assert store.schedule(send.id).state is None and store.schedule(send.id).batch_id is None


# --- cancel, pause, resume ------------------------------------------------------------------------------


def test_cancelled_scheduled_send_is_not_sent_again(site: Path, standin: StandIn, store_env: dict[str, str]) -> None:
    env = environ(standin.url, **store_env)
    migrate(env)
    batch_id = _scheduled(site, standin, env)
    done = cli(site, "cancel", ISSUE, "--list", "big", env=env)
    assert done.returncode == 0, done.stderr
    assert "cancelled" in done.stdout and "--resend-cancelled" in done.stdout
    assert standin.held() == {batch_id: "cancel"}
    entry = _status(site, env)
    assert entry["schedule_state"] == "cancelled" and entry["batch_id"] == batch_id and entry["schedule_changed_at"]
    text = cli(site, "status", ISSUE, env=env).stdout
    assert f"cancelled on {entry['schedule_changed_at']} (SendGrid batch {batch_id})" in text
    before = standin.request_count
    again = cli(site, "send", ISSUE, "--list", "big", "--yes", "--at", _at(120), env=env)
    assert again.returncode == 5 and "was cancelled" in again.stderr and "--resend-cancelled" in again.stderr
    assert standin.request_count == before  # nothing sent
    assert cli(site, "cancel", ISSUE, "--list", "big", env=env).stdout.count("already cancelled") == 1
    resent = cli(site, "send", ISSUE, "--list", "big", "--yes", "--resend-cancelled", env=env)
    assert resent.returncode == 0, resent.stderr
    assert "6 accepted" in resent.stdout
    new_ids = {r.body["batch_id"] for r in standin.accepted[3:] if r.body}
    assert len(new_ids) == 1 and batch_id not in new_ids  # a new batch, not the cancelled one
    assert _status(site, env)["schedule_state"] is None


def test_paused_then_resumed(site: Path, standin: StandIn, store_env: dict[str, str]) -> None:
    env = environ(standin.url, **store_env)
    migrate(env)
    batch_id = _scheduled(site, standin, env)
    paused = cli(site, "pause", ISSUE, "--list", "big", env=env)
    assert paused.returncode == 0, paused.stderr
    assert standin.held() == {batch_id: "pause"} and _status(site, env)["schedule_state"] == "paused"
    assert "newsletter resume" in paused.stdout
    cancelled = cli(site, "cancel", ISSUE, "--list", "big", env=env)  # a pause becomes a cancel: PATCH
    assert cancelled.returncode == 0 and standin.held() == {batch_id: "cancel"}
    resumed = cli(site, "resume", ISSUE, "--list", "big", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and standin.held() == {}
    assert _status(site, env)["schedule_state"] is None
    assert ("PATCH", f"/v3/user/scheduled_sends/{batch_id}") in standin.control_requests
    assert ("DELETE", f"/v3/user/scheduled_sends/{batch_id}") in standin.control_requests
    nothing = cli(site, "resume", ISSUE, "--list", "big", env=env)
    assert nothing.returncode == 5 and "neither paused nor cancelled" in nothing.stderr


def test_cancel_too_late(site: Path, standin: StandIn) -> None:
    env = environ(standin.url)
    batch_id = _scheduled(site, standin, env, minutes=5)
    done = cli(site, "cancel", ISSUE, "--list", "big", env=env)
    assert done.returncode == 5 and "too late to cancel" in done.stderr and "10 minutes" in done.stderr
    assert "Traceback" not in done.stderr and standin.held() == {}
    assert not any(p.startswith("/v3/user") for _, p in standin.control_requests)  # refused before asking
    # the stand-in refuses as SendGrid does, had we asked
    from pipeline.send.schedule import BatchError, SendGridBatches

    with pytest.raises(BatchError, match="10 minutes"):
        SendGridBatches(api_key=KEY, host=standin.url, timeout=5).hold(batch_id, "cancel", update=False)


def test_cancel_over_sendgrids_limit(site: Path, standin: StandIn) -> None:
    env = environ(standin.url)
    batch_id = _scheduled(site, standin, env)
    for i in range(10):  # ten other sends already paused or cancelled in this account
        standin.batches[f"other{i}"] = {"status": "pause", "send_at": None}
    done = cli(site, "cancel", ISSUE, "--list", "big", env=env)
    assert done.returncode == 5, done.stderr
    assert "at most 10 scheduled sends may be paused or cancelled at once" in done.stderr
    assert "resume one of them" in done.stderr and batch_id not in standin.held()
    assert _status(site, env)["schedule_state"] is None  # nothing recorded


def test_cancel_refuses_a_send_not_scheduled(site: Path, standin: StandIn) -> None:
    env = environ(standin.url)
    write_list(site, "big", 2)
    assert cli(site, "send", ISSUE, "--list", "big", "--yes", env=env).returncode == 0
    done = cli(site, "cancel", ISSUE, "--list", "big", env=env)
    assert done.returncode == 5 and "was not scheduled" in done.stderr
    unknown = cli(site, "pause", ISSUE, "--list", "nosuch", env=env)
    assert unknown.returncode == 5 and "never sent to list nosuch" in unknown.stderr


def test_resend_cancelled_does_not_send_again_what_went_out_unscheduled(site: Path, standin: StandIn,
                                                                       store_env: dict[str, str]) -> None:
    """A send begun without --at (its mail goes out as it is accepted) and resumed with --at: the cancel
    holds back only the scheduled part, so --resend-cancelled must not mail the first part a second time."""
    env = environ(standin.url, **store_env)
    migrate(env)
    addresses = write_list(site, "big", 6)
    standin.script(["ok", "400"])  # batch_size 2: the first request is accepted, the second refused
    first = cli(site, "send", ISSUE, "--list", "big", "--yes", env=env)
    assert first.returncode == 5 and "2 accepted" in first.stderr, first.stderr
    unscheduled = {p["to"][0]["email"] for r in standin.accepted if r.body and "send_at" not in r.body
                   for p in r.body["personalizations"]}
    assert unscheduled == set(addresses[:2])  # delivered now: nothing can hold them back any more
    rest = cli(site, "send", ISSUE, "--list", "big", "--yes", "--at", _at(120), env=env)
    assert rest.returncode == 0, rest.stderr
    done = cli(site, "cancel", ISSUE, "--list", "big", env=env)
    assert done.returncode == 0, done.stderr  # SendGrid discards the 4 scheduled messages
    resent = cli(site, "send", ISSUE, "--list", "big", "--yes", "--resend-cancelled", env=env)
    assert resent.returncode == 0, resent.stderr
    assert standin.recipients() == dict.fromkeys(addresses[:2], 1) | dict.fromkeys(addresses[2:], 2)


def test_a_pause_kept_past_72_hours_is_sent_again_as_the_refusal_to_resume_says(
        site: Path, standin: StandIn, store_env: dict[str, str]) -> None:
    """SendGrid discards paused mail 72 hours after its time. `resume` then refuses and names
    `send --resend-cancelled` as the way forward: that must send the discarded mail again, not find nothing
    to send while the send log counts it as accepted."""
    env = environ(standin.url, **store_env)
    migrate(env)
    _scheduled(site, standin, env)
    assert cli(site, "pause", ISSUE, "--list", "big", env=env).returncode == 0
    store = site_store(site, env)
    try:  # the time comes and goes 73 hours ago while the batch is paused: SendGrid discarded it
        send = store.find_send(issue="001-hello", list_name="big", transport="sendgrid")
        assert send is not None
        long_ago = str(int(time.time()) - 73 * 3600)
        store.update_send(send.id, content_hash=send.content_hash, subject=send.subject, send_at=long_ago)
    finally:
        store.close()
    refused = cli(site, "resume", ISSUE, "--list", "big", env=env)
    assert refused.returncode == 5 and "--resend-cancelled" in refused.stderr, refused.stderr
    status = cli(site, "status", ISSUE, env=env)
    assert "SendGrid discarded the mail it held (paused more than 72 hours past its time)" in status.stdout
    assert "--list big --resend-cancelled` sends it" in status.stdout, status.stdout
    before = len(standin.accepted)
    resent = cli(site, "send", ISSUE, "--list", "big", "--yes", "--resend-cancelled", env=env)
    assert resent.returncode == 0, resent.stderr
    assert len(standin.accepted) - before == 3, resent.stdout  # the 6 recipients again, 2 a request


def test_standin_batch_ids(standin: StandIn) -> None:
    from pipeline.send.schedule import BatchError, SendGridBatches

    client = SendGridBatches(api_key=KEY, host=standin.url, timeout=5)
    batch_id = client.create()
    with pytest.raises(BatchError, match="invalid batch id"):
        client.hold("nosuch", "pause", update=False)
    with pytest.raises(BatchError, match="batch id not found"):
        client.lift(batch_id)  # nothing to lift
    client.hold(batch_id, "pause", update=False)
    with pytest.raises(BatchError, match="already has a status"):
        client.hold(batch_id, "cancel", update=False)
    client.hold(batch_id, "cancel", update=True)
    assert standin.held() == {batch_id: "cancel"}


# --- Ctrl-C and SIGTERM ------------------------------------------------------------------------------------


def _popen_send(site: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "send", ISSUE, "--list", "big", "--yes"], cwd=site,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_requests(standin: StandIn, proc: subprocess.Popen[str], count: int) -> None:
    deadline = time.monotonic() + 60
    while standin.request_count < count:
        assert time.monotonic() < deadline and proc.poll() is None, "the send never got that far"
        time.sleep(0.02)


def test_a_signal_during_the_last_request_says_nothing_is_left(site: Path) -> None:
    addresses = write_list(site, "big", 4)
    with StandIn(api_key=KEY, retry_after=0, slow_seconds=1.5) as standin:
        standin.script(["ok", "slow"])  # the second and last request is answered after 1.5 s
        proc = _popen_send(site, environ(standin.url))
        _wait_for_requests(standin, proc, 2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        assert "4 recipient(s) accepted by SendGrid in this run, 4 of 4 in all. Nothing is left to send" in err
        assert "resume" not in err and standin.recipients() == dict.fromkeys(addresses, 1)


@pytest.mark.parametrize(("signum", "name", "code"), [(signal.SIGINT, "Ctrl-C", 130), (signal.SIGTERM, "SIGTERM", 143)])
def test_signal_lets_the_request_in_flight_finish_then_the_same_command_resumes(
        site: Path, signum: int, name: str, code: int) -> None:
    addresses = write_list(site, "big", 6)
    with StandIn(api_key=KEY, retry_after=0, slow_seconds=1.5) as standin:
        standin.script(["ok", "slow"])  # batch_size 2: the second request is answered after 1.5 s
        env = environ(standin.url)
        proc = _popen_send(site, env)
        _wait_for_requests(standin, proc, 2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert f"stopping ({name}): no new request" in err
        assert f"interrupted ({name}): 4 recipient(s) accepted by SendGrid in this run, 4 of 6 in all" in err
        assert "Run the same command again to resume" in err and "Traceback" not in err
        assert standin.request_count == 2  # nothing claimed after the signal
        again = cli(site, "send", ISSUE, "--list", "big", "--yes", env=env)
        assert again.returncode == 0, again.stderr
        assert "2 accepted in 1 request(s)" in again.stdout
        assert standin.recipients() == dict.fromkeys(addresses, 1)  # everyone once, nobody twice


def test_second_ctrl_c_stops_at_once_and_the_next_run_counts_the_request_in_doubt(site: Path) -> None:
    write_list(site, "big", 6)
    with StandIn(api_key=KEY, retry_after=0, slow_seconds=60) as standin:
        standin.script(["ok", "slow"])
        env = environ(standin.url)
        proc = _popen_send(site, env)
        _wait_for_requests(standin, proc, 2)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while "stopping (Ctrl-C)" not in proc.stderr.readline():
            assert time.monotonic() < deadline and proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "stopped at once (Ctrl-C again)" in err
        again = cli(site, "send", ISSUE, "--list", "big", "--yes", env=env)
    assert again.returncode == 5 and "2 recipient(s) are in doubt" in again.stderr
    assert "2 accepted in 1 request(s)" in again.stdout


# --- stopping by itself -------------------------------------------------------------------------------


class Webhook(Quiet):
    """Between batches (as SendGrid's events arrive during a long send), the webhook processes delivered
    and bounce events for what was accepted so far: one bounce in ten. Another store, as `serve` would be."""

    def __init__(self, standin: StandIn, store: Store, after: int) -> None:
        super().__init__()
        self.standin, self.store, self.after, self.fed = standin, store, after, 0

    def advance(self, sent: int) -> None:
        super().advance(sent)
        if self.sent < self.after or self.fed:
            return
        events = []
        for record in list(self.standin.accepted):
            assert record.body is not None
            for i, person in enumerate(record.body["personalizations"]):
                email = person["to"][0]["email"]
                kind = "bounce" if int(email[6:11]) % 10 == 0 else "delivered"
                events.append({"email": email, "event": kind, "timestamp": 1_768_500_000, "sg_event_id": email,
                               "sg_message_id": f"{record.message_id}.filter0001.{i}.0",
                               **record.body["custom_args"]})
        process_events(self.store, events)
        self.fed = len(events)


def test_ten_percent_bounces_stop_a_long_send_resumably(site: Path, standin: StandIn,
                                                          store_env: dict[str, str]) -> None:
    config_file = site / "newsletter.yaml"
    config_file.write_text(config_file.read_text().replace("batch_size: 2", "batch_size: 100"))
    write_list(site, "big", 4000)
    env = environ(standin.url, **store_env)
    serve_store = site_store(site, env)
    try:
        with SendJob(site / ISSUE, load_config(site), SendOptions(list_name="big"), environ=env) as job:
            job.prepare()
            webhook = Webhook(standin, serve_store, after=1200)
            with pytest.raises(SendError) as info:
                job.run(webhook)
    finally:
        serve_store.close()
    message = str(info.value)
    assert "stopped by itself" in message and "bounce rate 10.0% (limit 5.0%)" in message
    assert "1200 reported deliveries (120 bounced" in message and "run the same command again" in message
    assert "sending.stop_when" in message
    sent = sum(standin.recipients().values())
    assert webhook.fed == 1200 and 1200 < sent <= 2300 < 4000  # stopped at the next check, 1,000 claims on
    # resumably: with the limit raised, the same send goes on with the rest, nobody twice
    config = config_file.read_text()
    config_file.write_text(config + "  stop_when: {bounce_rate: 0.2}\n")
    done = cli(site, "send", ISSUE, "--list", "big", "--yes", env=env)
    config_file.write_text(config)
    assert done.returncode == 0, done.stderr
    assert f"{4000 - sent} accepted" in done.stdout
    assert len(standin.recipients()) == 4000 and set(standin.recipients().values()) == {1}
    # the next send to this list is warned before it starts
    shutil.copytree(FIXTURES / "extra-issues" / "002-second", site / "issues" / "002-second")
    warned = cli(site, "send", "issues/002-second", "--list", "big", "--yes", env=env)
    assert warned.returncode == 0, warned.stderr
    assert "the last send to list big (issue 001-hello) had bounce rate 10.0% (limit 5.0%)" in warned.stderr
