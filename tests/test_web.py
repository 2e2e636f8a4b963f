"""The serve app through a real uvicorn server on 127.0.0.1: unsubscribe, webhook, archive, logs."""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from loop_support import SECRET, Signer, body_of, event, request, running
from sendgrid.helpers.eventwebhook import EventWebhook
from storekit import dump, seed_send, select, site_store, suppressions

from pipeline import tokens
from pipeline.config import Config
from pipeline.store import Store
from pipeline.web.app import Settings, create_app, redact
from pipeline.web.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER

FIXTURES = Path(__file__).parent / "fixtures"


def token(email: str = "ada@example.org") -> str:
    return tokens.sign(SECRET, email=email, list_name="sample", issue="001-hello")


ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}
SAME_ORIGIN = {**ONE_CLICK, "Sec-Fetch-Site": "same-origin"}


def press_unsubscribe(page: str) -> tuple[int, dict[str, str], bytes]:
    """The page's Unsubscribe button as a browser presses it; the answer's headers carry `cookie` to send back."""
    status, headers, body = request("POST", page, data=b"action=unsubscribe", headers=SAME_ORIGIN)
    undo = headers.get("set-cookie", "").split(";", 1)[0]
    return status, {**SAME_ORIGIN, **({"Cookie": undo} if undo else {})}, body


# --- unsubscribe ----------------------------------------------------------------------------------------


def test_one_click_post_unsubscribes_at_once_and_a_second_changes_nothing(server: tuple[str, Store, int]) -> None:
    url, store, _ = server
    status, headers, body = request("POST", f"{url}/unsubscribe/{token()}", data=b"List-Unsubscribe=One-Click",
                                    headers=ONE_CLICK)
    assert status == 200 and headers["cache-control"] == "no-store"
    assert suppressions(store) == {"ada@example.org": ("unsubscribed", "unsubscribe-link sample 001-hello")}
    before = dump(store)
    assert request("POST", f"{url}/unsubscribe/{token()}", data=b"List-Unsubscribe=One-Click",
                   headers=ONE_CLICK)[0] == 200
    assert dump(store) == before


def test_one_click_as_multipart_form_data(server: tuple[str, Store, int]) -> None:
    url, store, _ = server
    body = (b'--XyZ\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--XyZ--\r\n')
    status, _, _ = request("POST", f"{url}/unsubscribe/{token('grace@example.org')}", data=body,
                           headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert status == 200
    assert "grace@example.org" in suppressions(store)


def test_get_never_unsubscribes(server: tuple[str, Store, int]) -> None:
    url, store, _ = server
    before = dump(store)
    for _ in range(3):
        status, headers, body = request("GET", f"{url}/unsubscribe/{token()}")
        assert status == 200 and b"<form" in body and b"ada@example.org" in body
        assert headers["referrer-policy"] == "no-referrer"
    assert request("HEAD", f"{url}/unsubscribe/{token()}")[0] == 200
    assert dump(store) == before


def test_bad_tokens_get_one_answer_whatever_the_address(server: tuple[str, Store, int]) -> None:
    url, store, _ = server
    good = token()
    payload, mac = good.split(".")
    forged = tokens.sign(b"another-secret-of-enough-length", email="ada@example.org", list_name="sample",
                         issue="001-hello")
    stranger = tokens.sign(b"another-secret-of-enough-length", email="nobody@example.net", list_name="x", issue="y")
    altered = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + mac
    bad = [forged, stranger, altered, good[:-3], payload, f"{payload}.", "garbage", "a.b"]
    before = dump(store)
    answers = set()
    for bad_token in bad:
        for method, data in (("GET", None), ("POST", b"List-Unsubscribe=One-Click")):
            status, _, body = request(method, f"{url}/unsubscribe/{bad_token}", data=data, headers=ONE_CLICK)
            answers.add((status, body))
    assert len(answers) == 1 and next(iter(answers))[0] == 400
    assert dump(store) == before


def test_post_without_one_click_or_action_is_refused(server: tuple[str, Store, int]) -> None:
    url, store, _ = server
    before = dump(store)
    assert request("POST", f"{url}/unsubscribe/{token()}", data=b"", headers=ONE_CLICK)[0] == 400
    assert request("POST", f"{url}/unsubscribe/{token()}", data=b"x" * 70_000, headers=ONE_CLICK)[0] == 413
    assert dump(store) == before


def test_resubscribe_does_not_lift_a_bounce(server: tuple[str, Store, int]) -> None:
    url, store, _ = server
    store.add_suppression("alan@example.org", reason="bounced", source="webhook bounce")
    page = f"{url}/unsubscribe/{token('alan@example.org')}"
    status, browser, body = press_unsubscribe(page)
    assert status == 200 and b"Re-subscribe" not in body and "Cookie" not in browser  # nothing of ours to undo
    status, _, body = request("POST", page, data=b"action=resubscribe", headers=browser)
    assert status == 403 and b"Not re-subscribed" in body
    assert suppressions(store)["alan@example.org"] == ("bounced", "webhook bounce")


def chromium() -> Any:
    from playwright.sync_api import sync_playwright

    from pipeline.build.preview import launch_chromium

    manager = sync_playwright().start()
    return manager, launch_chromium(manager)


def local_only(page: Any) -> None:
    """Chromium may load nothing but our server: any other request is aborted before it leaves."""
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("http://127.0.0.1:")
               else route.abort())


