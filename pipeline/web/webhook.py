"""SendGrid Event Webhook: check the signature, turn the posted JSON into events, apply them to the send log.

The web layer (web.py) only reads the body with a size limit and maps the exceptions here to status codes,
so everything that decides what an event *means* can be tested without a server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline import keys
from pipeline.errors import ConfigError, PipelineError
from pipeline.store import EventRecord, Store
from pipeline.web.events import (
    OUTCOME_RANK,
    SUPPRESSION_REASONS,
    UNSTORED_FIELDS,
    clean_text,
    sane_timestamp,
    suppression_reason,
)

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
PUBLIC_KEY_ENV = keys.PUBLIC_KEY_ENV
MAX_SKEW_SECONDS = 600
# SendGrid posts a batch every ~30 s or at ~768 KB; a few MB leaves room and still bounds memory.
MAX_BODY_BYTES = 5 * 1024 * 1024

DELIVERY_EVENTS = ("processed", "deferred", "delivered", "bounce", "dropped")
ENGAGEMENT_EVENTS = ("open", "click", "spamreport", "unsubscribe", "group_unsubscribe", "group_resubscribe")
KNOWN_EVENTS = frozenset(DELIVERY_EVENTS + ENGAGEMENT_EVENTS)
# The custom_args the send puts into every request; they come back as top-level keys of each event.
SEND_ID, ISSUE, LIST = "nl_send_id", "nl_issue", "nl_list"
# Fields that identify one event. sg_event_id is left out on purpose: SendGrid may change it on a retry,
# and a retried batch must change nothing.
IDENTITY_FIELDS = ("event", "email", "timestamp", "sg_message_id", SEND_ID, ISSUE, LIST, "url", "type",
                   "reason", "status", "response", "attempt", "asm_group_id", "useragent", "ip")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # ASCII digits only: int() would also take "+1", " 1", "1_0", "١"
MAX_SIGNATURE_CHARS = 200  # a P-256 ECDSA signature is at most 72 bytes of DER: 96 base64 characters
MAX_EMAIL_CHARS = 320
MAX_INT_DIGITS = 100
MAX_SEND_ID = 2**63 - 1  # SQLite's largest integer
_UNCLEAN = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # control characters, lone surrogates


class WebhookError(PipelineError):
    """A post the webhook refuses; `status` is the HTTP answer (403 forged, 4xx bad input)."""

    status = 400


class WebhookForbidden(WebhookError):
    status = 403


class WebhookTooLarge(WebhookError):
    status = 413


def public_key_from_base64(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid shows the verification key as base64 DER SubjectPublicKeyInfo (a PEM without its armour)."""
    armour = ("-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----")
    cleaned = text.strip()
    if cleaned.startswith(armour[0]) and cleaned.endswith(armour[1]):  # a PEM block: its line breaks belong
        cleaned = "".join(cleaned.removeprefix(armour[0]).removesuffix(armour[1]).splitlines())
    keys.checked(PUBLIC_KEY_ENV, cleaned, ConfigError)
    try:
        key = serialization.load_der_public_key(base64.b64decode(cleaned, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"{PUBLIC_KEY_ENV} is not a base64 public key ({exc}) — copy the verification key "
                          "from SendGrid's Mail Settings > Signed Event Webhook") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{PUBLIC_KEY_ENV} is not an ECDSA P-256 key — copy the Signed Event Webhook "
                          "verification key from SendGrid")
    return key


def public_key_from_env(environ: Mapping[str, str] = os.environ) -> ec.EllipticCurvePublicKey:
    text = environ.get(PUBLIC_KEY_ENV, "").strip()
    if not text:
        raise ConfigError(f"{PUBLIC_KEY_ENV} is not set — enable the Signed Event Webhook in SendGrid and put its "
                          "verification key into this environment variable (or start serve with --no-webhook)")
    return public_key_from_base64(text)


