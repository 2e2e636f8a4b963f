"""Subscriber values never become markup or headers: real renders, real sends to the stand-in, real .eml files."""

from __future__ import annotations

import csv
import email
import email.policy
import re
import sqlite3
from collections.abc import Iterator
from email.header import decode_header, make_header
from email.policy import compat32
from email.utils import parseaddr
from pathlib import Path

import pytest

from pipeline.build.message import address_header, header_text
from pipeline.errors import SendError
from pipeline.lists.subscribers import check_list
from pipeline.lists.values import MAX_SUBSTITUTION_BYTES
from pipeline.store._sqlite import SQLiteStore
from tests.sendkit import ISSUE, KEY, cli, environ
from tests.standin import StandIn

EVIL = '<a href="https://evil.example">Your account is locked</a>'
ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(api_key=KEY, retry_after=0) as sg:
        yield sg


def _list(site: Path, rows: list[list[str]], name: str = "club", header: tuple[str, ...] = ("email", "name", "city"),
          ) -> Path:
    path = site / "subscribers" / f"{name}.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _subject_with(site: Path, tag: str) -> None:
    issue = site / ISSUE / "issue.yaml"
    issue.write_text(issue.read_text("utf-8").replace('subject: "Test Weekly No. 1: hello"',
                                                      f'subject: "Test Weekly for {tag}"'), "utf-8")


