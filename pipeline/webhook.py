"""SendGrid Event Webhook: check the signature, turn the posted JSON into events, apply them to the send log.

The web layer (web.py) only reads the body with a size limit and maps the exceptions here to status codes,
so everything that decides what an event *means* can be tested without a server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline import keys
from pipeline.errors import ConfigError, PipelineError
from pipeline.events import (
    OUTCOME_RANK,
    SUPPRESSION_REASONS,
    advance_outcome,
    find_delivery,
    record_event,
    suppression_reason,
)
from pipeline.sendlog import insert_suppression, transaction

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


def verify_signature(key: ec.EllipticCurvePublicKey, body: bytes, signature: str | None, timestamp: str | None,
                     *, now: float | None = None, max_skew: float = MAX_SKEW_SECONDS) -> None:
    """Raise WebhookForbidden unless `signature` signs `timestamp + body` and the timestamp is recent.

    The timestamp is part of the signed bytes, so a fresh timestamp cannot be glued onto an old post.
    """
    if not signature or not timestamp:
        raise WebhookForbidden(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header")
    try:
        sent_at = int(timestamp)
        der = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise WebhookForbidden("malformed signature or timestamp header") from None
    if abs((time.time() if now is None else now) - sent_at) > max_skew:
        raise WebhookForbidden(f"timestamp is more than {max_skew:.0f} s away from this server's clock "
                               "(replayed post, or check the server clock)")
    try:
        key.verify(der, timestamp.encode("utf-8") + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise WebhookForbidden("signature does not match the body") from None


def parse_events(body: bytes) -> list[dict[str, Any]]:
    """The body must be a JSON array of objects; anything else is refused whole (400) before any change."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WebhookError(f"body is not valid JSON ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise WebhookError("body must be a JSON array of event objects")
    return data


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


def process_events(conn: sqlite3.Connection, events: list[dict[str, Any]]) -> Outcome:
    """Record every event once and apply the new ones, in one short transaction per post.

    Events that cannot be applied (unknown type, no such send, missing fields) are stored with their status
    and counted, so the caller can answer 4xx without losing them; a retry of the post changes nothing.
    """
    outcome = Outcome()
    with transaction(conn):
        for item in events:
            kind, email = item.get("event"), item.get("email")
            key = event_key(item)
            match = None
            if not isinstance(kind, str) or not isinstance(email, str) or "@" not in email:
                status = "invalid"
            elif kind not in KNOWN_EVENTS:
                status = "unknown_type"
            else:
                match = find_delivery(conn, send_id=item.get(SEND_ID), email=email, issue=item.get(ISSUE),
                                      list_name=item.get(LIST))
                status = "applied" if match else "unmatched"
            if not record_event(conn, key=key, event=item, status=status, source="webhook", match=match):
                outcome.duplicates += 1
                continue
            if status != "applied":
                setattr(outcome, status, getattr(outcome, status) + 1)
                continue
            assert match is not None and isinstance(kind, str) and isinstance(email, str)
            outcome.applied += 1
            if kind in OUTCOME_RANK:
                stamp = item.get("timestamp")
                advance_outcome(conn, match.delivery_id, kind, int(stamp) if isinstance(stamp, int | float) else 0)
            if kind == "group_resubscribe":  # undoes only what a group_unsubscribe event added
                conn.execute("DELETE FROM suppressions WHERE email = ? AND source = 'webhook group_unsubscribe'",
                             (email.strip(),))
            reason = suppression_reason(item)
            if reason and insert_suppression(conn, email, reason=SUPPRESSION_REASONS[reason], source=f"webhook {kind}"):
                outcome.suppressed.append(email)
    return outcome
