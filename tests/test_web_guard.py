"""What outsiders can do to `serve` (issue 9): cross-site button posts, non-form bodies, undoing someone
else's unsubscribe, respelled tokens, absurd webhook values and headers, issue pages without their slash.
Through a real uvicorn server (and real Chromium where a browser decides), as test_web.py does."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from loop_support import SECRET, Signer, body_of, event, request, running
from storekit import dump, seed_send, select, site_store

from pipeline import tokens
from pipeline.config import Config
from pipeline.store import Store
from pipeline.web import guard as webguard
from pipeline.web.app import Settings, create_app
from pipeline.web.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER

FIXTURES = Path(__file__).parent / "fixtures"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SAME_ORIGIN = {**FORM, "Sec-Fetch-Site": "same-origin"}


def token(email: str = "ada@example.org") -> str:
    return tokens.sign(SECRET, email=email, list_name="sample", issue="001-hello")


def suppressed(store: Store) -> set[str]:
    return {s.email for s in store.list_suppressions()}


def undo_cookie_from(headers: dict[str, str]) -> dict[str, str]:
    """The Cookie header a browser would send back after this answer (empty if none was set)."""
    cookie = headers.get("set-cookie", "")
    return {"Cookie": cookie.split(";", 1)[0]} if cookie else {}


# --- the page's buttons ---------------------------------------------------------------------------------


@pytest.mark.parametrize("marks", [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                                   {"Origin": "https://evil.example"}, {"Origin": "http://127.0.0.1:1"}])
def test_buttons_refuse_posts_a_browser_marks_as_from_elsewhere(server: tuple[str, Store, int],
                                                                 marks: dict[str, str]) -> None:
    url, store, _ = server
    before = dump(store)
    for action in (b"action=unsubscribe", b"action=resubscribe"):
        status, _, body = request("POST", f"{url}/unsubscribe/{token()}", data=action, headers={**FORM, **marks})
        assert status == 403 and b"only on its own page" in body
    assert dump(store) == before
    # RFC 8058: a mail client's One-Click POST needs the token only, wherever it comes from.
    status, _, _ = request("POST", f"{url}/unsubscribe/{token()}", data=b"List-Unsubscribe=One-Click",
                           headers={**FORM, **marks})
    assert status == 200 and suppressed(store) == {"ada@example.org"}


@pytest.mark.parametrize("origin", ["https://news.example.org", "self"])
def test_buttons_accept_our_own_origin(server: tuple[str, Store, int], origin: str) -> None:
    url, store, _ = server
    own = url if origin == "self" else origin  # base_url of the fixture site, or the address we were sent to
    status, _, _ = request("POST", f"{url}/unsubscribe/{token()}", data=b"action=unsubscribe",
                           headers={**FORM, "Origin": own})
    assert status == 200 and suppressed(store) == {"ada@example.org"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "", "application/x-www-form-urlencodedX",
                                          "x" * 600])
def test_only_form_bodies_are_read(server: tuple[str, Store, int], content_type: str) -> None:
    url, store, _ = server
    before = dump(store)
    headers = {"Content-Type": content_type}  # urllib would add a form type if none were given
    for body in (b"List-Unsubscribe=One-Click", b"action=unsubscribe"):
        assert request("POST", f"{url}/unsubscribe/{token()}", data=body, headers=headers)[0] == 415
    assert dump(store) == before
    status, _, _ = request("POST", f"{url}/unsubscribe/{token()}", data=b"List-Unsubscribe=One-Click",
                           headers={"Content-Type": "Application/X-WWW-Form-Urlencoded; charset=utf-8"})
    assert status == 200


def test_only_the_unsubscribing_browser_may_undo_and_only_for_a_while(server: tuple[str, Store, int]) -> None:
    url, store, _ = server
    page, other = f"{url}/unsubscribe/{token()}", f"{url}/unsubscribe/{token('grace@example.org')}"
    status, headers, body = request("POST", page, data=b"action=unsubscribe", headers=SAME_ORIGIN)
    owner = undo_cookie_from(headers)
    set_cookie = headers["set-cookie"].lower()
    assert status == 200 and b"Re-subscribe" in body
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "path=" not in set_cookie
    assert "max-age=1800" in set_cookie and "secure" not in set_cookie  # plain http here; https sets Secure
    name, value = owner["Cookie"].split("=", 1)
    assert name == webguard.undo_cookie_name(token())
    now = time.time()
    _, grace_headers, _ = request("POST", other, data=b"action=unsubscribe", headers=SAME_ORIGIN)
    refused = [
        {},  # a stranger with the forwarded mail
        undo_cookie_from(grace_headers),  # a cookie for another link
        {"Cookie": f"{name}={webguard.undo_cookie(SECRET, token(), now=now - 3600)}"},  # expired
        {"Cookie": f"{name}={webguard.undo_cookie(b'another-secret-of-enough-length', token(), now=now)}"},
        {"Cookie": f"{name}={value[:-1]}{'Q' if value.endswith('A') else 'A'}"},  # altered
        {"Cookie": f"{name}={int(now) + 10**6}.{owner['Cookie'].rsplit('.', 1)[1]}"},  # later expiry glued on
    ]
    for cookie in refused:
        status, _, body = request("POST", page, data=b"action=resubscribe", headers={**SAME_ORIGIN, **cookie})
        assert status == 403 and b"in the browser that made it" in body, cookie
        assert "ada@example.org" in suppressed(store)
    # A stranger pressing Unsubscribe on a link already used gets no undo of their own either.
    status, headers, body = request("POST", page, data=b"action=unsubscribe", headers=SAME_ORIGIN)
    assert status == 200 and "set-cookie" not in headers and b"Re-subscribe" not in body
    status, headers, body = request("POST", page, data=b"action=resubscribe", headers={**SAME_ORIGIN, **owner})
    assert status == 200 and b"subscribed again" in body and "max-age=0" in headers["set-cookie"].lower()
    assert suppressed(store) == {"grace@example.org"}


def test_undo_cookie_is_secure_behind_https(config: Config) -> None:
    store = site_store(config.root)
    seed_send(store)
    store.close()
    settings = Settings(config=config, secret=SECRET, webhook_key=None, open_store=lambda: site_store(config.root))
    with running(create_app(settings), proxy_headers=True, forwarded_allow_ips="127.0.0.1") as url:
        _, headers, _ = request("POST", f"{url}/unsubscribe/{token()}", data=b"action=unsubscribe",
                                headers={**SAME_ORIGIN, "X-Forwarded-Proto": "https"})
    assert "; secure" in headers["set-cookie"].lower()


def test_a_cross_site_page_cannot_resubscribe_in_chromium(server: tuple[str, Store, int]) -> None:
    """The owner unsubscribes, then opens another site whose form posts Re-subscribe to us: Chromium marks it
    cross-site and withholds the SameSite=Strict cookie; the address stays unsubscribed."""
    from test_web import chromium, local_only

    url, store, _ = server
    page_url = f"{url}/unsubscribe/{token('grace@example.org')}"
    attack = (f'<form method="post" action="{page_url}"><input name="action" value="resubscribe"></form>'
              "<script>document.forms[0].submit()</script>")
    manager, browser = chromium()
    try:
        page = browser.new_page()
        local_only(page)
        page.route("http://attacker.test/**", lambda route: route.fulfill(body=attack, content_type="text/html"))
        page.goto(page_url)
        page.click("button#unsubscribe")
        page.wait_for_selector("button#resubscribe")
        with page.expect_navigation(url=page_url):
            page.goto("http://attacker.test/")
        assert "Request refused" in page.inner_text("h1")
        assert suppressed(store) == {"grace@example.org"}
        stranger = browser.new_context().new_page()  # another browser profile, with the forwarded link
        local_only(stranger)
        stranger.goto(page_url)
        stranger.click("button#unsubscribe")
        stranger.wait_for_selector("text=You are unsubscribed")
        assert stranger.query_selector("button#resubscribe") is None
    finally:
        browser.close()
        manager.stop()


# --- tokens ---------------------------------------------------------------------------------------------


def test_only_the_canonical_spelling_of_a_token_is_accepted(server: tuple[str, Store, int]) -> None:
    url, store, _ = server
    good = token()
    payload, mac = good.split(".")
    respelled = [f"{payload}.{mac}=", f"{payload}.{mac}==", f"{payload}=.{mac}", f"{payload}.{mac[:-1]}"
                 + chr(ord(mac[-1]) ^ 1), good + "%20", " " + good, good.replace("-", "+").replace("_", "/")]
    assert len(mac) % 4 != 0  # so that padding could be added
    before = dump(store)
    for spelling in [s for s in respelled if s != good]:
        status, _, _ = request("POST", f"{url}/unsubscribe/{spelling.replace(' ', '%20').replace('/', '%2F')}",
                               data=b"List-Unsubscribe=One-Click", headers=FORM)
        assert status in (400, 404), spelling
    assert dump(store) == before


# --- webhook --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stamp", ["9" * 400, "9" * 5000, "-1", "+1700000000", " 1700000000", "1_700_000_000",
                                   "1700000000.0", "١٧٠٠٠٠٠٠٠٠", "1e9"])
def test_absurd_timestamp_headers_are_refused_with_403(server: tuple[str, Store, int], signer: Signer,
                                                       stamp: str) -> None:
    url, store, send_id = server
    body = body_of([event("delivered", send_id=str(send_id))])
    headers = {**signer.headers(body), TIMESTAMP_HEADER: stamp.encode("utf-8").decode("latin-1")}
    before = dump(store)
    status, _, answer = request("POST", f"{url}/webhooks/sendgrid", data=body, headers=headers)
    assert status == 403 and "error" in json.loads(answer)
    assert dump(store) == before


def raw_post(url: str, head: str) -> int:
    """Send only a request head (no body) on a raw socket; the status of the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1"))
        answer = sock.recv(65536).split(b" ", 2)
    return int(answer[1])


