"""What a batch of recipients becomes: per-recipient values, and the SendGrid v3 Mail Send body.

`Mailing` is what every recipient of one send shares; `Batch` is up to `sending.batch_size` deliveries
claimed from the send log; `Personalizer` turns a recipient into substitution values and headers, and a
batch into one request body. The body is JSON written by hand from pieces: the shared part (HTML and
text, once per request) is encoded once per send, each recipient costs one small string.

One personalization per recipient, one recipient per personalization:
``{"to": [{"email", "name"}], "substitutions": {"%%tag%%": value}, "headers": {"List-Unsubscribe"}}``;
every tag the email uses gets a value ("" when the list has no such column), because SendGrid leaves
unknown tags in the mail as they are. `List-Unsubscribe-Post`, the same for everyone, is a message-level
header, which SendGrid gives every personalization (theirs add to it, and win on a clash of names).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring_ascii as _enc

from pipeline import tokens
from pipeline.build.render import UNSUBSCRIBE, Email, placeholder
from pipeline.config import Config
from pipeline.errors import SendError
from pipeline.lists.values import HTML_SUFFIX, html_value
from pipeline.store import DeliveryRow

MAX_PERSONALIZATIONS = 1000
MAX_SEND_AHEAD = dt.timedelta(hours=72)
RESERVED = ("name", "unsubscribe_url")
ONE_CLICK = "List-Unsubscribe=One-Click"
TEST_PREFIX = "[TEST] "
_NAME_UNSAFE = str.maketrans({";": " ", ",": " ", "\r": " ", "\n": " ", "\t": " "})
_MARKUP = re.compile("[&<>\"']").search  # what html_value changes: most names have none (0.2 µs, escaping 1 µs)


@dataclass(frozen=True, kw_only=True, slots=True)
class Mailing:
    """Everything the recipients of one send share."""

    email: Email
    issue: str
    list_name: str
    send_id: int  # 0 for a test copy, which the send log does not know
    secret: bytes
    sender_email: str
    sender_name: str = ""
    reply_to: str | None = None
    base_url: str
    categories: tuple[str, ...] = ()
    group_id: int | None = None
    send_at: int | None = None  # epoch seconds
    test: bool = False
    throwaway_secret: bool = False  # outbox without NEWSLETTER_SECRET: links are marked as not real
    batch_id: str | None = None  # SendGrid's batch id, on every request of a real send (see pipeline.send.schedule)

    @classmethod
    def from_config(cls, config: Config, **values: object) -> Mailing:
        shared: dict[str, object] = {
            "sender_email": config.sender_email, "sender_name": config.sender_name, "reply_to": config.reply_to,
            "base_url": config.base_url, "categories": config.sending.categories,
            "group_id": config.sending.unsubscribe_group_id}
        return cls(**{**shared, **values})  # type: ignore[arg-type]

    def as_test(self) -> Mailing:
        """The same mailing as one copy marked as a test: subject prefix, category `test`, send id 0."""
        email = replace(self.email, subject=TEST_PREFIX + self.email.subject)
        categories = self.categories if "test" in self.categories else (*self.categories, "test")
        return replace(self, email=email, send_id=0, test=True, categories=categories)

    @property
    def custom_args(self) -> dict[str, str]:
        """Carried into every webhook event: the loop's event handler matches on these and the address."""
        return {"nl_send_id": str(self.send_id), "nl_issue": self.issue, "nl_list": self.list_name}


@dataclass(frozen=True, kw_only=True, slots=True)
class Batch:
    """The deliveries of one request, as claimed from the send log (intent already committed)."""

    id: int
    request_id: str
    rows: Sequence[DeliveryRow] = field(default_factory=tuple)
    body: str | None = None  # the request body when built ahead (SendGrid)

    def __len__(self) -> int:
        return len(self.rows)


def display_name(name: str) -> str:
    """SendGrid refuses recipient names with `;` or `,`: they become spaces in the To name only."""
    if not name or name.isalnum():
        return name
    return " ".join(name.translate(_NAME_UNSAFE).split())


