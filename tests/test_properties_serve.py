"""Property-based tests (Hypothesis) for what outsiders send to `serve`: tokens, webhook headers and bodies,
unsubscribe posts and archive paths. Each asserts the invariant (only our exact token verifies; 4xx, never
5xx; nothing recorded for a refused request; the valid events of a batch still stored), through a real
uvicorn server on 127.0.0.1. Example counts stay modest: these run in the normal suite."""

from __future__ import annotations

import http.client
import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from loop_support import SECRET, Signer, event, request, running
from storekit import dump, seed_send, select, site_store

from pipeline import tokens
from pipeline.config import load_config
from pipeline.store import Store
from pipeline.web.app import Settings, create_app
from pipeline.web.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, public_key_from_base64

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=80, deadline=None)

ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)  # lone surrogates included
# What an HTTP client can put into a header (latin-1, no line breaks); the server may still refuse some.
HEADER = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=120)
CONTENT_TYPES = st.one_of(HEADER, st.sampled_from([
    "application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=B",
    "multipart/form-data", "text/plain; charset=utf-16", "application/x-www-form-urlencoded; charset=latin-1"]))
JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers(-10**300, 10**300) | ANY_TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
                    max_leaves=12)
# Raw JSON for one value: anything json.dumps writes, and what only a hand (or a bug) writes.
RAW_JSON = st.one_of(JSON.map(json.dumps), st.integers(-10**400, 10**400).map(str), st.sampled_from([
    "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "9" * 5000, "-" + "9" * 5000, "1e-999", "-0.0",
    '"\\ud800"', '"a\\u0000b@example.org"', "[" * 50 + "]" * 50]))
EVENT_FIELDS = ["event", "email", "timestamp", "nl_send_id", "nl_issue", "nl_list", "url", "type", "reason",
                "sg_message_id", "asm_group_id"]


@contextmanager
def serving(site: Path, signer: Signer) -> Iterator[tuple[str, Store, int]]:
    config = load_config(site)
    store = site_store(site)
    send_id = seed_send(store)
    app = create_app(Settings(config=config, secret=SECRET, webhook_key=public_key_from_base64(signer.public_base64),
                              open_store=lambda: site_store(site), max_webhook_bytes=64 * 1024))
    try:
        with running(app) as url:
            yield url, store, send_id
    finally:
        store.close()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    status, _, answer = request("POST", url, data=body, headers=headers)
    return status, answer


def rows(store: Store, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return select(store, sql, args)


# --- tokens ---------------------------------------------------------------------------------------------


@SOME
@given(email=ANY_TEXT, list_name=ANY_TEXT, issue=ANY_TEXT)
def test_token_round_trip_for_any_text(email: str, list_name: str, issue: str) -> None:
    token = tokens.sign(SECRET, email=email, list_name=list_name, issue=issue)
    assert all(c.isascii() and (c.isalnum() or c in "-_.") for c in token)
    assert tokens.verify(SECRET, token) == tokens.UnsubscribeToken(email=email, list_name=list_name, issue=issue)
    assert tokens.verify(b"another-secret-of-enough-length", token) is None


EDITS = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 10**4), st.characters(codec=None)),
    st.tuples(st.just("insert"), st.integers(0, 10**4), st.characters(codec=None)),
    st.tuples(st.just("delete"), st.integers(0, 10**4), st.just("")),
    st.tuples(st.just("pad"), st.integers(1, 3), st.sampled_from(["=", "%3D", " ", "\n"])),
    st.tuples(st.just("case"), st.integers(0, 10**4), st.just("")),
)


def edited(token: str, edit: tuple[str, int, str]) -> str:
    kind, at, text = edit
    at %= len(token)
    if kind == "replace":
        return token[:at] + text + token[at + 1:]
    if kind == "insert":
        return token[:at] + text + token[at:]
    if kind == "delete":
        return token[:at] + token[at + 1:]
    if kind == "pad":
        payload, _, mac = token.partition(".")  # an earlier edit may have added a dot
        return f"{payload}.{mac}{text * at}" if at != 2 else f"{payload}{text}.{mac}"
    return token[:at] + token[at].swapcase() + token[at + 1:]


@SOME
@given(email=ANY_TEXT, edits=st.lists(EDITS, min_size=1, max_size=3))
def test_every_other_spelling_of_a_token_is_refused(email: str, edits: list[tuple[str, int, str]]) -> None:
    token = tokens.sign(SECRET, email=email, list_name="sample", issue="001-hello")
    changed = token
    for edit in edits:
        changed = edited(changed, edit) or "x"
    if changed != token:
        assert tokens.verify(SECRET, changed) is None