def test_an_unsigned_post_is_refused_before_its_body_is_read(server: tuple[str, Store, int]) -> None:
    """It claims a terabyte and sends nothing: answered at once from the headers alone."""
    url, store, _ = server
    before = dump(store)
    head = ("POST /webhooks/sendgrid HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000000000000\r\n\r\n")
    assert raw_post(url, head) == 403
    assert raw_post(url, head.replace("Content-Type", f"{SIGNATURE_HEADER}: MEUCIQ==\r\nContent-Type")) == 403
    assert dump(store) == before


ABSURD = [("timestamp", "1e999"), ("timestamp", "-1e999"), ("timestamp", "NaN"), ("timestamp", "1" * 5000),
          ("timestamp", "100000000000000000000000000000"), ("timestamp", '"1768500000"'), ("timestamp", "true"),
          ("timestamp", "-5"), ("email", '"ada\\ud800@example.org"'), ("email", '"' + "a" * 400 + '@x"'),
          ("email", '"ada@example.org\\r\\nBcc: eve@example.net"'), ("event", '"deliv\\udfffered"'),
          ("event", '["delivered"]'), ("nl_send_id", "1" * 300), ("nl_send_id", "1e999"), ("nl_send_id", "true"),
          ("nl_send_id", '"99999999999999999999999"'), ("nl_send_id", "-1"), ("nl_issue", '"\\ud800"'),
          ("nl_issue", '{"a": 1}'), ("url", '"https://x.example/\\udc00"'), ("url", "[[[[1]]]]")]


