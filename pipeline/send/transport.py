"""Transports: one method, `send(batch) -> Result`; they classify the answer, the send manager decides.

- `SendGridTransport`: v3 Mail Send through the `sendgrid` package (imported only here, lazily).
- `OutboxTransport`: one real, fully personalised `.eml` file per recipient (no account needed).

Outcomes: ACCEPTED (202), RETRY (429, 500, 503 and other 5xx, or the request never left: certainly not
sent), REFUSED (400/401/403/413 and other 4xx: certainly not sent, retrying cannot help), IN_DOUBT (the
request left and no answer came back: timeout, dropped connection; or a gateway's 502/504: SendGrid may
have sent it).
"""

from __future__ import annotations

import email.utils
import enum
import json
import logging
import os
import re
import time
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from email.headerregistry import Address
from email.policy import SMTP
from http.client import HTTPException
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pipeline import keys
from pipeline.build.message import mime_message
from pipeline.errors import SendError
from pipeline.lists.values import outbox_file_name
from pipeline.send.batches import Batch, Personalizer, display_name

API_KEY_ENV = keys.API_KEY_ENV
# A long List-Unsubscribe URL folded at 78 columns would turn into an RFC 2047 encoded word that no mail
# client reads as a URL; RFC 5322 allows 998 characters a line.
_ONE_LINE_HEADERS = SMTP.clone(max_line_length=998)
_SMTPUTF8 = _ONE_LINE_HEADERS.clone(utf8=True)  # an address with a local part in Unicode (RFC 6532)
API_HOST_ENV = "SENDGRID_API_HOST"
# Bad Gateway and Gateway Timeout come from a proxy in front of SendGrid, which may have passed the request on
# and lost the answer: retrying could send the mail twice, so these are in doubt, not retried.
GATEWAY_ANSWERS = (502, 504)
DEFAULT_HOST = "https://api.sendgrid.com"


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    RETRY = "retry"
    REFUSED = "refused"
    IN_DOUBT = "in_doubt"


@dataclass(frozen=True, kw_only=True, slots=True)
class Result:
    outcome: Outcome
    status: int | None = None
    message_id: str | None = None
    error: str = ""
    retry_after: float | None = None  # seconds the server asked us to wait


class Transport(Protocol):
    kind: ClassVar[str]  # "sendgrid" or "outbox": the send log keeps the two apart

    def send(self, batch: Batch) -> Result: ...


# --- SendGrid -------------------------------------------------------------------------------------------


def api_key_from_env(environ: Mapping[str, str]) -> str:
    """The SendGrid API key for a real send, after checking SENDGRID_API_HOST; SendError says what to set."""
    host = environ.get(API_HOST_ENV, "")
    if host and not re.fullmatch(r"https?://[^\s/?#]+/?", host):
        raise SendError(f"{API_HOST_ENV} is {host!r}, not a base URL like https://api.eu.sendgrid.com — "
                        f"fix it, or unset it to use {DEFAULT_HOST}")
    key = keys.from_env(API_KEY_ENV, SendError, environ=environ, ascii_only=True)
    if not key:
        raise SendError(f"{API_KEY_ENV} is not set, so nothing can go to SendGrid — either export "
                        f"{API_KEY_ENV}=<an API key with Mail Send permission> for a real send, or add "
                        "--outbox DIR to write one .eml file per recipient instead (no account needed)")
    return key


def wait_hint(headers: Any, *, now: float | None = None) -> float | None:
    """Seconds to wait from Retry-After (seconds or HTTP date) or X-RateLimit-Reset (epoch seconds)."""
    if headers is None:
        return None
    current = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - current)
        except (TypeError, ValueError):
            pass
    reset = headers.get("X-RateLimit-Reset")
    if reset and reset.strip().isdigit():
        return max(0.0, float(reset) - current)
    return None


def sendgrid_errors(body: bytes | None) -> str:
    """SendGrid's `{"errors": [{"message", "field", "help"}]}` as one line: message (field: ...)."""
    try:
        errors = json.loads(body or b"{}").get("errors") or []
    except (ValueError, AttributeError):
        errors = []
    parts = []
    for error in errors[:5]:
        if isinstance(error, dict):
            text = str(error.get("message") or "no message")
            if error.get("field"):
                text += f" (field: {error['field']})"
            parts.append(text)
    return "; ".join(parts) or (body or b"").decode("utf-8", "replace")[:300] or "no error message"


def refusal_fix(status: int | None) -> str:
    """What ends the message of a refusal: the one thing the operator can do about that status."""
    return {
        400: "fix what SendGrid names (a field of the request), then run the same command again",
        401: f"check {API_KEY_ENV}: the key is wrong, revoked, or the account is out of credits",
        403: "verify the sender identity in SendGrid and give the key Mail Send permission",
        413: "the request is too large: lower sending.batch_size in newsletter.yaml or make the issue smaller",
    }.get(status or 0, "see SendGrid's message, fix the cause, then run the same command again")