def _eml(site: Path, address: str) -> email.message.EmailMessage:
    raw = (site / "outbox" / f"{address}.eml").read_bytes()
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def _parts(msg: email.message.EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_a_name_is_text_in_html_and_as_written_in_text_in_the_outbox(site: Path) -> None:
    _list(site, [["ada@example.org", EVIL, "<b>London</b>"], ["bob@example.org", "%%unsubscribe_url%%", "%%name%%"]])
    done = cli(site, "send", ISSUE, "--list", "club", "--outbox", "outbox", "--yes", env=environ(None))
    assert done.returncode == 0, done.stderr
    text, html = _parts(_eml(site, "ada@example.org"))
    assert "Hi " + EVIL in text  # the text part shows the name as written
    assert "<a href=\"https://evil.example\"" not in html and "evil.example\">Your" not in html
    assert "Hi &lt;a href=&quot;https://evil.example&quot;&gt;Your account is locked&lt;/a&gt;" in html
    text, html = _parts(_eml(site, "bob@example.org"))
    assert "Hi %%unsubscribe_url%%" in text and "Hi %%unsubscribe_url%%" in html  # a tag-like value stays text
    assert "%%name" not in html.replace("Hi %%unsubscribe_url%%", "")


def test_sendgrid_gets_an_escaped_html_tag_and_the_plain_value(site: Path, standin: StandIn) -> None:
    _list(site, [["ada@example.org", EVIL, "x"]])
    _subject_with(site, "%%name%%")
    for args in ([], ["--test", "me@example.net"]):  # the real send and a test copy alike
        done = cli(site, "send", ISSUE, "--list", "club", "--yes", *args, env=environ(standin.url))
        assert done.returncode == 0, done.stderr
    assert len(standin.accepted) == 2
    for accepted in standin.accepted:
        body = accepted.body
        assert body is not None
        html = body["content"][1]["value"]
        assert "%%name:html%%" in html and "%%name%%" not in html
        assert "%%name%%" in body["content"][0]["value"] and "%%name%%" in body["subject"]
        substitutions = body["personalizations"][0]["substitutions"]
        assert substitutions["%%name%%"] == EVIL
        assert substitutions["%%name:html%%"] == ('&lt;a href=&quot;https://evil.example&quot;&gt;Your account is '
                                                  'locked&lt;/a&gt;')


@pytest.mark.parametrize(("cell", "column"), [("Ada\x1b[31m", "name"), ("Ada\u202eevil", "name"),
                                              ("Seoul\r\nBcc: victim@example.org", "city")])
def test_a_control_character_is_a_bad_row_for_check_send_and_outbox(site: Path, standin: StandIn, cell: str,
                                                                     column: str) -> None:
    row = ["grace@example.org", cell, "Arlington"] if column == "name" else ["grace@example.org", "Grace", cell]
    _list(site, [["ada@example.org", "Ada", "London"], row])
    _subject_with(site, "%%city%%")
    checked = cli(site, "subscribers", "check", "club", env=environ(None))
    assert checked.returncode == 4 and "club.csv:3: error:" in checked.stdout + checked.stderr
    assert "control character" in checked.stdout + checked.stderr
    for args in (["--outbox", "outbox"], []):
        done = cli(site, "send", ISSUE, "--list", "club", "--yes", *args, env=environ(standin.url))
        assert done.returncode == 4 and "club.csv:3: error:" in done.stderr and "control character" in done.stderr
        assert "Traceback" not in done.stderr and "Bcc" not in done.stderr
    assert standin.request_count == 0 and not (site / "outbox").exists()
    with sqlite3.connect(site / ".newsletter" / "sendlog.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone() == (0,)


def test_check_and_send_agree_on_an_oversized_name(site: Path, standin: StandIn) -> None:
    _list(site, [["ada@example.org", "x" * 20_000, "London"], ["bob@example.org", "Bob", "Paris"]])
    checked = cli(site, "subscribers", "check", "club", env=environ(None))
    assert checked.returncode == 4 and "club.csv:2: error:" in checked.stdout + checked.stderr
    done = cli(site, "send", ISSUE, "--list", "club", "--yes", env=environ(standin.url))
    assert done.returncode == 4 and "club.csv:2: error:" in done.stderr and f"{MAX_SUBSTITUTION_BYTES}" in done.stderr
    assert standin.request_count == 0
    # The size counts the HTML-escaped value too: 1,500 quotes are 1,500 bytes as text, 9,000 escaped.
    path = _list(site, [["ada@example.org", '"' * 1500, "London"]])
    assert check_list(path, base_url="https://news.example.org").invalid == 1


def test_outbox_headers_keep_an_encoded_word_in_a_name_literal(site: Path) -> None:
    tricky = "=?utf-8?q?Boss_<boss@evil.example>?="
    long_korean = "김지우" * 30
    _list(site, [["ada@example.org", tricky, "x"], ["bob@example.org", long_korean, "y"],
                 ["cy@example.org", 'Dr. "Cy" O\'Neil (Jr.) <3', "z"]])
    _subject_with(site, "%%city%% =?utf-8?b?SGk=?=")
    done = cli(site, "send", ISSUE, "--list", "club", "--outbox", "outbox", "--yes", env=environ(None))
    assert done.returncode == 0, done.stderr
    for address, name, city in (("ada@example.org", tricky, "x"), ("bob@example.org", long_korean, "y"),
                                ("cy@example.org", 'Dr. "Cy" O\'Neil (Jr.) <3', "z")):
        # Decoded by RFC 2047's rules (email.header); the newer parser puts spaces between encoded words.
        msg = email.message_from_bytes((site / "outbox" / f"{address}.eml").read_bytes(), policy=compat32)
        to_name, to_address = parseaddr(re.sub(r"\r?\n", "", msg["To"]))
        assert to_address == address and str(make_header(decode_header(to_name))) == name
        assert str(make_header(decode_header(msg["Subject"]))) == f"Test Weekly for {city} =?utf-8?b?SGk=?="
        raw = (site / "outbox" / f"{address}.eml").read_bytes().decode("ascii")
        head = raw.split("\r\n\r\n", 1)[0]
        assert all(len(word) <= 75 for word in ENCODED_WORD.findall(head))


def test_a_list_name_that_cannot_be_a_header_is_a_clear_error(site: Path) -> None:
    _list(site, [["ada@example.org", "Ada", "x"]], name="club\nX-Evil: 1")
    done = cli(site, "send", ISSUE, "--list", "club\nX-Evil: 1", "--outbox", "outbox", "--yes", env=environ(None))
    assert done.returncode == 4 and "control character" in done.stderr and "Traceback" not in done.stderr
    assert not (site / "outbox").exists()


def test_header_text_refuses_control_characters_without_echoing() -> None:
    with pytest.raises(SendError) as caught:
        header_text("X-Newsletter-Issue", "001\r\nBcc: someone@example.org")
    assert "Bcc" not in str(caught.value) and "U+000D" in str(caught.value)
    assert address_header("To", "Doe, Jane", "j@example.org") == '"Doe, Jane" <j@example.org>'


def test_send_log_is_untouched_by_a_bad_list(site: Path) -> None:
    """The in-process path: a bad row found while recording rolls the whole list back."""
    from tests.sendkit import send

    _list(site, [["ada@example.org", "Ada", "ok"], ["bob@example.org", "Bob", "bad\x07bell"]])
    from pipeline.errors import SubscriberError

    with pytest.raises(SubscriberError) as caught:
        send(site, environ(None), list_name="club", outbox=site / "outbox")
    assert [p.line for p in caught.value.problems] == [3]
    db = SQLiteStore(site / ".newsletter" / "sendlog.sqlite3")
    assert db.conn.execute("SELECT count(*) FROM deliveries").fetchone() == (0,)
    db.close()
