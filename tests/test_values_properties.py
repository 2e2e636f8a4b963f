"""Property tests (Hypothesis) for untrusted text: list rows and substitution values. Each checks the invariant
(escaped in HTML, intact in text, no header injection, bad rows reported and nothing recorded)."""

from __future__ import annotations

import csv
import email
import email.policy
import html
import io
import json
import re
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.build.message import mime_message, substitute
from pipeline.build.render import Email, html_tags
from pipeline.config import load_config
from pipeline.errors import SubscriberError
from pipeline.lists.subscribers import ListReader, clean_name
from pipeline.lists.values import UNSAFE
from pipeline.send import recipients
from pipeline.send.batches import Batch, Mailing, Personalizer, display_name
from pipeline.store._sqlite import SQLiteStore

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Any text, with control characters, markup, quotes, tag look-alikes and encoded-word look-alikes well represented.
TRICKY = st.sampled_from(["<", ">", "&", '"', "'", "%%name%%", "%%unsubscribe_url%%", "=?utf-8?q?x?=", "\r\n",
                          "\x00", "\x1b", "\u202e", "\u2028", ";", ",", " ", "김", "é", "🙂"])
VALUE = st.lists(st.one_of(st.text(max_size=4), TRICKY), max_size=8).map("".join)
SAFE_VALUE = VALUE.filter(lambda s: not UNSAFE.search(s))

TEMPLATE_HTML = "<p>Hi {n}, from {c}</p><a href=\"%%unsubscribe_url%%\">unsubscribe</a>"


def _personalizer(site: Path) -> Personalizer:
    html_part = html_tags(TEMPLATE_HTML.format(n="%%name%%", c="%%city%%"))
    mail = Email(subject="News for %%name%% in %%city%%", preheader="", language="en", mjml="", html=html_part,
                 text="Hi %%name%% from %%city%%\nUnsubscribe: %%unsubscribe_url%%")
    config = load_config(site)
    return Personalizer(Mailing.from_config(config, email=mail, issue="001-hello", list_name="club", send_id=1,
                                            secret=b"property-test-secret-0123456789"))


@FEW
@given(name=VALUE, city=VALUE)
def test_sendgrid_substitutions_escape_html_and_keep_text(site: Path, name: str, city: str) -> None:
    p = _personalizer(site)
    row = (1, "ada@example.org", name, json.dumps({"city": city}))
    substitutions = json.loads(p.body(Batch(id=1, request_id="r", rows=[row])))["personalizations"][0]["substitutions"]
    assert substitutions["%%name%%"] == name and substitutions["%%city%%"] == city  # intact for text and subject
    for tag, value in (("%%name:html%%", name), ("%%city:html%%", city)):
        assert substitutions[tag] == html.escape(value)
        assert not set("<>\"'") & set(substitutions[tag])  # no markup, nothing that ends an attribute
    assert "%%name%%" not in p.mailing.email.html and "%%city%%" not in p.mailing.email.html


@FEW
@given(name=SAFE_VALUE, city=SAFE_VALUE)
def test_the_outbox_message_keeps_values_as_text_and_headers_intact(site: Path, name: str, city: str) -> None:
    p = _personalizer(site)
    values = p.values("ada@example.org", name, {"city": city})
    msg = mime_message(p.mailing.email, sender=Address("Test Weekly", addr_spec="editor@example.org"),
                       to=(display_name(name), "ada@example.org"), values=values,
                       headers=p.headers(values["unsubscribe_url"]))
    raw = msg.as_bytes(policy=email.policy.SMTP.clone(max_line_length=998))
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert parsed.keys() == ["From", "To", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post", "MIME-Version",
                             "Content-Type"]  # no header was injected
    to_name, to_address = parseaddr(re.sub(r"\r?\n", "", parsed["To"]))
    assert to_address == "ada@example.org" and str(make_header(decode_header(to_name))) == display_name(name)
    subject = str(make_header(decode_header(parsed["Subject"])))
    assert subject == f"News for {name} in {city}"  # a value that looks like a tag or an encoded word stays text
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    assert all(len(w) <= 75 for w in re.findall(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=", head))
    parts = {part.get_content_type(): part.get_payload(decode=True).decode("utf-8") for part in parsed.walk()
             if not part.is_multipart()}
    assert f"Hi {name} from {city}\n" in parts["text/plain"].replace("\r\n", "\n")
    assert f"<p>Hi {html.escape(name)}, from {html.escape(city)}</p>" in parts["text/html"]
    assert substitute("%%name%%", values) == name  # one pass: a tag inside a value is not filled again


def _line_breaks(text: str) -> int:
    return len(re.findall(r"\r\n|\r|\n", text))


@FEW
@given(rows=st.lists(st.tuples(VALUE, VALUE), min_size=1, max_size=6))
def test_list_rows_with_any_text_are_kept_intact_or_reported_with_their_line(
        site: Path, tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, str]]) -> None:
    rows = [(n.replace("\x00", ""), c.replace("\x00", "")) for n, c in rows]  # NUL: the whole file is refused
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["email", "name", "city"])
    expected: dict[str, tuple[str, str]] = {}
    bad_lines: list[int] = []
    for i, (name, city) in enumerate(rows):
        line = _line_breaks(out.getvalue()) + 1
        address = f"p{i}@example.org"
        writer.writerow([address, name, city])
        cleaned = clean_name(name)
        if UNSAFE.search(cleaned) or UNSAFE.search(city):
            bad_lines.append(line)
        else:
            expected[address] = (cleaned, city)
    folder = tmp_path_factory.mktemp("list")
    path = folder / "club.csv"
    path.write_text(out.getvalue(), "utf-8", newline="")

    reader = ListReader(path, base_url="https://news.example.org")
    got = {r.email: (r.name, dict(r.fields).get("city", "")) for r in reader}
    assert got == expected  # every good row exactly as written (the name's whitespace folded)
    assert all(not UNSAFE.search(n + c) for n, c in got.values())
    assert [p.line for p in reader.problems if p.blocking] == bad_lines

    store = SQLiteStore(folder / "sendlog.sqlite3")
    send = store.create_send(issue="001-hello", list_name="club", transport="sendgrid", content_hash="h",
                             subject="s")
    try:
        recipients.record_list(store, send.id, path, _personalizer(site), list_name="club", new_send=True,
                               skip_invalid=False)
        assert not bad_lines
    except SubscriberError as exc:
        assert bad_lines and [p.line for p in exc.problems] == bad_lines
    count = store.conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    assert count == (0 if bad_lines else len(expected))
    store.close()