class _Body(str):
    """A request body as python_http_client takes it: text it encodes, then formats into a DEBUG message,
    logged or not. Formatting 500 KB of bytes cost 2 ms a request, as much as the rest of it; a memoryview
    of them formats as a short "<memory at ...>" and is sent as it is, without another copy."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> memoryview:  # type: ignore[override]
        return memoryview(str.encode(self, encoding, errors))


class SendGridTransport:
    """The real thing. The API key is kept only inside the client and scrubbed from every message."""

    kind: ClassVar[str] = "sendgrid"

    def __init__(self, personalizer: Personalizer, *, api_key: str, host: str | None = None,
                 timeout: float) -> None:
        from sendgrid import SendGridAPIClient

        # python_http_client logs request headers (the key) and bodies (addresses) at DEBUG: never let it.
        logging.getLogger("python_http_client").setLevel(logging.WARNING)
        self.personalizer = personalizer
        self._key = api_key
        self._client = SendGridAPIClient(api_key=api_key, host=(host or DEFAULT_HOST).rstrip("/"))
        self._client.client.timeout = timeout
        # The body is JSON text we wrote; a JSON media type other than the bare one makes the client pass it on.
        self._client.client.request_headers["Content-Type"] = "application/json; charset=utf-8"
        self._host, self._timeout = (host or DEFAULT_HOST), timeout

    def create_batch(self) -> str:
        """A new SendGrid batch id for a send (`POST /v3/mail/batch`): every request of the send carries it,
        so that scheduled mail can be paused or cancelled (pipeline.send.schedule)."""
        from pipeline.send.schedule import SendGridBatches

        return SendGridBatches(api_key=self._key, host=self._host, timeout=self._timeout).create()

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[SENDGRID_API_KEY]") if self._key else text

    def send(self, batch: Batch) -> Result:
        from python_http_client.exceptions import HTTPError

        body = self.personalizer.body(batch)
        try:
            response = self._client.client.mail.send.post(request_body=_Body(body))
        except HTTPError as exc:
            status = int(exc.status_code)
            message = self._scrub(sendgrid_errors(exc.body))
            if status in GATEWAY_ANSWERS:
                return Result(outcome=Outcome.IN_DOUBT, status=status,
                              error=f"a gateway answered {status} ({message}): SendGrid behind it may have sent it")
            if status == 429 or status >= 500:
                return Result(outcome=Outcome.RETRY, status=status, error=message,
                              retry_after=wait_hint(exc.headers))
            return Result(outcome=Outcome.REFUSED, status=status, error=message)
        except urllib.error.URLError as exc:
            # urllib wraps errors raised while connecting or writing the request: it never fully left.
            return Result(outcome=Outcome.RETRY, error=self._scrub(f"request not sent: {exc.reason}"))
        except (OSError, HTTPException) as exc:
            # The request left; the answer did not come (timeout, connection dropped): maybe sent.
            return Result(outcome=Outcome.IN_DOUBT, error=self._scrub(f"no answer: {type(exc).__name__}: {exc}"))
        status = int(response.status_code)
        if status in (200, 202):
            return Result(outcome=Outcome.ACCEPTED, status=status, message_id=response.headers.get("X-Message-Id"))
        return Result(outcome=Outcome.REFUSED, status=status, error=f"unexpected answer {status}")


# --- the outbox -----------------------------------------------------------------------------------------


class OutboxTransport:
    """Writes `<address>.eml` per recipient into a folder, atomically (temp file + rename); a re-run overwrites."""

    kind: ClassVar[str] = "outbox"

    def __init__(self, personalizer: Personalizer, folder: Path) -> None:
        self.personalizer = personalizer
        self.folder = folder
        m = personalizer.mailing
        self._sender = Address(m.sender_name, addr_spec=m.sender_email)
        self._extra = {"X-Newsletter-Issue": m.issue, "X-Newsletter-List": m.list_name}
        if m.throwaway_secret:
            self._extra["X-Newsletter-Outbox"] = "unsubscribe links signed with a throwaway secret, not valid"

    def send(self, batch: Batch) -> Result:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # readers' addresses: this user's only
        p = self.personalizer
        for _, address, name, fields_json in batch.rows:
            values = p.values(address, name, p.parse_fields(fields_json))
            headers = {**p.headers(values["unsubscribe_url"]), **self._extra, "Date": email.utils.formatdate(),
                       "Message-ID": email.utils.make_msgid(domain=self._sender.domain)}  # what a mail client expects
            msg = mime_message(p.mailing.email, sender=self._sender, to=(display_name(name), address),
                               values=values, headers=headers, reply_to=p.mailing.reply_to)
            # the edition (RFC 3282), as <html lang> says; after the parts, which take Content-* headers along
            msg["Content-Language"] = p.mailing.email.language
            data = msg.as_bytes(policy=_ONE_LINE_HEADERS if str(msg["To"]).isascii() else _SMTPUTF8)
            target = self.folder / outbox_file_name(address)
            tmp = target.with_suffix(".eml.tmp")
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, target)
        return Result(outcome=Outcome.ACCEPTED, message_id=f"outbox-{batch.request_id}")