@pytest.mark.parametrize(("field", "value"), ABSURD)
def test_an_absurd_value_makes_one_event_invalid_not_the_batch(server: tuple[str, Store, int], signer: Signer,
                                                               field: str, value: str) -> None:
    url, store, send_id = server
    good = event("delivered", send_id=str(send_id))
    bad = json.dumps({**event("bounce", "grace@example.org", send_id=str(send_id), type="bounce"), field: 0})
    bad = bad.replace(f'"{field}": 0', f'"{field}": {value}')
    body = f"[{json.dumps(good)}, {bad}]".encode()
    status, _, answer = request("POST", f"{url}/webhooks/sendgrid", data=body, headers=signer.headers(body))
    counts = json.loads(answer)
    assert status == 422 and (counts["applied"], counts["invalid"]) == (1, 1), answer
    stored = dict(select(store, "SELECT status, occurred_at FROM events"))
    assert stored == {"applied": 1_768_500_000, "invalid": None if field == "timestamp" else 1_768_500_000}
    assert suppressed(store) == set()  # the invalid bounce suppressed nobody
    before = dump(store)
    status, _, answer = request("POST", f"{url}/webhooks/sendgrid", data=body, headers=signer.headers(body))
    assert status == 200 and json.loads(answer)["duplicates"] == 2  # SendGrid's retry changes nothing
    assert dump(store) == before


# --- archive --------------------------------------------------------------------------------------------


def test_an_issue_page_without_its_slash_redirects_to_it(server: tuple[str, Store, int]) -> None:
    url, _, _ = server
    parts = urlsplit(url)
    for path, location in (("/archive/001-hello", "001-hello/"), ("/archive/unsubscribe", "unsubscribe/"),
                           ("/archive/001-hello/index.html", None)):
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        conn.request("GET", path)
        answer = conn.getresponse()
        answer.read()
        conn.close()
        if location is None:
            assert answer.status == 200
        else:
            assert (answer.status, answer.getheader("location")) == (308, location)
    assert request("GET", f"{url}/archive/002-second")[0] == 404  # not published: no redirect either


def test_without_the_slash_the_images_load_in_chromium(server: tuple[str, Store, int]) -> None:
    from test_web import chromium, local_only

    url, _, _ = server
    manager, browser = chromium()
    try:
        page = browser.new_page()
        local_only(page)
        page.goto(f"{url}/archive/001-hello")
        assert page.url == f"{url}/archive/001-hello/"
        page.wait_for_load_state("load")
        assert page.eval_on_selector("img", "img => img.complete && img.naturalWidth") > 0
    finally:
        browser.close()
        manager.stop()