@SOME
@given(text=st.one_of(ANY_TEXT, st.text(alphabet="abcdefABCDEF0123456789-_.=", max_size=80)))
def test_arbitrary_text_is_never_a_token(text: str) -> None:
    assert tokens.verify(SECRET, text) is None


# --- webhook --------------------------------------------------------------------------------------------


def test_unsigned_or_badly_signed_posts_get_403_and_change_nothing(site: Path) -> None:
    signer = Signer()
    with serving(site, signer) as (url, store, _):
        before = dump(store)

        now = str(int(time.time()))
        genuine = signer.sign(b"[]", now)

        @FEW
        @given(signature=st.one_of(HEADER, st.just(genuine)),
               stamp=st.one_of(HEADER, st.integers(-10**30, 10**400).map(str), st.just(now)),
               body=st.binary(max_size=2000), content_type=CONTENT_TYPES)
        def check(signature: str, stamp: str, body: bytes, content_type: str) -> None:
            assume((signature, stamp, body) != (genuine, now, b"[]"))  # that one is a genuine post
            headers = {SIGNATURE_HEADER: signature, TIMESTAMP_HEADER: stamp, "Content-Type": content_type}
            status, _ = post(f"{url}/webhooks/sendgrid", body, headers)
            assert status in (400, 403)  # 400: the HTTP server itself refused a header it cannot parse
            assert dump(store) == before

        check()


def test_signed_bodies_of_any_bytes_get_a_4xx_or_200_and_bad_ones_are_kept(site: Path) -> None:
    signer = Signer()
    with serving(site, signer) as (url, store, send_id):
        events_before = rows(store, "SELECT count(*) FROM events")[0][0]

        @FEW
        @given(body=st.one_of(st.binary(max_size=3000),
                              st.lists(st.dictionaries(st.sampled_from(EVENT_FIELDS) | ANY_TEXT, JSON, max_size=6),
                                       max_size=5).map(lambda events: json.dumps(events).encode()),
                              JSON.map(lambda value: json.dumps(value).encode("utf-16"))),
               content_type=CONTENT_TYPES)
        def check(body: bytes, content_type: str) -> None:
            nonlocal events_before
            status, answer = post(f"{url}/webhooks/sendgrid", body, {**signer.headers(body),
                                                                      "Content-Type": content_type})
            assert status in (200, 400, 413, 422)
            if status == 400 and not answer.startswith(b"{"):  # uvicorn refused a header before the app ran
                assert rows(store, "SELECT count(*) FROM events")[0][0] == events_before
            elif status == 400:  # not an event array: kept once per distinct body, as it came
                assert rows(store, "SELECT count(*) FROM webhook_rejects WHERE body = ?", body) == [(1,)]
                assert rows(store, "SELECT count(*) FROM events")[0][0] == events_before
            elif status in (200, 422):
                counts = json.loads(answer)
                sent = len(json.loads(body))
                assert sum(counts[k] for k in ("applied", "duplicates", "unknown_type", "unmatched", "invalid")) == sent
                new = sent - counts["duplicates"]
                assert rows(store, "SELECT count(*) FROM events")[0][0] == events_before + new
                events_before += new

        check()


def test_an_absurd_value_in_one_event_never_costs_the_others(site: Path) -> None:
    signer = Signer()
    serial = itertools.count()
    with serving(site, signer) as (url, store, send_id):

        @FEW
        @given(field=st.sampled_from(EVENT_FIELDS), raw=RAW_JSON)
        def check(field: str, raw: str) -> None:
            link = f"https://example.org/article-{next(serial)}"
            good = event("click", send_id=str(send_id), url=link)
            bad = json.dumps({**event("bounce", "grace@example.org", send_id=str(send_id), type="bounce"),
                              field: "@@VALUE@@"}).replace('"@@VALUE@@"', raw)
            body = f"[{json.dumps(good)}, {bad}]".encode()
            status, answer = post(f"{url}/webhooks/sendgrid", body, signer.headers(body))
            counts = json.loads(answer)
            assert status in (200, 422), answer
            assert sum(counts[k] for k in ("applied", "duplicates", "unknown_type", "unmatched", "invalid")) == 2
            assert rows(store, "SELECT status FROM events WHERE url = ?", link) == [("applied",)]

        check()


# --- unsubscribe ----------------------------------------------------------------------------------------