def test_confirm_and_resubscribe_buttons_in_chromium(server: tuple[str, Store, int]) -> None:
    url, store, _ = server
    manager, browser = chromium()
    try:
        page = browser.new_page()
        local_only(page)
        page.goto(f"{url}/unsubscribe/{token('grace@example.org')}")
        assert "grace@example.org" in page.inner_text("body")
        assert suppressions(store) == {}
        page.click("button#unsubscribe")
        page.wait_for_selector("button#resubscribe")
        assert "You are unsubscribed" in page.inner_text("h1")
        assert suppressions(store)["grace@example.org"][0] == "unsubscribed"
        page.click("button#resubscribe")
        page.wait_for_selector("text=You are subscribed again")
        assert suppressions(store) == {}
    finally:
        browser.close()
        manager.stop()


def test_logs_never_show_the_token_or_the_address(server: tuple[str, Store, int],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    url, _, _ = server
    caplog.set_level(logging.INFO, logger="pipeline.web.app")
    request("GET", f"{url}/unsubscribe/{token()}")
    request("POST", f"{url}/unsubscribe/{token()}", data=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
    text = caplog.text
    assert "/unsubscribe/[token]" in text
    assert token() not in text and "ada@example.org" not in text and token().split(".")[0] not in text
    assert redact("/news/unsubscribe/abc.def") == "/news/unsubscribe/[token]"


# --- webhook --------------------------------------------------------------------------------------------


def post(url: str, signer: Signer, events: list[dict[str, Any]], **kwargs: Any) -> tuple[int, dict[str, Any]]:
    body = body_of(events)
    status, _, answer = request("POST", f"{url}/webhooks/sendgrid", data=body, headers=signer.headers(body, **kwargs))
    return status, json.loads(answer)


def outcomes(store: Store) -> dict[str, str]:
    return dict(select(store, "SELECT d.email, s.outcome FROM delivery_status s JOIN deliveries d "
                              "ON d.id = s.delivery_id"))


def test_signed_events_update_the_send_log_and_suppress(server: tuple[str, Store, int], signer: Signer) -> None:
    url, store, send_id = server
    sid = str(send_id)
    events = [
        event("processed", send_id=sid), event("delivered", send_id=sid, timestamp=1_768_500_010),
        event("open", send_id=sid, timestamp=1_768_500_100),
        event("click", send_id=sid, timestamp=1_768_500_200, url="https://example.org/hello"),
        event("bounce", "grace@example.org", send_id=sid, type="bounce", reason="550 no such user"),
        event("spamreport", "alan@example.org", send_id=sid),
        event("delivered", "alan@example.org", send_id=sid, timestamp=1_768_499_000),
    ]
    body = body_of(events)
    headers = signer.headers(body)
    assert EventWebhook(signer.public_base64).verify_signature(body.decode(), headers[SIGNATURE_HEADER],
                                                               headers[TIMESTAMP_HEADER])
    status, _, answer = request("POST", f"{url}/webhooks/sendgrid", data=body, headers=headers)
    assert status == 200, answer
    assert json.loads(answer)["applied"] == 7
    assert outcomes(store) == {"ada@example.org": "delivered", "grace@example.org": "bounce",
                                 "alan@example.org": "delivered"}
    assert suppressions(store) == {"grace@example.org": ("bounced", "webhook bounce"),
                                     "alan@example.org": ("complained", "webhook spamreport")}
    # SendGrid retries the same batch (new sg_event_ids, new signature): nothing changes.
    before = dump(store)
    status, counts = post(url, signer, [dict(e, sg_event_id=f"retry-{i}") for i, e in enumerate(events)])
    assert status == 200 and counts["duplicates"] == 7 and counts["applied"] == 0
    assert dump(store) == before
    # An out-of-order `processed` never moves a delivered message back.
    post(url, signer, [event("processed", send_id=sid, timestamp=1_768_500_500)])
    assert outcomes(store)["ada@example.org"] == "delivered"


@pytest.mark.parametrize("attack", ["tampered", "stale", "unsigned", "other key"])
def test_forged_posts_get_403_and_change_nothing(server: tuple[str, Store, int], signer: Signer, attack: str) -> None:
    url, store, send_id = server
    body = body_of([event("bounce", send_id=str(send_id))])
    headers = signer.headers(body)
    if attack == "tampered":
        body = body.replace(b"ada@", b"eve@")
    elif attack == "stale":
        headers = signer.headers(body, timestamp=int(headers[TIMESTAMP_HEADER]) - 3600)
    elif attack == "unsigned":
        headers = {"Content-Type": "application/json"}
    else:
        headers = Signer().headers(body)
    before = dump(store)
    status, _, answer = request("POST", f"{url}/webhooks/sendgrid", data=body, headers=headers)
    assert status == 403 and "error" in json.loads(answer)
    assert dump(store) == before


def test_events_are_stored_without_the_readers_ip_and_user_agent(server: tuple[str, Store, int],
                                                                 signer: Signer) -> None:
    url, store, send_id = server
    status, counts = post(url, signer, [event("open", send_id=str(send_id), ip="203.0.113.9",
                                              useragent="Mozilla/5.0 (Reader's phone)")])
    assert status == 200 and counts["applied"] == 1
    ((payload,),) = select(store, "SELECT payload FROM events WHERE event = 'open'")
    stored = json.loads(payload)
    assert stored["email"] == "ada@example.org" and "ip" not in stored and "useragent" not in stored
    assert "203.0.113.9" not in payload and "Reader's phone" not in payload


def test_bad_input_gets_a_clear_4xx_and_loses_nothing(server: tuple[str, Store, int], signer: Signer) -> None:
    url, store, send_id = server
    junk = b'[{"event": "open", "email": '
    status, _, answer = request("POST", f"{url}/webhooks/sendgrid", data=junk, headers=signer.headers(junk))
    assert status == 400 and "not valid JSON" in json.loads(answer)["error"]
    huge = b"[" + b" " * 70_000 + b"]"
    status, _, answer = request("POST", f"{url}/webhooks/sendgrid", data=huge, headers=signer.headers(huge))
    assert status == 413
    status, counts = post(url, signer, [
        event("delivered", send_id=str(send_id)),
        event("teleported", send_id=str(send_id)),
        event("delivered", send_id="999"),
        event("delivered", issue="999-other", send_id=str(send_id)),
        {"event": "open"},
    ])
    assert status == 422 and "error" in counts
    assert (counts["applied"], counts["unknown_type"], counts["unmatched"], counts["invalid"]) == (1, 1, 2, 1)
    kept = sorted(select(store, "SELECT event, status FROM events"))
    rejects = [bytes(body) for (body,) in select(store, "SELECT body FROM webhook_rejects")]
    assert kept == [("delivered", "applied"), ("delivered", "unmatched"), ("delivered", "unmatched"),
                    ("open", "invalid"), ("teleported", "unknown_type")]
    assert rejects == [junk]


# --- archive --------------------------------------------------------------------------------------------


def test_archive_in_chromium(server: tuple[str, Store, int], config: Config) -> None:
    url, store, _ = server
    seed_send(store, issue="002-second", message_id="msg-2")
    manager, browser = chromium()
    try:
        page = browser.new_page()
        local_only(page)
        page.goto(f"{url}/archive/")
        links = page.eval_on_selector_all("ol.issues a", "els => els.map(e => [e.textContent, e.href])")
        assert [text for text, _ in links] == ["Test Weekly No. 2: second steps", "Test Weekly No. 1: hello"]
        with page.expect_navigation():  # until the new page's load event: its image has loaded by then
            page.click("text=Test Weekly No. 1: hello")
        assert page.url == f"{url}/archive/001-hello/"
        body = page.inner_text("body")
        assert "Hello, readers" in body and "A Useful Paper" in body and "%%" not in page.content()
        assert page.eval_on_selector("img", "img => img.complete && img.naturalWidth") > 0
        page.click("text=Unsubscribe")
        page.wait_for_selector("text=public web version")
        assert page.url == f"{url}/archive/unsubscribe/"
    finally:
        browser.close()
        manager.stop()
    status, headers, feed = request("GET", f"{url}/archive/feed.xml")
    assert status == 200 and headers["content-type"].startswith("application/atom+xml")
    titles = [e.text for e in ET.fromstring(feed).iter("{http://www.w3.org/2005/Atom}title")]
    assert titles == ["Test Weekly", "Test Weekly No. 2: second steps", "Test Weekly No. 1: hello"]


def test_archive_serves_only_sent_issues_and_their_images(server: tuple[str, Store, int]) -> None:
    url, _, _ = server
    assert request("GET", f"{url}/archive/002-second/")[0] == 404  # not sent yet
    assert request("GET", f"{url}/archive/001-hello/issue.yaml")[0] == 404
    assert request("GET", f"{url}/archive/001-hello/../../newsletter.yaml")[0] == 404
    status, headers, image = request("GET", f"{url}/archive/001-hello/images/square.png")
    assert status == 200 and headers["content-type"] == "image/png" and image.startswith(b"\x89PNG")
    status, _, page = request("GET", f"{url}/archive/001-hello")  # redirected to the slash form
    assert status == 200 and b"Hello, readers" in page
    assert request("GET", f"{url}/")[0] == 200


def test_behind_a_proxy_that_strips_a_prefix(config: Config) -> None:
    """The proxy publishes us under /news/ and strips it (as nginx `proxy_pass http://127.0.0.1:8025/;` does)."""
    store = site_store(config.root)
    seed_send(store)
    store.close()
    settings = Settings(config=config, secret=SECRET, webhook_key=None, open_store=lambda: site_store(config.root))
    with running(create_app(settings), root_path="/news", proxy_headers=True) as url:
        status, _, page = request("GET", f"{url}/archive/", headers={"X-Forwarded-Proto": "https"})
        assert status == 200 and b'href="001-hello/"' in page
        status, headers, _ = request("GET", f"{url}/archive/001-hello", headers={"X-Forwarded-Proto": "https"})
        assert status == 200
        status, _, page = request("GET", f"{url}/archive/001-hello/")
        assert status == 200 and b'src="images/square.png"' in page and b'href="../unsubscribe/"' in page
        assert request("POST", f"{url}/webhooks/sendgrid", data=b"[]")[0] == 503  # no key: SendGrid retries


def test_a_theme_that_no_longer_renders_is_a_500_not_a_crash(server: tuple[str, Store, int], config: Config) -> None:
    url, _, _ = server
    (config.theme_dir / "email.mjml.j2").write_text("<mjml>{{ nonsense.field }}</mjml>", "utf-8")
    status, _, body = request("GET", f"{url}/archive/001-hello/")
    assert status == 500 and b"cannot be shown" in body
    assert request("GET", f"{url}/archive/")[0] == 200


def test_a_bounce_after_the_unsubscribe_survives_a_resubscribe(server: tuple[str, Store, int], signer: Signer) -> None:
    """The link's suppression came first (so the bounce was not stored over it); re-subscribing must not
    open the way to an address that bounces."""
    url, store, send_id = server
    page = f"{url}/unsubscribe/{token('grace@example.org')}"
    status, browser, _ = press_unsubscribe(page)
    assert status == 200
    assert post(url, signer, [event("bounce", "grace@example.org", send_id=str(send_id), type="bounce")])[0] == 200
    assert suppressions(store)["grace@example.org"][0] == "unsubscribed"
    status, _, body = request("POST", page, data=b"action=resubscribe", headers=browser)
    assert status == 200 and b"Not re-subscribed" in body
    assert suppressions(store)["grace@example.org"] == ("bounced", "webhook bounce")
