"""Signed unsubscribe tokens: who (email), from which list, from which issue; nothing else.

A token is ``<payload>.<mac>``, both URL-safe base64 without padding:

- payload: the JSON array ``[email, list_name, issue]`` (compact, non-ASCII escaped: plain ASCII);
- mac: the first 16 bytes (128 bits) of HMAC-SHA256 keyed by ``NEWSLETTER_SECRET`` over
  ``b"nl-unsubscribe-v1\\0" + payload`` (the prefix keeps these MACs apart from any other use of the key).

`verify` returns ``None`` for anything that is not a token we signed, spelled exactly as we spell it
(forged, altered, truncated, padded, signed with another secret, not base64, not our JSON) and compares
MACs in constant time. It never raises for a bad token, so a web handler can answer 400 without a try
block.

The secret is never stored: changing NEWSLETTER_SECRET invalidates every unsubscribe link already sent,
so keep it as long as old issues are in people's inboxes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _enc
from urllib.parse import quote

from pipeline import keys
from pipeline.errors import SendError

SECRET_ENV = keys.SECRET_ENV
MIN_SECRET_BYTES = 16
_DOMAIN = b"nl-unsubscribe-v1\0"
_MAC_BYTES = 16
_BLOCK = 64  # SHA-256's block size
_URLSAFE = bytes.maketrans(b"+/", b"-_")
# Only for `send --outbox` without NEWSLETTER_SECRET: links it signs are marked and useless for real mail.
THROWAWAY_SECRET = b"outbox-throwaway-secret-not-for-real-mail"
CREATE_SECRET_HINT = (
    f'create one with `python3 -c "import secrets; print(secrets.token_urlsafe(32))"`, '
    f"keep it in your password manager and export {SECRET_ENV}=<that value> before sending"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class UnsubscribeToken:
    email: str
    list_name: str
    issue: str


def urlsafe_b64(data: bytes) -> str:
    """URL-safe base64 without padding: the one spelling a token part may have."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


_b64 = urlsafe_b64


def _unb64(text: str) -> bytes:
    """The bytes of a canonical urlsafe_b64 text; ValueError for anything else (padding, unused bits set,
    other alphabets), so that exactly one spelling of each token verifies."""
    if not text or len(text) % 4 == 1 or not text.isascii():
        raise ValueError("bad base64")
    data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if urlsafe_b64(data) != text:
        raise ValueError("not the canonical spelling")
    return data


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.digest(secret, _DOMAIN + payload, "sha256")[:_MAC_BYTES]


def sign(secret: bytes, *, email: str, list_name: str, issue: str) -> str:
    """The token for one recipient of one issue sent to one list."""
    return Signer(secret, list_name=list_name, issue=issue).token(email)


class Signer:
    """`sign` for many addresses of one list and issue: the shared part of the payload is encoded once.

    The payload is exactly `json.dumps([email, list_name, issue], separators=(",", ":"))`.
    """

    __slots__ = ("_inner", "_outer", "_tail")

    def __init__(self, secret: bytes, *, list_name: str, issue: str) -> None:
        # HMAC (RFC 2104) with both padded keys hashed once: a third of hmac.digest()'s cost per token.
        key = hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key) + _DOMAIN)
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self._tail = f",{_enc(list_name)},{_enc(issue)}]".encode("ascii")

    def token(self, email: str) -> str:
        return self.token_from_json(_enc(email))

    def token_from_json(self, email_json: str) -> str:
        """The token for an address already encoded as a JSON string (quotes included)."""
        payload = b"[" + email_json.encode("ascii") + self._tail
        inner = self._inner.copy()
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return f"{_b64(payload)}.{_b64(outer.digest()[:_MAC_BYTES])}"


def verify(secret: bytes, token: str) -> UnsubscribeToken | None:
    """The token's content if we signed it with this secret, else None (never raises for bad input)."""
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 4096:
        return None
    payload_part, mac_part = token.split(".")
    try:
        payload = _unb64(payload_part)
        mac = _unb64(mac_part)
    except (ValueError, binascii.Error):
        return None
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    try:
        values = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, str) for v in values)):
        return None
    return UnsubscribeToken(email=values[0], list_name=values[1], issue=values[2])


def secret_from_env(environ: dict[str, str] | None = None) -> bytes:
    """NEWSLETTER_SECRET as bytes; SendError naming the variable and how to create one if unusable."""
    value = keys.from_env(SECRET_ENV, SendError, environ=environ)
    if not value:
        raise SendError(f"{SECRET_ENV} is not set; a real send signs every unsubscribe link with it — "
                        f"{CREATE_SECRET_HINT}")
    secret = value.encode("utf-8")
    if len(secret) < MIN_SECRET_BYTES:
        raise SendError(f"{SECRET_ENV} is too short (at least {MIN_SECRET_BYTES} characters are needed) — "
                        f"{CREATE_SECRET_HINT}")
    return secret


def unsubscribe_url(base_url: str, token: str) -> str:
    """The one-click unsubscribe URL: the footer link and the https part of List-Unsubscribe."""
    return f"{base_url.rstrip('/')}/unsubscribe/{token}"


def mailto_unsubscribe(address: str) -> str:
    """The mailto part of List-Unsubscribe (RFC 2369), for mail clients that cannot POST."""
    return f"mailto:{address}?subject={quote('unsubscribe')}"