FORM_BODIES = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(st.sampled_from(["action", "List-Unsubscribe", "csrf"]) | ANY_TEXT,
                    st.sampled_from(["unsubscribe", "resubscribe", "One-Click"]) | ANY_TEXT, max_size=3)
    .map(lambda fields: urlencode(fields, encoding="utf-8", errors="surrogatepass").encode()),
    st.sampled_from(["resubscribe", "unsubscribe", "One-Click"]).map(
        lambda value: (f'--B\r\nContent-Disposition: form-data; name="action"\r\n\r\n{value}\r\n--B--\r\n'
                       f'').encode()),
)


def test_unsubscribe_posts_never_fail_and_never_undo_without_the_browser(site: Path) -> None:
    """Whatever is posted: a 4xx changes nothing; a 200 unsubscribes; nothing re-subscribes the address that
    was unsubscribed before (no post here holds the undo cookie of the browser that did it)."""
    signer = Signer()
    serial = itertools.count()
    with serving(site, signer) as (url, store, _):
        left = tokens.sign(SECRET, email="ada@example.org", list_name="sample", issue="001-hello")
        status, _, _ = request("POST", f"{url}/unsubscribe/{left}", data=b"List-Unsubscribe=One-Click",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200

        @FEW
        @given(content_type=CONTENT_TYPES, body=FORM_BODIES,
               fetch_site=st.sampled_from(["same-origin", "cross-site", "same-site", "none"]) | HEADER | st.none(),
               origin=st.sampled_from([url, "null", "https://evil.example"]) | HEADER | st.none(),
               cookie=st.one_of(st.none(), HEADER, st.builds(lambda n, v: f"nl_undo_{n}={v}",
                                                             st.text("0123456789abcdef", min_size=16, max_size=16),
                                                             HEADER)))
        def check(content_type: str, body: bytes, fetch_site: str | None, origin: str | None,
                  cookie: str | None) -> None:
            headers = {"Content-Type": content_type}
            headers.update({name: value for name, value in (("Sec-Fetch-Site", fetch_site), ("Origin", origin),
                                                            ("Cookie", cookie)) if value is not None})
            fresh = f"reader-{next(serial)}@example.org"
            token = tokens.sign(SECRET, email=fresh, list_name="sample", issue="001-hello")
            before = dump(store)
            status, _ = post(f"{url}/unsubscribe/{token}", body, headers)
            assert status in (200, 400, 403, 413, 415)
            if status == 200:
                assert rows(store, "SELECT reason FROM suppressions WHERE email = ?", fresh) == [("unsubscribed",)]
            else:
                assert dump(store) == before
            status, _ = post(f"{url}/unsubscribe/{left}", body, headers)
            assert status in (200, 400, 403, 413, 415)
            assert rows(store, "SELECT reason FROM suppressions WHERE email = ?", "ada@example.org") == [
                ("unsubscribed",)]

        check()


def test_bad_tokens_in_the_path_change_nothing(site: Path) -> None:
    with serving(site, Signer()) as (url, store, _):
        before = dump(store)

        @FEW
        @given(token=ANY_TEXT, method=st.sampled_from(["GET", "POST"]))
        def check(token: str, method: str) -> None:
            path = quote(token.encode("utf-8", "surrogatepass"), safe="")
            status, _, _ = request(method, f"{url}/unsubscribe/{path}", data=b"List-Unsubscribe=One-Click"
                                   if method == "POST" else None)
            # 307: a path ending in "/" is sent to the same path without it (Starlette's slash redirect)
            assert status in (400, 404) or (status == 307 and token.endswith("/"))
            assert dump(store) == before

        check()


# --- archive --------------------------------------------------------------------------------------------

PUBLIC = {"", "index.html", "feed.xml", "unsubscribe/", "unsubscribe/index.html", "001-hello/",
          "001-hello/index.html", "001-hello/images/square.png"}


def test_archive_paths_are_a_page_a_redirect_or_404(site: Path) -> None:
    with serving(site, Signer()) as (url, _, _):
        parts = urlsplit(url)

        @FEW
        @given(path=st.one_of(ANY_TEXT, st.lists(st.sampled_from(["..", ".", "001-hello", "images", "square.png",
                                                                   "issue.yaml", "", "%2e%2e", "index.html"]),
                                                 max_size=5).map("/".join)))
        def check(path: str) -> None:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
            try:
                conn.request("GET", "/archive/" + quote(path.encode("utf-8", "surrogatepass"), safe="/%"))
                answer = conn.getresponse()
                answer.read()
            finally:
                conn.close()
            assert answer.status in (200, 308, 404)
            if answer.status == 200:
                assert unquote(path) in PUBLIC
            if answer.status == 308:
                assert unquote(path) + "/" in PUBLIC

        check()