def signed_headers(signature: str | None, timestamp: str | None, *, now: float | None = None,
                   max_skew: float = MAX_SKEW_SECONDS) -> bytes:
    """The DER signature, if both headers have their shape and the timestamp is recent; else WebhookForbidden.

    Cheap and unable to fail otherwise, so an unsigned post is refused before its body is even read.
    """
    if not signature or not timestamp:
        raise WebhookForbidden(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header")
    if not _TIMESTAMP.fullmatch(timestamp) or len(signature) > MAX_SIGNATURE_CHARS:
        raise WebhookForbidden("malformed signature or timestamp header")
    try:
        der = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise WebhookForbidden("malformed signature or timestamp header") from None
    if abs((time.time() if now is None else now) - int(timestamp)) > max_skew:
        raise WebhookForbidden(f"timestamp is more than {max_skew:.0f} s away from this server's clock "
                               "(replayed post, or check the server clock)")
    return der


def verify_signature(key: ec.EllipticCurvePublicKey, body: bytes, signature: str | None, timestamp: str | None,
                     *, now: float | None = None, max_skew: float = MAX_SKEW_SECONDS) -> None:
    """Raise WebhookForbidden unless `signature` signs `timestamp + body` and the timestamp is recent.

    The timestamp is part of the signed bytes, so a fresh timestamp cannot be glued onto an old post.
    """
    der = signed_headers(signature, timestamp, now=now, max_skew=max_skew)
    assert timestamp is not None
    try:
        key.verify(der, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise WebhookForbidden("signature does not match the body") from None


def _parse_int(text: str) -> int | float:
    """JSON integers as int; one of absurd length as an infinity, so that its event (not the whole post) is
    invalid and Python's 4,300-digit limit on int() is never reached."""
    if len(text) <= MAX_INT_DIGITS:
        return int(text)
    return -math.inf if text.startswith("-") else math.inf


def parse_events(body: bytes) -> list[dict[str, Any]]:
    """The body must be a JSON array of objects; anything else is refused whole (400) before any change."""
    try:
        data = json.loads(body, parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise WebhookError(f"body is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise WebhookError("body must be a JSON array of event objects")
    return data


def invalid_field(event: Mapping[str, Any]) -> str | None:
    """The first field whose value SendGrid would never send (so the event is stored as invalid), or None."""
    kind, email, send_id = event.get("event"), event.get("email"), event.get(SEND_ID)
    if not isinstance(kind, str) or len(kind) > 64 or _UNCLEAN.search(kind):
        return "event"
    if not isinstance(email, str) or "@" not in email or len(email) > MAX_EMAIL_CHARS or _UNCLEAN.search(email):
        return "email"
    if sane_timestamp(event.get("timestamp")) is None:
        return "timestamp"
    if send_id is not None and not (
            (isinstance(send_id, str) and _TIMESTAMP.fullmatch(send_id) is not None)
            or (type(send_id) is int and 0 <= send_id <= MAX_SEND_ID)):
        return SEND_ID
    for name in (ISSUE, LIST, "url"):
        value = event.get(name)
        if value is not None and (not isinstance(value, str) or _UNCLEAN.search(value)):
            return name
    return None


def event_key(event: Mapping[str, Any]) -> str:
    """Content-based identity of one event, stable across SendGrid's retries."""
    identity = {name: event.get(name) for name in IDENTITY_FIELDS if event.get(name) is not None}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Outcome:
    """What one post did. `unmatched` events were stored but belong to no send we know."""

    applied: int = 0
    duplicates: int = 0
    unknown_type: int = 0
    unmatched: int = 0
    invalid: int = 0
    suppressed: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.unknown_type + self.unmatched + self.invalid

    def as_dict(self) -> dict[str, int]:
        return {"applied": self.applied, "duplicates": self.duplicates, "unknown_type": self.unknown_type,
                "unmatched": self.unmatched, "invalid": self.invalid, "suppressed": len(self.suppressed)}


def process_events(store: Store, events: list[dict[str, Any]]) -> Outcome:
    """Record every event once and apply the new ones, in one short transaction per post.

    Events that cannot be applied (unknown type, no such send, missing fields) are stored with their status
    and counted, so the caller can answer 4xx without losing them; a retry of the post changes nothing.
    """
    records = [event_record(item) for item in events]
    outcome = Outcome()
    for record, (status, suppressed) in zip(records, store.record_events(records), strict=True):
        if status == "duplicate":
            outcome.duplicates += 1
        else:
            setattr(outcome, status, getattr(outcome, status) + 1)
        if suppressed and record.email:
            outcome.suppressed.append(record.email)
    return outcome


def event_record(item: Mapping[str, Any]) -> EventRecord:
    """What storing and applying one posted event means, decided before the store sees it."""
    kind, email = item.get("event"), item.get("email")
    if invalid_field(item) is not None or not isinstance(kind, str) or not isinstance(email, str):
        status = "invalid"
    elif kind not in KNOWN_EVENTS:
        status = "unknown_type"
    else:
        status = "applied"  # unless the store finds no delivery for it: then `unmatched`
    stamp = item.get("timestamp")
    reason = suppression_reason(item) if status == "applied" else None
    return EventRecord(
        key=event_key(item), event=clean_text(kind) or "", status=status, source="webhook", email=clean_text(email),
        send_id=item.get(SEND_ID), issue=clean_text(item.get(ISSUE)), list_name=clean_text(item.get(LIST)),
        occurred_at=sane_timestamp(stamp), url=clean_text(item.get("url")),
        payload=json.dumps({k: v for k, v in item.items() if k not in UNSTORED_FIELDS}, sort_keys=True, default=str),
        outcome=kind if isinstance(kind, str) and kind in OUTCOME_RANK else None,  # `event` may be any JSON
        suppress=(SUPPRESSION_REASONS[reason], f"webhook {kind}") if reason else None,
        lifts_group_unsubscribe=kind == "group_resubscribe")

