"""The SendGrid stand-in, driven by the real `sendgrid` client, as the send stack will drive it."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mailsend_rules import MAX_BODY_BYTES  # pytest puts tests/ on sys.path
from python_http_client import exceptions as http_errors
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Asm, Category, CustomArg, Mail
from standin import StandIn

KEY = "SG.test"


def mail(*emails: str, **extra: Any) -> dict[str, Any]:
    """A minimal valid request body with one personalization per address."""
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": e, "name": "Reader"}]} for e in emails or ("ada@example.org",)],
        "from": {"email": "news@example.org", "name": "News"},
        "subject": "Issue 1",
        "content": [{"type": "text/plain", "value": "Hello"}, {"type": "text/html", "value": "<p>Hello</p>"}],
    }
    body.update(extra)
    return body


@pytest.fixture
def sg() -> Iterator[StandIn]:
    with StandIn(api_key=KEY, slow_seconds=1.0) as standin:
        yield standin


@pytest.fixture
def client(sg: StandIn) -> SendGridAPIClient:
    return SendGridAPIClient(KEY, host=sg.url)


def send(client: SendGridAPIClient, body: dict[str, Any], timeout: float = 5) -> Any:
    return client.client.mail.send.post(request_body=body, timeout=timeout)


def errors_of(exc: pytest.ExceptionInfo[http_errors.HTTPError]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = json.loads(exc.value.body)["errors"]
    return errors


# --- accepted requests ------------------------------------------------------------------------------


def test_valid_request_is_accepted_and_recorded(sg: StandIn, client: SendGridAPIClient) -> None:
    body = mail("ada@example.org", "grace@example.org")
    body["personalizations"][0]["cc"] = [{"email": "alan@example.org"}]
    first = send(client, body)
    second = send(client, mail("ada@example.org"))
    assert first.status_code == 202 and first.body == b""
    assert first.headers["X-Message-Id"] != second.headers["X-Message-Id"]
    assert sg.accepted[0].message_id == first.headers["X-Message-Id"]
    assert sg.accepted[0].body == body and sg.accepted[0].recipients == 3
    assert sg.recipients() == {"ada@example.org": 2, "grace@example.org": 1, "alan@example.org": 1}
    assert sg.request_count == 2 and sg.statuses == [202, 202]


def test_the_sendgrid_mail_helper_output_passes_the_schema(sg: StandIn, client: SendGridAPIClient) -> None:
    message = Mail(from_email="news@example.org", to_emails=["ada@example.org", "grace@example.org"],
                   subject="Issue 1", plain_text_content="Hello", html_content="<p>Hello</p>",
                   is_multiple=True)
    message.custom_arg = CustomArg("issue", "001")
    message.category = Category("newsletter")
    message.asm = Asm(42)
    assert send(client, message.get()).status_code == 202
    assert sg.recipients() == {"ada@example.org": 1, "grace@example.org": 1}


def test_gzip_body_is_accepted(sg: StandIn) -> None:
    request = urllib.request.Request(
        f"{sg.url}/v3/mail/send", data=gzip.compress(json.dumps(mail()).encode()), method="POST",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", "Content-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202
    assert sg.recipients() == {"ada@example.org": 1}


# --- refused requests -------------------------------------------------------------------------------


def test_wrong_key_is_refused_with_401(sg: StandIn) -> None:
    with pytest.raises(http_errors.UnauthorizedError) as exc:
        send(SendGridAPIClient("SG.wrong", host=sg.url), mail())
    assert errors_of(exc)[0]["field"] is None and errors_of(exc)[0]["message"]
    assert sg.accepted == [] and sg.request_count == 1


def test_bad_json_is_refused_with_400(sg: StandIn) -> None:
    request = urllib.request.Request(f"{sg.url}/v3/mail/send", data=b"{not json", method="POST",
                                     headers={"Authorization": f"Bearer {KEY}"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request, timeout=5)
    assert exc.value.code == 400
    assert "not valid JSON" in json.loads(exc.value.read())["errors"][0]["message"]


def _many_recipients(body: dict[str, Any]) -> None:
    body["personalizations"] = [{"to": [{"email": f"r{i}-{j}@example.org"} for j in range(500)]} for i in range(3)]


def _html_first(body: dict[str, Any]) -> None:
    body["content"].reverse()


def _duplicate_in_cc(body: dict[str, Any]) -> None:
    body["personalizations"][0]["cc"] = [{"email": "ADA@example.org"}]


def _both_reply_tos(body: dict[str, Any]) -> None:
    body["reply_to"] = {"email": "r@example.org"}
    body["reply_to_list"] = [{"email": "s@example.org"}]


Mutation = Callable[[dict[str, Any]], None]
REFUSALS: list[tuple[str, Mutation, str]] = [
    ("1001 personalizations", lambda b: b.update(personalizations=[{"to": [{"email": f"r{i}@example.org"}]}
                                                                   for i in range(1001)]), "personalizations"),
    ("1500 recipients in 3 personalizations", _many_recipients, "personalizations"),
    ("11 categories", lambda b: b.update(categories=[f"c{i}" for i in range(11)]), "categories"),
    ("category of 256 chars", lambda b: b.update(categories=["x" * 256]), "categories.0"),
    ("custom_args value not a string", lambda b: b.update(custom_args={"issue": 1}), "custom_args.issue"),
    ("custom_args of 10,000 bytes", lambda b: b.update(custom_args={"a": "x" * 10_000}), "custom_args"),
    ("personalization custom_args too big with the top ones",
     lambda b: (b.update(custom_args={"a": "x" * 6000}),
                b["personalizations"][0].update(custom_args={"b": "y" * 6000})),
     "personalizations.0.custom_args"),
    ("substitutions over 10,000 bytes", lambda b: b["personalizations"][0].update(
        substitutions={f"%k{i}%": "v" * 100 for i in range(100)}), "personalizations.0.substitutions"),
    ("';' in a name", lambda b: b["personalizations"][0]["to"][0].update(name="Doe; John"),
     "personalizations.0.to.0.name"),
    ("',' in a cc name", lambda b: b["personalizations"][0].update(cc=[{"email": "c@example.org", "name": "A, B"}]),
     "personalizations.0.cc.0.name"),
    ("text/html before text/plain", _html_first, "content"),
    ("another type between text/plain and text/html",
     lambda b: b["content"].insert(1, {"type": "text/calendar", "value": "BEGIN:VCALENDAR"}), "content"),
    ("no content and no template", lambda b: b.pop("content"), "content"),
    ("no subject anywhere", lambda b: b.pop("subject"), "subject"),
    ("send_at 73 hours ahead", lambda b: b.update(send_at=int(time.time()) + 73 * 3600), "send_at"),
    ("personalization send_at 73 hours ahead",
     lambda b: b["personalizations"][0].update(send_at=int(time.time()) + 73 * 3600), "personalizations.0.send_at"),
    ("forbidden personalization header", lambda b: b["personalizations"][0].update(headers={"Subject": "x"}),
     "personalizations.0.headers"),
    ("forbidden top-level header", lambda b: b.update(headers={"dkim-signature": "x"}), "headers"),
    ("reply_to with reply_to_list", _both_reply_tos, "reply_to_list"),
    ("no from", lambda b: b.pop("from"), "from"),
    ("invalid address", lambda b: b["personalizations"][0]["to"][0].update(email="not-an-address"),
     "personalizations.0.to.0.email"),
    ("same address in to and cc", _duplicate_in_cc, "personalizations.0.cc.0.email"),
    ("typo in a key", lambda b: b.update(personalisations=[]), "personalisations"),
    ("empty to", lambda b: b["personalizations"][0].update(to=[]), "personalizations.0.to"),
]


@pytest.mark.parametrize(("mutate", "field"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_limit_violation_is_refused_with_400_naming_the_field(
        sg: StandIn, client: SendGridAPIClient, mutate: Mutation, field: str) -> None:
    body = mail()
    mutate(body)
    with pytest.raises(http_errors.BadRequestsError) as exc:
        send(client, body)
    assert field in [e["field"] for e in errors_of(exc)], errors_of(exc)
    assert all(e["message"] for e in errors_of(exc))
    assert sg.accepted == [] and sg.recipients() == {}


def test_other_content_types_may_follow_text_plain_and_html(sg: StandIn, client: SendGridAPIClient) -> None:
    body = mail()
    body["content"].append({"type": "text/calendar", "value": "BEGIN:VCALENDAR"})
    assert send(client, body).status_code == 202


def test_exactly_1000_recipients_are_accepted(sg: StandIn, client: SendGridAPIClient) -> None:
    body = mail(*(f"r{i}@example.org" for i in range(1000)))
    assert send(client, body).status_code == 202
    assert len(sg.recipients()) == 1000


def test_body_of_30_mb_is_refused_with_413(sg: StandIn, client: SendGridAPIClient) -> None:
    body = mail()
    body["content"][0]["value"] = "x" * MAX_BODY_BYTES
    with pytest.raises(http_errors.PayloadTooLargeError) as exc:
        send(client, body, timeout=30)
    assert exc.value.status_code == 413 and sg.accepted == []


# --- faults -----------------------------------------------------------------------------------------


def test_429_carries_rate_limit_headers(sg: StandIn, client: SendGridAPIClient) -> None:
    sg.retry_after = 3
    sg.script(["429"])
    with pytest.raises(http_errors.TooManyRequestsError) as exc:
        send(client, mail())
    headers = exc.value.headers
    assert headers["Retry-After"] == "3" and headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Limit"]) > 0
    assert abs(int(headers["X-RateLimit-Reset"]) - (time.time() + 3)) < 2
    assert sg.accepted == []
    assert send(client, mail()).status_code == 202  # the script is used up


@pytest.mark.parametrize(("fault", "error"), [
    ("500", http_errors.InternalServerError), ("503", http_errors.ServiceUnavailableError),
    ("400", http_errors.BadRequestsError), ("401", http_errors.UnauthorizedError),
    ("403", http_errors.ForbiddenError), ("413", http_errors.PayloadTooLargeError),
])
def test_scripted_errors_raise_the_client_exception_and_send_nothing(
        sg: StandIn, client: SendGridAPIClient, fault: str, error: type[http_errors.HTTPError]) -> None:
    sg.script([fault])
    with pytest.raises(error) as exc:
        send(client, mail())
    assert isinstance(exc.value, http_errors.HTTPError) and exc.value.status_code == int(fault)
    assert errors_of(exc)[0]["message"] and sg.accepted == [] and sg.statuses == [int(fault)]


def test_drop_before_closes_without_answer_and_sends_nothing(sg: StandIn, client: SendGridAPIClient) -> None:
    sg.script(["drop_before"])
    with pytest.raises(http.client.RemoteDisconnected):
        send(client, mail())
    assert sg.accepted == [] and sg.statuses == ["drop"] and sg.request_count == 1


def test_drop_after_records_the_mail_then_closes(sg: StandIn, client: SendGridAPIClient) -> None:
    sg.script(["drop_after"])
    with pytest.raises(http.client.RemoteDisconnected):
        send(client, mail())
    assert sg.recipients() == {"ada@example.org": 1} and sg.statuses == ["drop"]


def test_slow_answer_times_the_client_out_but_the_mail_went_out(sg: StandIn, client: SendGridAPIClient) -> None:
    sg.script(["slow"])
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        send(client, mail(), timeout=0.2)
    assert time.monotonic() - started < 0.9
    assert sg.recipients() == {"ada@example.org": 1}


def test_always_answers_the_same_fault_until_cleared(sg: StandIn, client: SendGridAPIClient) -> None:
    sg.always = "403"
    for _ in range(3):
        with pytest.raises(http_errors.ForbiddenError):
            send(client, mail())
    sg.always = None
    assert send(client, mail()).status_code == 202
    assert sg.statuses == [403, 403, 403, 202]


def test_unknown_fault_is_rejected(sg: StandIn) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        sg.script(["418"])


def _outcomes(seed: int) -> list[int | str]:
    with StandIn(api_key=KEY, fault_rate=0.3, seed=seed) as standin:
        client = SendGridAPIClient(KEY, host=standin.url)
        for i in range(40):
            with contextlib.suppress(http_errors.HTTPError, ConnectionError):
                send(client, mail(f"r{i}@example.org"))
        return list(standin.statuses)


def test_random_faults_are_deterministic_per_seed() -> None:
    first, again, other = _outcomes(1), _outcomes(1), _outcomes(2)
    assert first == again and first != other
    assert 5 <= sum(s != 202 for s in first) <= 25 and 202 in first


def test_concurrent_senders_are_each_recorded_once(sg: StandIn) -> None:
    def worker(n: int) -> None:
        client = SendGridAPIClient(KEY, host=sg.url)
        for i in range(10):
            send(client, mail(f"t{n}-{i}@example.org"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = sg.recipients()
    assert len(counts) == 80 and set(counts.values()) == {1} and sg.request_count == 80


def test_parse_mode_reads_every_address_tallies_duplicates_and_keeps_no_bodies() -> None:
    with StandIn(api_key=KEY, validate=False) as standin:
        client = SendGridAPIClient(KEY, host=standin.url)
        body = mail(*(f"r{i}@example.org" for i in range(997)), "jörg@example.org")  # sent as j\u00f6rg
        body["personalizations"][0]["cc"] = [{"email": "cc@example.org"}]  # not only the first `to`
        body["personalizations"][1]["to"].insert(0, {"name": "Name first", "email": "second@example.org"})
        assert send(client, body).status_code == 202
        for again in (mail("r5@example.org", "new@example.org"), mail("new@example.org")):  # checked as SendGrid does
            assert send(client, again).status_code == 202
        for bad in ({"personalizations": "nope"}, {"personalizations": [{"to": [{"email": 7}]}]}):
            with pytest.raises(http_errors.BadRequestsError):
                send(client, bad)
        with pytest.raises(RuntimeError):
            standin.recipients()  # addresses are tallied by hash, not kept
        tally = json.loads(urllib.request.urlopen(standin.url + "/standin/tally", timeout=5).read())
    assert standin.accepted[0].body is None and standin.accepted[0].recipients == 1000
    assert tally.pop("max_in_flight") >= 1  # the last request's thread may still be ending as the next arrives
    assert tally == {"requests": 3, "recipients": 1003, "distinct": 1001, "duplicates": 2,
                     "duplicate_examples": ["r5@example.org", "new@example.org"]}


def test_parse_mode_refuses_every_body_with_the_same_errors_as_the_schema_mode(sg: StandIn,
                                                                               client: SendGridAPIClient) -> None:
    """Parse mode (benchmarks) checks through the compiled validator and the fast limits: the same answers."""
    bodies = []
    for _, mutate, _ in REFUSALS:
        body = mail()
        mutate(body)
        bodies.append(body)
    with StandIn(api_key=KEY, validate=False) as parsing:
        fast = SendGridAPIClient(KEY, host=parsing.url)
        for body in bodies:
            answers = []
            for c in (client, fast):
                with pytest.raises(http_errors.BadRequestsError) as exc:
                    send(c, body)
                answers.append(errors_of(exc))
            assert answers[0] == answers[1]
        request = urllib.request.Request(f"{parsing.url}/v3/mail/send", data=b'{"personalizations": NaN',
                                         method="POST", headers={"Authorization": f"Bearer {KEY}"})
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(request, timeout=5)
        assert bad.value.code == 400
        assert json.loads(bad.value.read())["errors"][0]["message"].startswith("The request body is not valid JSON: ")
        assert parsing.tally()["requests"] == 0 and sg.accepted == []


def test_delay_holds_each_answer_without_holding_other_requests() -> None:
    """Two requests wait out a long delay together (each answer in its own thread); stopping the stand-in
    ends the wait, and both are answered 202."""
    standin = StandIn(api_key=KEY, validate=False, delay=60).start()
    client = SendGridAPIClient(KEY, host=standin.url)
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda n=n: statuses.append(send(client, mail(f"d{n}@example.org"),
                                                                           timeout=90).status_code))
               for n in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while standin.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    both_waiting = standin.in_flight == 2 and not statuses
    standin.stop()
    for thread in threads:
        thread.join(timeout=30)
    assert both_waiting and statuses == [202, 202] and standin.tally()["recipients"] == 2


# --- suppressions -----------------------------------------------------------------------------------


def test_suppression_lists_page_with_limit_and_offset(sg: StandIn, client: SendGridAPIClient) -> None:
    sg.suppressions["bounces"] = [{"email": f"b{i}@example.org", "created": 1700000000 + i,
                                   "reason": "550 no such user", "status": "5.1.1"} for i in range(5)]
    pages = [json.loads(client.client.suppression.bounces.get(query_params={"limit": 2, "offset": o}).body)
             for o in (0, 2, 4, 6)]
    assert [[r["email"] for r in p] for p in pages] == [
        ["b0@example.org", "b1@example.org"], ["b2@example.org", "b3@example.org"], ["b4@example.org"], []]
    assert pages[0][0] == sg.suppressions["bounces"][0]
    since = client.client.suppression.bounces.get(query_params={"start_time": 1700000003})
    assert [r["email"] for r in json.loads(since.body)] == ["b3@example.org", "b4@example.org"]


def test_group_suppressions_and_empty_lists(sg: StandIn, client: SendGridAPIClient) -> None:
    sg.suppressions["asm_suppressions"] = [
        {"email": "u@example.org", "group_id": 42, "group_name": "Newsletter", "created_at": 1700000000}]
    assert json.loads(client.client.asm.suppressions.get().body)[0]["group_id"] == 42
    for name in ("blocks", "spam_reports", "invalid_emails", "unsubscribes"):
        assert json.loads(client.client.suppression._(name).get().body) == []


def test_suppression_lists_need_the_key_and_a_sane_limit(sg: StandIn, client: SendGridAPIClient) -> None:
    with pytest.raises(http_errors.UnauthorizedError):
        SendGridAPIClient("SG.wrong", host=sg.url).client.suppression.bounces.get()
    with pytest.raises(http_errors.BadRequestsError):
        client.client.suppression.bounces.get(query_params={"limit": 0})
    with pytest.raises(http_errors.NotFoundError):
        client.client.suppression.nothing.get()


# --- as a process -----------------------------------------------------------------------------------


def test_process_records_accepted_requests_and_survives_kill(tmp_path: Path) -> None:
    record = tmp_path / "accepted.jsonl"
    script = Path(__file__).with_name("standin.py")
    process = subprocess.Popen([sys.executable, str(script), "--port", "0", "--record", str(record)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        client = SendGridAPIClient(KEY, host=url)
        ids = [send(client, mail("ada@example.org", "grace@example.org")).headers["X-Message-Id"],
               send(client, mail("alan@example.org")).headers["X-Message-Id"]]
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert lines == [{"message_id": ids[0], "recipients": ["ada@example.org", "grace@example.org"]},
                     {"message_id": ids[1], "recipients": ["alan@example.org"]}]


def _run_faulty_process(record: Path) -> list[str]:
    script = Path(__file__).with_name("standin.py")
    process = subprocess.Popen([sys.executable, str(script), "--port", "0", "--parse", "--fault-rate", "1.0",
                                "--seed", "3", "--record", str(record)], stdout=subprocess.PIPE, text=True)
    outcomes = []
    try:
        assert process.stdout is not None
        client = SendGridAPIClient(KEY, host=process.stdout.readline().strip())
        for i in range(20):
            try:
                send(client, mail(f"r{i}@example.org"))
                outcomes.append("202")
            except http_errors.HTTPError as exc:
                outcomes.append(str(exc.status_code))
            except ConnectionError:
                outcomes.append("dropped")
    finally:
        process.terminate()
        process.wait(timeout=5)
    return outcomes


def test_process_fault_flags_are_seeded_and_drop_after_is_recorded(tmp_path: Path) -> None:
    first = _run_faulty_process(tmp_path / "first.jsonl")
    again = _run_faulty_process(tmp_path / "again.jsonl")
    assert first == again and "202" not in first and "dropped" in first and "429" in first
    recorded = [json.loads(line)["recipients"] for line in (tmp_path / "first.jsonl").read_text().splitlines()]
    assert 0 < len(recorded) < first.count("dropped")  # drop_after went out, drop_before did not
    assert recorded == [json.loads(line)["recipients"] for line in (tmp_path / "again.jsonl").read_text().splitlines()]
