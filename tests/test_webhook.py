"""Webhook signature, parsing and event meaning, without a server (test_web.py posts through a real one)."""

from __future__ import annotations

import base64
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from loop_support import Signer, body_of, event
from sendgrid.helpers.eventwebhook import EventWebhook

from pipeline.errors import ConfigError
from pipeline.web.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookError,
    WebhookForbidden,
    event_key,
    parse_events,
    public_key_from_base64,
    public_key_from_env,
    suppression_reason,
    verify_signature,
)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def test_our_check_and_sendgrids_helper_agree_on_a_genuine_post(signer: Signer) -> None:
    body = body_of([event("delivered"), event("open", "grace@example.org")])
    headers = signer.headers(body)
    key = public_key_from_base64(signer.public_base64)
    verify_signature(key, body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER])
    helper = EventWebhook(signer.public_base64)
    assert helper.verify_signature(body.decode(), headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER])


@pytest.mark.parametrize("change", ["body", "timestamp", "signature"])
def test_tampered_posts_are_refused_by_both(signer: Signer, change: str) -> None:
    body = body_of([event("delivered")])
    headers = signer.headers(body)
    sig, stamp = headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER]
    if change == "body":
        body = body.replace(b"delivered", b"bounce")
    elif change == "timestamp":
        stamp = str(int(stamp) - 1)
    else:
        raw = bytearray(base64.b64decode(sig))
        raw[-1] ^= 1
        sig = base64.b64encode(bytes(raw)).decode()
    key = public_key_from_base64(signer.public_base64)
    with pytest.raises(WebhookForbidden):
        verify_signature(key, body, sig, stamp)
    assert not EventWebhook(signer.public_base64).verify_signature(body.decode(), sig, stamp)


def test_another_key_is_refused(signer: Signer) -> None:
    body = body_of([event("delivered")])
    headers = Signer().headers(body)
    with pytest.raises(WebhookForbidden, match="does not match"):
        verify_signature(public_key_from_base64(signer.public_base64), body,
                         headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER])


def test_stale_and_future_timestamps_are_refused_even_when_signed(signer: Signer) -> None:
    key = public_key_from_base64(signer.public_base64)
    body = body_of([event("delivered")])
    now = time.time()
    for stamp in (int(now) - 601, int(now) + 601):
        headers = signer.headers(body, timestamp=stamp)
        with pytest.raises(WebhookForbidden, match="timestamp"):
            verify_signature(key, body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], now=now)
    headers = signer.headers(body, timestamp=int(now) - 599)
    verify_signature(key, body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], now=now)


@pytest.mark.parametrize(("sig", "stamp"), [(None, "1"), ("abc", None), ("not base64!", "1700000000"),
                                            ("YWJj", "yesterday")])
def test_missing_or_malformed_headers_are_refused(signer: Signer, sig: str | None, stamp: str | None) -> None:
    with pytest.raises(WebhookForbidden):
        verify_signature(public_key_from_base64(signer.public_base64), b"[]", sig, stamp)


def test_public_key_forms(signer: Signer) -> None:
    pem = f"-----BEGIN PUBLIC KEY-----\n{signer.public_base64}\n-----END PUBLIC KEY-----\n"
    assert public_key_from_base64(pem).public_numbers() == public_key_from_base64(signer.public_base64).public_numbers()
    with pytest.raises(ConfigError, match="not a base64 public key"):
        public_key_from_base64("not-a-key")
    with pytest.raises(ConfigError, match="holds whitespace"):
        public_key_from_base64("not a key")
    rsa_der = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigError, match="P-256"):
        public_key_from_base64(base64.b64encode(rsa_der).decode())
    with pytest.raises(ConfigError, match="SENDGRID_WEBHOOK_PUBLIC_KEY is not set"):
        public_key_from_env({})


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "not valid JSON"), (b"\xff\xfe", "not valid JSON"), (b'{"event": "open"}', "JSON array"),
    (b'[{"event": "open"}, 3]', "JSON array"),
])
def test_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(WebhookError, match=message) as caught:
        parse_events(body)
    assert caught.value.status == 400


def test_event_identity_survives_a_changed_sg_event_id_but_not_a_different_event() -> None:
    first = event("click", url="https://example.org/a")
    retried = dict(first, sg_event_id="a-new-id-on-retry")
    assert event_key(first) == event_key(retried)
    assert event_key(first) != event_key(dict(first, url="https://example.org/b"))
    assert event_key(first) != event_key(dict(first, timestamp=first["timestamp"] + 1))
    assert event_key(first) != event_key(dict(first, email="grace@example.org"))


@pytest.mark.parametrize(("fields", "reason"), [
    ({"event": "bounce", "type": "bounce"}, "bounce"),
    ({"event": "bounce", "type": "blocked"}, "block"),
    ({"event": "dropped", "reason": "Bounced Address"}, "bounce"),
    ({"event": "dropped", "reason": "Invalid"}, "invalid"),
    ({"event": "dropped", "reason": "Unsubscribed Address"}, "unsubscribe"),
    ({"event": "dropped", "reason": "Spam Content (if Spam Checker app is enabled)"}, None),
    ({"event": "dropped", "reason": "Invalid SMTPAPI header"}, None),
    ({"event": "spamreport"}, "spamreport"),
    ({"event": "unsubscribe"}, "unsubscribe"),
    ({"event": "group_unsubscribe", "asm_group_id": 7}, "group_unsubscribe"),
    ({"event": "delivered"}, None), ({"event": "open"}, None), ({"event": "click"}, None),
    ({"event": "deferred"}, None), ({"event": "processed"}, None),
])
def test_which_events_suppress(fields: dict[str, object], reason: str | None) -> None:
    assert suppression_reason(fields) == reason


def test_deeply_nested_json_is_refused_not_crashed() -> None:
    with pytest.raises(WebhookError, match="not valid JSON"):
        parse_events(b"[" * 100_000 + b"]" * 100_000)
