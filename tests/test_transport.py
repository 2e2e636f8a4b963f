"""Transports against the real stand-in: how every kind of answer is classified, and the outbox files."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.build.render import Email
from pipeline.config import load_config
from pipeline.send.batches import Batch, Mailing, Personalizer
from pipeline.send.transport import OutboxTransport, Outcome, SendGridTransport, wait_hint
from tests.sendkit import KEY
from tests.standin import StandIn

SECRET = b"transport-test-secret-0123456789"
ROWS = [(1, "ada@example.org", "Ada", '{"city": "London"}'), (2, "alan@example.org", "Alan", None)]


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(api_key=KEY, retry_after=3, slow_seconds=5) as sg:
        yield sg


def _personalizer(site: Path) -> Personalizer:
    config = load_config(site)
    mail = Email(subject="Hello %%name%%", preheader="", language="en", mjml="",
                 html="<p>Hi %%name%% of %%city%%</p><a href='%%unsubscribe_url%%'>unsubscribe</a>",
                 text="Hi %%name%% of %%city%%\n%%unsubscribe_url%%")
    return Personalizer(Mailing.from_config(config, email=mail, issue="001-hello", list_name="sample", send_id=1,
                                            secret=SECRET))


def _transport(site: Path, url: str, *, key: str = KEY, timeout: float = 30) -> SendGridTransport:
    return SendGridTransport(_personalizer(site), api_key=key, host=url, timeout=timeout)


BATCH = Batch(id=1, request_id="r1", rows=ROWS)


def test_accepted(site: Path, standin: StandIn) -> None:
    result = _transport(site, standin.url).send(BATCH)
    assert result.outcome is Outcome.ACCEPTED and result.status == 202
    assert result.message_id == standin.accepted[0].message_id
    assert standin.recipients() == {"ada@example.org": 1, "alan@example.org": 1}


@pytest.mark.parametrize("fault", ["429", "500", "503"])
def test_retryable(site: Path, standin: StandIn, fault: str) -> None:
    standin.script([fault])
    result = _transport(site, standin.url).send(BATCH)
    assert result.outcome is Outcome.RETRY and result.status == int(fault)
    if fault == "429":
        assert result.retry_after is not None and 2 <= result.retry_after <= 3
    assert standin.recipients() == {}


@pytest.mark.parametrize("fault", ["502", "504"])
def test_a_gateway_answer_is_in_doubt(site: Path, standin: StandIn, fault: str) -> None:
    standin.script([fault])
    result = _transport(site, standin.url).send(BATCH)
    assert result.outcome is Outcome.IN_DOUBT and result.status == int(fault)
    assert "may have sent" in result.error
    assert standin.recipients() == {"ada@example.org": 1, "alan@example.org": 1}  # it did, behind the gateway


@pytest.mark.parametrize("fault", ["400", "403", "413"])
def test_refused(site: Path, standin: StandIn, fault: str) -> None:
    standin.script([fault])
    result = _transport(site, standin.url).send(BATCH)
    assert result.outcome is Outcome.REFUSED and result.status == int(fault)
    assert result.error  # SendGrid's own message


def test_bad_field_is_named(site: Path, standin: StandIn) -> None:
    bad = Batch(id=1, request_id="r", rows=[(1, "not-an-address", "", None)])
    result = _transport(site, standin.url).send(bad)
    assert result.outcome is Outcome.REFUSED and result.status == 400
    assert "field: personalizations.0.to.0.email" in result.error


def test_bad_key_never_in_the_error(site: Path, standin: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "SG.wrong-key-that-must-stay-secret"
    result = _transport(site, standin.url, key=wrong).send(BATCH)
    assert result.outcome is Outcome.REFUSED and result.status == 401
    assert wrong not in result.error and wrong not in caplog.text
    assert "ada@example.org" not in caplog.text  # the client's DEBUG log of bodies is silenced too


@pytest.mark.parametrize("fault", ["drop_before", "drop_after"])
def test_dropped_connection_is_in_doubt(site: Path, standin: StandIn, fault: str) -> None:
    standin.script([fault])
    result = _transport(site, standin.url).send(BATCH)
    assert result.outcome is Outcome.IN_DOUBT
    assert sum(standin.recipients().values()) == (2 if fault == "drop_after" else 0)


def test_timeout_is_in_doubt(site: Path, standin: StandIn) -> None:
    standin.script(["slow"])
    result = _transport(site, standin.url, timeout=0.5).send(BATCH)
    assert result.outcome is Outcome.IN_DOUBT
    assert standin.recipients() == {"ada@example.org": 1, "alan@example.org": 1}  # it did go out


def test_connection_refused_is_not_sent(site: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        result = _transport(site, f"http://127.0.0.1:{port}").send(BATCH)
    assert result.outcome is Outcome.RETRY and "not sent" in result.error


def test_wait_hint() -> None:
    assert wait_hint({"Retry-After": "7"}, now=0) == 7
    assert wait_hint({"X-RateLimit-Reset": "110"}, now=100) == 10
    assert wait_hint({"Retry-After": "Thu, 01 Jan 1970 00:01:40 GMT"}, now=90) == 10
    assert wait_hint({"Retry-After": "soon"}, now=0) is None
    assert wait_hint({}, now=0) is None


def test_outbox_writes_personalised_messages(site: Path, tmp_path: Path) -> None:
    p = _personalizer(site)
    result = OutboxTransport(p, tmp_path / "out").send(BATCH)
    assert result.outcome is Outcome.ACCEPTED
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == ["ada@example.org.eml", "alan@example.org.eml"]
    msg = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert msg["To"] == "Ada <ada@example.org>" and msg["Subject"] == "Hello Ada"
    url = p.values("ada@example.org", "Ada", {})["unsubscribe_url"]
    assert msg["List-Unsubscribe"] == f"<{url}>, <mailto:editor@example.org?subject=unsubscribe>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Date"].datetime is not None and msg["Message-ID"].endswith("@example.org>")
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Hi Ada of London" in text and url in text
    assert "Hi Ada of London" in html and url in html
    second = email.message_from_bytes(files[1].read_bytes(), policy=email.policy.default)
    assert "Hi Alan of \r\n" in second.get_body(("plain",)).get_content()  # type: ignore[union-attr]
