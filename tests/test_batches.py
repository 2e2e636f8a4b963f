"""The Mail Send body: one personalization per recipient, shared content once, valid for the stand-in."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import jsonschema
import pytest

from pipeline import tokens
from pipeline.build.render import Email
from pipeline.config import load_config
from pipeline.errors import SendError
from pipeline.lists.values import RowRule, substitution_bytes
from pipeline.send.batches import Batch, Mailing, Personalizer, display_name, parse_send_at
from tests.mailsend_rules import SCHEMA_PATH, limit_errors

SECRET = b"batches-test-secret-0123456789"


def _email(**overrides: str) -> Email:
    values = {"subject": "Issue %%name%%", "preheader": "p", "language": "en", "mjml": "",
              "html": "<p>Hi %%name%% from %%city%%</p><a href='%%unsubscribe_url%%'>unsubscribe</a>",
              "text": "Hi %%name%% (%%city%%, %%zip%%)\nUnsubscribe: %%unsubscribe_url%%"}
    values.update(overrides)
    return Email(**values)


def _personalizer(site: Path, **overrides: object) -> Personalizer:
    config = load_config(site)
    values: dict[str, object] = {"email": _email(), "issue": "001-hello", "list_name": "sample", "send_id": 7,
                                 "secret": SECRET}
    values.update(overrides)
    return Personalizer(Mailing.from_config(config, **values))


ROWS = [(1, "ada@example.org", "Ada Lovelace", '{"city": "London"}'),
        (2, "grace@example.org", "Hopper, Grace; Admiral", None),
        (3, "zoë@example.org", "", '{"city": "Zürich", "zip": "8001"}')]


def _valid(body: dict[str, object]) -> list[object]:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text("utf-8")))
    return [e.message for e in validator.iter_errors(body)] or limit_errors(body, time.time())  # type: ignore[arg-type]


def test_body_shape(site: Path) -> None:
    p = _personalizer(site)
    body = json.loads(p.body(Batch(id=1, request_id="r", rows=ROWS)))
    assert _valid(body) == []
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["custom_args"] == {"nl_send_id": "7", "nl_issue": "001-hello", "nl_list": "sample"}
    assert body["categories"] == ["test"]
    assert body["from"] == {"email": "editor@example.org", "name": "Test Weekly"}
    assert body["reply_to"] == {"email": "editor@example.org"}
    people = body["personalizations"]
    assert [p["to"] for p in people] == [[{"email": "ada@example.org", "name": "Ada Lovelace"}],
                                         [{"email": "grace@example.org", "name": "Hopper Grace Admiral"}],
                                         [{"email": "zoë@example.org"}]]
    assert people[0]["substitutions"]["%%city%%"] == "London"
    assert people[0]["substitutions"]["%%zip%%"] == ""  # every tag gets a value: SendGrid keeps unknown tags
    assert people[1]["substitutions"]["%%name%%"] == "Hopper, Grace; Admiral"  # the name itself is kept
    assert people[2]["substitutions"]["%%city%%"] == "Zürich"
    assert set(people[2]["substitutions"]) == {"%%name%%", "%%city%%", "%%zip%%", "%%unsubscribe_url%%"}


def test_unsubscribe_url_in_footer_and_headers(site: Path) -> None:
    p = _personalizer(site)
    body = json.loads(p.body(Batch(id=1, request_id="r", rows=ROWS)))
    for row, person in zip(ROWS, body["personalizations"], strict=True):
        url = person["substitutions"]["%%unsubscribe_url%%"]
        assert url.startswith("https://news.example.org/unsubscribe/")
        token = tokens.verify(SECRET, url.rsplit("/", 1)[1])
        assert token == tokens.UnsubscribeToken(email=row[1], list_name="sample", issue="001-hello")
        assert person["headers"] == {
            "List-Unsubscribe": f"<{url}>, <mailto:editor@example.org?subject=unsubscribe>"}
        assert p.values(row[1], row[2], p.parse_fields(row[3]))["unsubscribe_url"] == url
    # the one-click marker is the same for everyone: a message-level header, which every personalization gets
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_group_schedule_and_test_copy(site: Path) -> None:
    at = int(time.time()) + 3600
    p = _personalizer(site, group_id=42, send_at=at)
    body = json.loads(p.body(Batch(id=1, request_id="r", rows=ROWS[:1])))
    assert body["asm"] == {"group_id": 42} and body["send_at"] == at
    assert _valid(body) == []
    test = Personalizer(p.mailing.as_test())
    body = json.loads(test.body(Batch(id=0, request_id="r", rows=ROWS[:1])))
    assert body["subject"].startswith("[TEST] ")
    assert body["custom_args"]["nl_send_id"] == "0" and "test" in body["categories"]


def test_display_name() -> None:
    assert display_name("Ada") == "Ada"
    assert display_name("Lovelace, Ada; Countess") == "Lovelace Ada Countess"
    assert display_name("two\r\nlines") == "two lines"


def test_the_row_rule_bounds_what_any_issue_substitutes(site: Path) -> None:
    """RowRule.size (what `check` and `send` decide bad rows by) is at least the bytes sent, for an issue
    that uses every column in both parts."""
    html = "<p>%%name:html%% %%city:html%% %%zip:html%%</p><a href='%%unsubscribe_url%%'>u</a>"
    p = _personalizer(site, email=_email(html=html), issue="x" * 255)
    rule = RowRule(base_url=p.mailing.base_url, list_name="sample", columns=["city", "zip"])
    for email in ("a@example.org", "zoë.very.long.name.indeed@example.org"):
        for name, city in (("Ada", "London"), ('<b>"Ada" & co</b>' * 20, "Zürich <'&'>" * 30)):
            fields = {"city": city, "zip": "8001"}
            body = json.loads(p.body(Batch(id=1, request_id="r", rows=[(1, email, name, json.dumps(fields))])))
            substitutions = body["personalizations"][0]["substitutions"]
            exact = substitution_bytes({k.strip("%"): v for k, v in substitutions.items()})
            assert set(substitutions) == {"%%name%%", "%%name:html%%", "%%city%%", "%%city:html%%", "%%zip%%",
                                          "%%zip:html%%", "%%unsubscribe_url%%"}
            assert rule.size(email, name, fields) >= exact


def test_parse_send_at() -> None:
    now = dt.datetime(2026, 3, 1, 0, 0, tzinfo=dt.UTC)
    assert parse_send_at("2026-03-01T09:00:00+09:00", now=now + dt.timedelta(hours=-1)) == int(now.timestamp())
    with pytest.raises(SendError, match="in the past.*already too late"):
        parse_send_at("2026-02-28T23:59:00Z", now=now)
    with pytest.raises(SendError, match="more than 72 hours"):
        parse_send_at("2026-03-04T00:00:01+00:00", now=now)
    with pytest.raises(SendError, match="no UTC offset"):
        parse_send_at("2026-03-01T09:00:00", now=now)
    with pytest.raises(SendError, match="not an ISO 8601"):
        parse_send_at("tomorrow", now=now)
