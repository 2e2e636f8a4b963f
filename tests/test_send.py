"""The sending manager against the real stand-in and a real send log: exactly once, resumable, and
every bad input stops before the first request."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import IssueError, SendError, SubscriberError
from pipeline.send.job import SendJob
from pipeline.send.plan import SendOptions
from pipeline.send.transport import Outcome, Result
from tests.sendkit import ISSUE, KEY, SECRET, Quiet, Sleeps, environ, send, write_list
from tests.standin import StandIn
from tests.storekit import count, migrate, select, site_store


def _counts(site: Path, env: dict[str, str], list_name: str = "sample") -> dict[str, int]:
    store = site_store(site, env)
    try:
        found = store.find_send(issue="001-hello", list_name=list_name, transport="sendgrid")
        assert found is not None
        return store.counts(found.id)
    finally:
        store.close()


def test_every_recipient_exactly_once(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    addresses = write_list(site, "big", 41)
    summary = send(site, env, list_name="big")
    assert summary.accepted == 41 and summary.finished
    assert standin.recipients() == dict.fromkeys(addresses, 1)
    assert standin.request_count == 21  # batch_size 2
    again = send(site, env, list_name="big")
    assert again.accepted == 0 and standin.request_count == 21
    assert _counts(site, env, "big")["accepted"] == 41


def test_retries_429_and_5xx_honouring_retry_after(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    addresses = write_list(site, "big", 6)
    standin.retry_after = 2
    standin.script(["429", "500", "ok", "503", "ok"])
    sleeps = Sleeps()
    summary = send(site, env, list_name="big", sleep=sleeps)
    assert summary.finished and standin.recipients() == dict.fromkeys(addresses, 1)
    assert any(2 <= s <= 2.25 for s in sleeps)  # Retry-After: 2 was honoured


def test_a_reader_who_unsubscribes_while_a_request_waits_is_not_in_its_retry(site: Path, standin: StandIn,
                                                                              env: dict[str, str]) -> None:
    """The first request is answered 429; while the send waits, `serve` (its own connection to the store)
    records an unsubscribe of one of that request's two readers. The retry goes to the other one only."""
    addresses = write_list(site, "big", 4)

    class UnsubscribeWhileWaiting(Sleeps):
        def __call__(self, seconds: float) -> None:
            if not self:
                other = site_store(site, env)
                try:
                    other.add_suppression(addresses[1], reason="unsubscribed", source="link")
                finally:
                    other.close()
            super().__call__(seconds)

    standin.retry_after = 1
    standin.script(["429"])
    summary = send(site, env, list_name="big", sleep=UnsubscribeWhileWaiting())
    assert summary.finished and summary.accepted == 3
    assert standin.recipients() == {addresses[0]: 1, addresses[2]: 1, addresses[3]: 1}
    counts = _counts(site, env, "big")
    assert (counts["accepted"], counts["suppressed"]) == (3, 1)