class Personalizer:
    """Per-recipient values and headers, and the request body for a batch."""

    def __init__(self, mailing: Mailing) -> None:
        prefix = tokens.unsubscribe_url(mailing.base_url, "")
        self._url_prefix = _enc(prefix)[1:-1]
        if self._url_prefix != prefix or html_value(prefix) != prefix:
            raise SendError(f"base_url {mailing.base_url!r} has characters that need escaping in JSON or HTML — "
                            "fix base_url in newsletter.yaml")
        # The URL needs no HTML escaping (the prefix is checked above, a token is base64url and a dot), so the
        # HTML part takes the plain tag: each recipient's body then holds the URL twice instead of three times
        # (for 1,000 recipients of an issue that uses both tags, 590 KB of JSON instead of 744 KB).
        url_html = placeholder("unsubscribe_url" + HTML_SUFFIX)
        if url_html in mailing.email.html:
            html = mailing.email.html.replace(url_html, UNSUBSCRIBE)
            mailing = replace(mailing, email=replace(mailing.email, html=html))
        self.mailing = mailing
        self.tags = sorted(mailing.email.placeholders | {"unsubscribe_url"})
        self.merge_fields = sorted({t.removesuffix(HTML_SUFFIX) for t in self.tags} - set(RESERVED))
        self._mailto = tokens.mailto_unsubscribe(mailing.reply_to or mailing.sender_email)
        self._mailto_enc = _enc(f"<{self._mailto}>")[1:-1]
        # (field, its tag as a JSON key, whether the value is HTML-escaped), for every tag but the URL's
        self._field_keys = [(t.removesuffix(HTML_SUFFIX), _enc(placeholder(t)), t.endswith(HTML_SUFFIX))
                            for t in self.tags if t.removesuffix(HTML_SUFFIX) not in RESERVED]
        self._name_html = "name" + HTML_SUFFIX in self.tags
        self._url_html = "unsubscribe_url" + HTML_SUFFIX in self.tags
        self._shared = self._shared_json()
        self._signer = tokens.Signer(mailing.secret, list_name=mailing.list_name, issue=mailing.issue)

    # --- values -----------------------------------------------------------------------------------------

    def unsubscribe_url(self, email: str) -> str:
        return self._url_prefix + self._signer.token(email)

    def values(self, email: str, name: str, fields: Mapping[str, str]) -> dict[str, str]:
        """Tag name (without %%) -> value, for every tag the email uses; what the outbox substitutes.
        `name:html` and the other HTML tags get the value HTML-escaped (see pipeline.lists.values)."""
        plain = {**fields, "name": name, "unsubscribe_url": self.unsubscribe_url(email)}
        found = {}
        for tag in self.tags:
            field = tag.removesuffix(HTML_SUFFIX)
            value = plain.get(field, "")
            found[tag] = html_value(value) if field != tag else value
        return found

    def headers(self, url: str) -> dict[str, str]:
        """RFC 2369 + RFC 8058 one-click unsubscribe: the https URL of the footer link and a mailto."""
        return {"List-Unsubscribe": f"<{url}>, <{self._mailto}>", "List-Unsubscribe-Post": ONE_CLICK}

    @staticmethod
    def parse_fields(fields_json: str | None) -> dict[str, str]:
        return json.loads(fields_json) if fields_json else {}

    # --- the request body -------------------------------------------------------------------------------

    def _shared_json(self) -> str:
        m = self.mailing
        sender: dict[str, str] = {"email": m.sender_email}
        if m.sender_name:
            sender["name"] = display_name(m.sender_name)
        shared: dict[str, object] = {
            "from": sender,
            "subject": m.email.subject,
            "content": [{"type": "text/plain", "value": m.email.text}, {"type": "text/html", "value": m.email.html}],
            "custom_args": m.custom_args,
            # the edition's language, as <html lang> says; RFC 8058's one-click marker, the same for everyone
            "headers": {"Content-Language": m.email.language, "List-Unsubscribe-Post": ONE_CLICK},
        }
        if m.reply_to:
            shared["reply_to"] = {"email": m.reply_to}
        if m.categories:
            shared["categories"] = list(dict.fromkeys(m.categories))
        if m.group_id is not None:
            shared["asm"] = {"group_id": m.group_id}
        if m.send_at is not None:
            shared["send_at"] = m.send_at
        if m.batch_id is not None:
            shared["batch_id"] = m.batch_id
        return json.dumps(shared, separators=(",", ":"))[1:-1]

    def personalization(self, email: str, name: str, fields_json: str | None) -> str:
        """One personalization as JSON text: the only per-recipient work of a request, kept to a few
        C-level calls (the token and the URL are ASCII, safe in JSON as they are)."""
        e = _enc(email)
        url = self._url_prefix + self._signer.token_from_json(e)
        if name:
            n = _enc(name)
            safe = name.isprintable() and ";" not in name and "," not in name
            to = f'{{"email":{e},"name":{n if safe else _enc(display_name(name))}}}'
        else:
            n, to = '""', f'{{"email":{e}}}'
        if self._name_html:
            n_html = _enc(html_value(name)) if _MARKUP(name) else n
            extra = f',"%%name{HTML_SUFFIX}%%":{n_html}'
        else:
            extra = ""
        if self._url_html:
            extra += f',"%%unsubscribe_url{HTML_SUFFIX}%%":"{url}"'
        if self._field_keys:
            fields = json.loads(fields_json) if fields_json else {}
            extra += "".join(f",{key}:{_enc(html_value(fields.get(f, '')) if escaped else fields.get(f, ''))}"
                             for f, key, escaped in self._field_keys)
        return (f'{{"to":[{to}],"substitutions":{{"%%name%%":{n},"%%unsubscribe_url%%":"{url}"{extra}}},'
                f'"headers":{{"List-Unsubscribe":"<{url}>, {self._mailto_enc}"}}}}')

    def body(self, batch: Batch) -> str:
        """The whole Mail Send request body for a batch, as JSON text."""
        if batch.body is not None:
            return batch.body
        parts = [self.personalization(email, name, fields) for _, email, name, fields in batch.rows]
        return '{"personalizations":[' + ",".join(parts) + "]," + self._shared + "}"


def parse_send_at(text: str, *, now: dt.datetime | None = None) -> int:
    """`--at` as epoch seconds: ISO 8601 with an offset, in the future and at most 72 h ahead."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SendError(f"--at {text[:40]!r} is not an ISO 8601 time — write it like "
                        "2026-03-01T09:00:00+09:00") from None
    if when.tzinfo is None:
        raise SendError(f"--at {text!r} has no UTC offset — add one, e.g. {text}+09:00 or {text}Z")
    current = now or dt.datetime.now(dt.UTC)
    if when <= current:
        raise SendError(f"--at {text} is in the past (now {current.isoformat(timespec='seconds')}); the scheduled "
                        "send is already too late — give a later time, or leave --at out to send now")
    if when - current > MAX_SEND_AHEAD:
        raise SendError(f"--at {text} is more than 72 hours ahead, SendGrid's limit for send_at — "
                        "run the send closer to the time")
    return int(when.timestamp())
