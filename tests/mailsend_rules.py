"""What SendGrid's Mail Send checks in a body, for the stand-in (tests/standin.py): its JSON read as SendGrid
reads it, the schema's file, and the limits a JSON schema cannot express, with the field and text of each error.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson

SCHEMA_PATH = Path(__file__).with_name("sendgrid_mail_send.schema.json")
# SendGrid says "less than 30 MB" without saying which MB; the smaller reading keeps senders safe.
MAX_BODY_BYTES = 30_000_000
MAX_RECIPIENTS = 1000
MAX_ARGS_BYTES = 10_000
MAX_SUBSTITUTION_BYTES = 10_000
MAX_SCHEDULE_SECONDS = 72 * 3600
FORBIDDEN_HEADERS = frozenset({
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type", "content-transfer-encoding",
    "to", "from", "subject", "reply-to", "cc", "bcc",
})

Error = tuple[str | None, str]  # (field, message)


_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19  # orjson reads integers beyond 64 bits as floats; json reads them exactly


def parse_json(raw: bytes) -> Any:
    """json.loads(raw), faster where orjson can read it: orjson gives the same value whenever it gives one
    (it refuses NaN, lone surrogates, a BOM, which json takes, and the fallback reads them) except for
    integers of 19 digits and more, which it may turn into floats: a body with such a run of digits goes to
    json. The check costs 0.4 ms on 560 KB; orjson saves about twice that."""
    if _LONG_NUMBER not in raw.translate(_DIGITS):
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(raw)
    return json.loads(raw)


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _schema_field(err: jsonschema.ValidationError) -> str | None:
    """SendGrid names fields as dotted paths ("personalizations.0.to.0.email")."""
    parts = [str(p) for p in err.absolute_path]
    instance = err.instance if isinstance(err.instance, dict) else {}
    schema = err.schema if isinstance(err.schema, dict) else {}
    if err.validator == "required":
        parts.append(next(k for k in schema["required"] if k not in instance))
    elif err.validator == "additionalProperties":
        parts.append(sorted(set(instance) - set(schema.get("properties", {})))[0])
    return ".".join(parts) or None


def _header_errors(headers: dict[str, str], field: str) -> list[Error]:
    bad = sorted(h for h in headers if h.lower() in FORBIDDEN_HEADERS)
    return [(field, f"The header {h!r} is reserved and cannot be set.") for h in bad]


_UNIQUE = "Each email address in the personalization block should be unique between to, cc, and bcc."
_ARGS_TOO_BIG = f"custom_args must be less than {MAX_ARGS_BYTES} bytes."
_TOO_LATE = "send_at cannot be more than 72 hours in the future."


def _address_errors(i: int, person: dict[str, Any]) -> list[Error]:
    """The addresses of one personalization, in order: unique between to, cc and bcc in any case, no ; or ,
    in a name."""
    errors: list[Error] = []
    seen: set[str] = set()
    for kind in ("to", "cc", "bcc"):
        for j, address in enumerate(person.get(kind, ())):
            email = address["email"].lower()
            if email in seen:
                errors.append((f"personalizations.{i}.{kind}.{j}.email", _UNIQUE))
            seen.add(email)
            name = address.get("name", "")
            if ";" in name or "," in name:
                errors.append((f"personalizations.{i}.{kind}.{j}.name", "The name cannot contain ';' or ','."))
    return errors


def _utf8_bytes(strings: dict[str, str]) -> int:
    """Keys and values together in UTF-8; an ASCII text (str.isascii() costs nothing) is as long in bytes."""
    text = "".join([*strings, *strings.values()])
    return len(text) if text.isascii() else len(text.encode())


def limit_errors(body: dict[str, Any], now: float) -> list[Error]:
    """The Mail Send rules a JSON schema cannot express; `body` has already passed the schema."""
    return _limits(body, now, [])


def _limits(body: dict[str, Any], now: float, emails: list[str]) -> list[Error]:
    """`limit_errors`, appending every address to `emails` on the way (parse mode tallies them).

    Why it is not written plainly: a benchmark's stand-in runs this on every body, 1000 personalizations each,
    in one process. So a personalization costs a few cheap tests, the common one (one address) skips the
    duplicate check, and error texts are made only for what fails. tests/test_standin_limits.py keeps the
    plain version and holds the two to the same errors on generated bodies."""
    errors: list[Error] = []
    latest = now + MAX_SCHEDULE_SECONDS
    top_args = body.get("custom_args", {})
    if _json_bytes(top_args) >= MAX_ARGS_BYTES:
        errors.append(("custom_args", _ARGS_TOO_BIG))
    errors += _header_errors(body.get("headers", {}), "headers")
    add = emails.append
    fine_headers: set[str] = set()  # header names in this body already found not reserved
    total = 0
    for i, person in enumerate(body["personalizations"]):
        to = person.get("to", ())
        if len(to) == 1 and "cc" not in person and "bcc" not in person:  # one address cannot repeat itself
            address = to[0]
            add(address["email"])
            total += 1
            name = address.get("name", "")
            if ";" in name or "," in name:
                errors += _address_errors(i, person)
        else:
            found = [a["email"] for kind in ("to", "cc", "bcc") for a in person.get(kind, ())]
            emails += found
            total += len(found)
            errors += _address_errors(i, person)
        headers = person.get("headers")
        if headers and not headers.keys() <= fine_headers:
            if FORBIDDEN_HEADERS.isdisjoint(map(str.lower, headers)):
                fine_headers.update(headers)
            else:
                errors += _header_errors(headers, f"personalizations.{i}.headers")
        substitutions = person.get("substitutions")
        if substitutions and _utf8_bytes(substitutions) > MAX_SUBSTITUTION_BYTES:
            errors.append((f"personalizations.{i}.substitutions",
                           f"substitutions may not exceed {MAX_SUBSTITUTION_BYTES} bytes per personalization."))
        if "custom_args" in person and _json_bytes({**top_args, **person["custom_args"]}) >= MAX_ARGS_BYTES:
            errors.append((f"personalizations.{i}.custom_args", _ARGS_TOO_BIG))
        if person.get("send_at", 0) > latest:
            errors.append((f"personalizations.{i}.send_at", _TOO_LATE))
    return errors + _message_errors(body, latest, total)


def _message_errors(body: dict[str, Any], latest: float, total: int) -> list[Error]:
    """The rules on the message as a whole, once per body: `total` recipients, send_at before `latest`."""
    errors: list[Error] = []
    if total > MAX_RECIPIENTS:
        errors.append(("personalizations", f"The total number of recipients must be {MAX_RECIPIENTS} or less "
                       f"(to, cc and bcc together); this request has {total}."))
    if body.get("send_at", 0) > latest:
        errors.append(("send_at", _TOO_LATE))
    if "reply_to" in body and "reply_to_list" in body:
        errors.append(("reply_to_list", "reply_to and reply_to_list cannot be used together."))
    templated = "template_id" in body
    if "content" not in body and not templated:
        errors.append(("content", "Unless a valid template_id is provided, the content parameter is required."))
    types = [c["type"] for c in body.get("content", ())]
    expected = [t for t in ("text/plain", "text/html") if t in types]
    if types[:len(expected)] != expected:
        errors.append(("content", "text/plain must come first, then text/html, then any other type."))
    if not templated and "subject" not in body and any("subject" not in p for p in body["personalizations"]):
        errors.append(("subject", "The subject is required, at the top level or in every personalization."))
    return errors