def test_retry_budget_spent_leaves_send_resumable(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    addresses = write_list(site, "big", 5)
    standin.always = "503"
    with pytest.raises(SendError, match="gave up after .*retry_budget_seconds.*run the same command again"):
        send(site, env, list_name="big")  # the fake sleep adds nothing: the budget (5 s) is spent by backoff
    assert standin.recipients() == {}
    counts = _counts(site, env, "big")
    # the batches in flight when the budget ran out (up to sending.concurrency of them) failed, the rest waits
    assert counts["accepted"] == 0 and counts["failed"] >= 2 and counts["failed"] + counts["pending"] == 5
    standin.always = None
    assert send(site, env, list_name="big").finished
    assert standin.recipients() == dict.fromkeys(addresses, 1)


@pytest.mark.parametrize(("fault", "words"), [("400", "SendGrid refused the send \\(400\\)"),
                                               ("403", "verify the sender identity"),
                                               ("413", "lower sending.batch_size")])
def test_fatal_answer_stops_at_once(site: Path, standin: StandIn, env: dict[str, str], fault: str,
                                    words: str) -> None:
    write_list(site, "big", 6)
    standin.script(["ok", fault])
    with pytest.raises(SendError, match=words):
        send(site, env, list_name="big")
    assert standin.request_count == 2  # nothing after the fatal answer
    counts = _counts(site, env, "big")
    assert (counts["accepted"], counts["failed"], counts["pending"]) == (2, 2, 2)


def test_bad_key_gives_401_without_the_key(site: Path, standin: StandIn) -> None:
    write_list(site, "big", 4)
    wrong = "SG.this-wrong-key-stays-hidden"
    with pytest.raises(SendError) as info:
        send(site, environ(standin.url, SENDGRID_API_KEY=wrong), list_name="big")
    assert "401" in str(info.value) and "SENDGRID_API_KEY" in str(info.value)
    assert wrong not in str(info.value)
    assert standin.control_requests == [("POST", "/v3/mail/batch")] and standin.request_count == 0  # the batch id
    data = load_config(site).sendlog_path.read_bytes()
    assert wrong.encode() not in data and SECRET.encode() not in data


def test_in_doubt_is_not_resent_without_the_flag(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    addresses = write_list(site, "big", 6)
    standin.script(["ok", "drop_after", "drop_before"])
    first = send(site, env, list_name="big")
    assert (first.accepted, first.in_doubt, first.finished) == (2, 4, False)
    assert standin.recipients() == dict.fromkeys(addresses[:4], 1)  # the drop_after batch did go out
    second = send(site, env, list_name="big")
    assert second.accepted == 0 and standin.request_count == 3
    third = send(site, env, list_name="big", resend_in_doubt=True)
    assert third.accepted == 4 and third.finished
    counts = standin.recipients()
    assert counts == {**dict.fromkeys(addresses, 1), addresses[2]: 2, addresses[3]: 2}  # documented: in doubt


@pytest.mark.parametrize("gateway", ["502", "504"])
def test_a_gateway_error_is_in_doubt_never_retried(site: Path, standin: StandIn, env: dict[str, str],
                                                   gateway: str) -> None:
    """A proxy's 502/504 may come after SendGrid sent the mail (the stand-in records it): a retry would be a
    second copy, so those recipients are in doubt, and a plain re-run sends only the rest."""
    addresses = write_list(site, "big", 6)
    standin.script(["ok", gateway])
    first = send(site, env, list_name="big")
    assert (first.accepted, first.in_doubt) == (4, 2) and not first.finished
    assert standin.recipients() == dict.fromkeys(addresses, 1)  # the batch behind the gateway went out, once
    assert standin.request_count == 3  # no retry of it
    again = send(site, env, list_name="big")
    assert again.accepted == 0 and standin.request_count == 3
    assert max(standin.recipients().values()) == 1


def test_killed_process_leaves_in_flight_in_doubt(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    write_list(site, "big", 4)
    config = load_config(site)
    job = SendJob(site / ISSUE, config, SendOptions(list_name="big"), environ=env, sleep=Sleeps())
    job.prepare()
    assert job.store is not None and job.send is not None
    job.store.claim_batch(job.send.id, size=2, request_id="died")  # intent, then the process "dies"
    job.close()
    summary = send(site, env, list_name="big")
    assert summary.accepted == 2 and not summary.finished
    assert _counts(site, env, "big")["in_doubt"] == 2


def test_suppressed_never_mailed_even_when_added_mid_send(site: Path, standin: StandIn,
                                                           env: dict[str, str]) -> None:
    addresses = write_list(site, "big", 6)
    conn = site_store(site, env)
    conn.add_suppression(addresses[0].upper(), reason="unsubscribed", source="test")

    class SuppressLater:
        kind = "sendgrid"

        def __init__(self, inner: object) -> None:
            self.inner = inner

        def send(self, batch: object) -> Result:  # as the webhook would, from another connection
            other = site_store(site, env)
            other.add_suppression(addresses[5], reason="bounced", source="webhook")
            other.close()
            return self.inner.send(batch)  # type: ignore[attr-defined,no-any-return]

    from pipeline.send.transport import SendGridTransport

    def make(p: object) -> SuppressLater:
        return SuppressLater(SendGridTransport(p, api_key=KEY, host=standin.url, timeout=5))  # type: ignore[arg-type]

    with SendJob(site / ISSUE, load_config(site), SendOptions(list_name="big"), environ=env, sleep=Sleeps(),
                 transport=make) as job:  # type: ignore[arg-type]
        plan = job.prepare()
        assert plan.listed == 5
        summary = job.run(Quiet())
    assert summary.finished
    assert set(standin.recipients()) == set(addresses[1:5])
    counts = _counts(site, env, "big")
    assert counts["suppressed"] == 1 and counts["accepted"] == 4


def test_list_changes_between_runs(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    write_list(site, "big", 4)
    standin.script(["ok", "400"])
    with pytest.raises(SendError):
        send(site, env, list_name="big")
    write_list(site, "big", 4, start=2)  # 0 and 1 (sent) stay sent; 2, 3 (failed) stay; 4, 5 are new
    summary = send(site, env, list_name="big")
    assert summary.finished and summary.accepted == 4
    assert standin.recipients() == {f"person{i:05d}@example.org": 1 for i in range(6)}
    write_list(site, "big", 1, start=9)
    with SendJob(site / ISSUE, load_config(site), SendOptions(list_name="big"), environ=env) as job:
        plan = job.prepare()
    assert plan.to_send == 1 and plan.accepted == 6


def test_removed_rows_are_not_sent(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    write_list(site, "big", 4)
    standin.script(["ok", "400"])
    with pytest.raises(SendError):
        send(site, env, list_name="big")
    write_list(site, "big", 3)  # person00003 left the list before the re-run
    assert send(site, env, list_name="big").finished
    assert "person00003@example.org" not in standin.recipients()
    assert _counts(site, env, "big")["removed"] == 1


def test_changed_content_refused_unless_allowed(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    write_list(site, "big", 4)
    standin.script(["ok", "400"])
    with pytest.raises(SendError):
        send(site, env, list_name="big")
    standin.clear()
    article = site / ISSUE / "articles" / "hello.md"
    article.write_text(article.read_text("utf-8") + "\nA late correction.\n", "utf-8")
    with pytest.raises(SendError, match="changed since its send.*--allow-changed-content"):
        send(site, env, list_name="big")
    assert standin.request_count == 0
    assert send(site, env, list_name="big", allow_changed_content=True).finished


def test_lock_held_refuses_naming_the_pid(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    import os

    write_list(site, "big", 2)
    store = site_store(site, env)  # the engine's own lock: a file lock, or PostgreSQL's advisory lock
    with store.lock(issue="001-hello", list_name="big"), pytest.raises(SendError, match=f"pid {os.getpid()}"):
        send(site, env, list_name="big")
    store.close()
    assert standin.request_count == 0


@pytest.mark.parametrize(("overrides", "error", "words"), [
    ({"SENDGRID_API_KEY": ""}, SendError, "SENDGRID_API_KEY is not set.*--outbox DIR"),
    ({"NEWSLETTER_SECRET": ""}, SendError, "NEWSLETTER_SECRET is not set"),
    ({"NEWSLETTER_SECRET": "short"}, SendError, "too short"),
    ({"SENDGRID_API_HOST": "api.sendgrid.com/v3"}, SendError, "SENDGRID_API_HOST is .*not a base URL"),
])
def test_missing_secrets_zero_requests(site: Path, standin: StandIn, overrides: dict[str, str],
                                       error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        send(site, environ(standin.url, **overrides))
    assert standin.request_count == 0
    assert not load_config(site).sendlog_path.exists()


@pytest.mark.parametrize(("at", "words"), [("2020-01-01T00:00:00+00:00", "already too late"),
                                            ("2999-01-01T00:00:00+00:00", "more than 72 hours"),
                                            ("2026-05-01T10:00", "no UTC offset")])
def test_bad_schedule_zero_requests(site: Path, standin: StandIn, env: dict[str, str], at: str, words: str) -> None:
    with pytest.raises(SendError, match=words):
        send(site, env, at=at)
    assert standin.request_count == 0


def test_schedule_sets_send_at(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    import datetime as dt

    when = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).replace(microsecond=0)
    assert send(site, env, at=when.isoformat()).finished
    assert standin.accepted[0].body is not None and standin.accepted[0].body["send_at"] == int(when.timestamp())


def test_bad_list_stops_before_anything(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    write_list(site, "big", 4, extra="not-an-address,Nobody,Nowhere\n")
    with pytest.raises(SubscriberError, match="1 bad row.*--skip-invalid") as info:
        send(site, env, list_name="big")
    assert info.value.problems and info.value.problems[0].line == 6
    assert standin.request_count == 0
    conn = site_store(site, env)
    assert count(conn, "SELECT count(*) FROM deliveries") == 0
    assert count(conn, "SELECT count(*) FROM sends") == 0
    summary = send(site, env, list_name="big", skip_invalid=True)
    assert summary.finished and summary.accepted == 4


def test_missing_list_and_bad_issue(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    with pytest.raises(SubscriberError):
        send(site, env, list_name="nope")
    (site / ISSUE / "issue.yaml").write_text("number: one\n", "utf-8")
    with pytest.raises(IssueError):
        send(site, env)
    assert standin.request_count == 0


def test_oversized_substitutions_refused(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    (site / "subscribers" / "huge.csv").write_text(f"email,name\na@example.org,{'x' * 10_500}\n", "utf-8")
    with pytest.raises(SubscriberError, match="bad row") as info:
        send(site, env, list_name="huge")
    assert "10000 bytes of substitutions" in str(info.value)
    assert standin.request_count == 0


def test_a_stop_during_the_pause_before_a_request_sends_nothing_more(site: Path, standin: StandIn,
                                                                    env: dict[str, str]) -> None:
    """Ctrl-C (here: request_stop) arriving while the loop waits out the requests-per-second pause: the
    request it was pausing for is not made, and what was sent is counted."""
    write_list(site, "big", 6)

    class StopInPause(Sleeps):
        job: SendJob | None = None

        def __call__(self, seconds: float) -> None:
            super().__call__(seconds)
            if standin.request_count == 1 and self.job is not None:
                self.job.request_stop("Ctrl-C")

    sleeps = StopInPause()
    with SendJob(site / ISSUE, load_config(site), SendOptions(list_name="big"), environ=env, sleep=sleeps,
                 clock=sleeps.clock) as job:
        sleeps.job = job
        job.prepare()
        with pytest.raises(KeyboardInterrupt):
            job.run(Quiet())
    assert standin.request_count == 1  # 2 of the 6 accepted; the pause before the second request ended it
    store = site_store(site, env)
    try:
        assert dict(select(store, "SELECT state, count(*) FROM delivery_log GROUP BY state")) == \
            {"accepted": 2, "pending": 4}
    finally:
        store.close()


def test_test_copy_is_not_a_delivery(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    summary = send(site, env, test_address="me@example.net")
    assert summary.accepted == 1 and standin.request_count == 1
    body = standin.accepted[0].body
    assert body is not None and body["subject"].startswith("[TEST] ")
    assert body["personalizations"][0]["to"][0]["email"] == "me@example.net"
    assert body["personalizations"][0]["substitutions"]["%%name%%"] == "Ada Lovelace"  # first row's values
    conn = site_store(site, env)
    assert count(conn, "SELECT count(*) FROM deliveries") == 0


def test_outbox_is_kept_apart_from_real_sends(site: Path, tmp_path: Path, store_env: dict[str, str]) -> None:
    env = environ(None, SENDGRID_API_KEY="", NEWSLETTER_SECRET="", **store_env)
    migrate(env)
    out = tmp_path / "outbox"
    summary = send(site, env, outbox=out)
    assert summary.finished and len(list(out.glob("*.eml"))) == 3
    assert "throwaway" in (out / "ada@example.org.eml").read_text("utf-8")
    again = send(site, env, outbox=out)  # every outbox run writes everything again
    assert again.accepted == 3
    conn = site_store(site, env)
    kinds = [r[0] for r in select(conn, "SELECT transport FROM sends")]
    assert kinds == ["outbox"]


def test_fake_transport_unit(site: Path, env: dict[str, str]) -> None:
    """The manager's decisions alone, with scripted answers."""
    from fakes import FakeTransport

    write_list(site, "big", 6)
    fake = FakeTransport([Result(outcome=Outcome.RETRY, status=429, retry_after=1.5),
                          Result(outcome=Outcome.ACCEPTED, status=202),
                          Result(outcome=Outcome.IN_DOUBT, status=202)])
    sleeps = Sleeps()
    with SendJob(site / ISSUE, load_config(site), SendOptions(list_name="big"), environ=env, sleep=sleeps,
                 transport=lambda p: fake) as job:
        job.prepare()
        summary = job.run(Quiet())
    assert (summary.accepted, summary.in_doubt, summary.requests) == (4, 2, 4)
    assert len(fake.accepted) == 6 and len(set(fake.accepted)) == 6
    assert any(1.5 <= s <= 1.75 for s in sleeps)


def test_sendlog_has_no_secrets(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    send(site, env)
    state = load_config(site).state_dir
    for path in state.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert KEY.encode() not in data and SECRET.encode() not in data, path
    store = site_store(site, env)
    tables = store.table_counts()
    assert tables["sends"] == 1 and tables["deliveries"] == 3
    for table in tables:
        for _, rows in store.dump(table):
            assert KEY not in repr(rows) and SECRET not in repr(rows), table
    if store.engine == "sqlite":
        assert select(store, "PRAGMA journal_mode") == [("wal",)]
    store.close()


def test_requests_per_second_ceiling(site: Path, env: dict[str, str]) -> None:
    """The pause before each request keeps to sending.requests_per_second (computed, not timed)."""
    from fakes import FakeTransport

    config = site / "newsletter.yaml"
    config.write_text(config.read_text("utf-8").replace("requests_per_second: 1000", "requests_per_second: 2"))
    write_list(site, "big", 6)
    sleeps = Sleeps()  # records the pauses; the clock does not move, so each is the full 1/rps
    with SendJob(site / ISSUE, load_config(site), SendOptions(list_name="big"), environ=env, sleep=sleeps,
                 transport=lambda p: FakeTransport()) as job:
        job.prepare()
        assert job.run(Quiet()).requests == 3
    assert len(sleeps) == 2 and all(0.45 <= s <= 0.5 for s in sleeps)


def test_duplicates_are_listed_and_mailed_once(site: Path, standin: StandIn, env: dict[str, str],
                                               caplog: pytest.LogCaptureFixture) -> None:
    addresses = write_list(site, "big", 5, extra="PERSON00001@example.org,Again,X\nperson00003@example.org,,\n")
    with caplog.at_level("INFO", logger="pipeline.send.job"), \
            SendJob(site / ISSUE, load_config(site), SendOptions(list_name="big"), environ=env,
                    sleep=Sleeps()) as job:
        assert job.prepare().listed == 5
        assert job.run(Quiet()).accepted == 5
    assert standin.recipients() == dict.fromkeys(addresses, 1)
    assert "5 recipients (0 invalid, 2 duplicates, 0 suppressed skipped)" in caplog.text


def test_what_remains_of_a_new_send_is_what_the_log_says(site: Path, env: dict[str, str]) -> None:
    """A new send does not count its rows at the end: the summary must still match the send log."""
    from fakes import FakeTransport

    write_list(site, "big", 7)
    config = load_config(site)
    conn = site_store(site, env)
    conn.add_suppression("person00006@example.org", reason="unsubscribed", source="test")
    fake = FakeTransport([Result(outcome=Outcome.ACCEPTED, status=202), Result(outcome=Outcome.IN_DOUBT)])
    with SendJob(site / ISSUE, config, SendOptions(list_name="big"), environ=env, sleep=Sleeps(),
                 transport=lambda p: fake) as job:
        job.prepare()
        summary = job.run(Quiet())
    counts = _counts(site, env, "big")
    assert summary.remaining == {k: counts[k] for k in ("pending", "failed", "in_doubt")} == \
        {"pending": 0, "failed": 0, "in_doubt": 2}
    assert not summary.finished and counts["accepted"] == 4


def test_garbage_collection_is_back_after_a_send(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    import gc

    write_list(site, "big", 3, extra="not-an-address,Nobody,Nowhere\n")
    with pytest.raises(SubscriberError):
        send(site, env, list_name="big")
    assert gc.isenabled()
    assert send(site, env, list_name="big", skip_invalid=True).finished
    assert gc.isenabled()
