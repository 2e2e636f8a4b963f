"""Erasing one reader: what both engines write in place of the address (no SQL here; see _sqlite_erase, _pg_erase).

- A delivery's address becomes `erased-<delivery id>@erased.invalid`: unique per row, and no one's (`.invalid`
  is reserved, RFC 2606, and the list reader refuses it), so a send's counts, states and batches stay as they
  were. An event of that delivery gets the same pseudonym, so the report's distinct counts stay too.
- An event keeps its type, time, send and delivery; its payload becomes `{"erased": true, "event", "timestamp"}`
  and its URL loses the unsubscribe token and any copy of the address.
- Later events of an erased address are stored the same way, without the address (`scrub_record`).
"""

from __future__ import annotations

import dataclasses
import json
import re

from pipeline.store._types import EventRecord

PSEUDONYM_DOMAIN = "erased.invalid"
_TOKEN = re.compile(r"(/unsubscribe/)[^/?#]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(email: str) -> str:
    """The address as the engines compare it without regard to case: ASCII letters folded (SQLite's NOCASE,
    PostgreSQL's lower(... COLLATE "C"))."""
    return email.strip().translate(_ASCII_LOWER)


def delivery_pseudonym(delivery_id: int) -> str:
    return f"erased-{int(delivery_id)}@{PSEUDONYM_DOMAIN}"


def event_pseudonym(event_id: int, delivery_id: int | None) -> str:
    """The delivery's pseudonym when the event has one (distinct readers stay distinct, and one reader one)."""
    return delivery_pseudonym(delivery_id) if delivery_id is not None else f"erased-event-{int(event_id)}@" \
        f"{PSEUDONYM_DOMAIN}"


def minimal_payload(event: str, occurred_at: int | None) -> str:
    """The raw event replaced: what the report and the timeline read (type, time), nothing about the reader."""
    return json.dumps({"erased": True, "event": event, "timestamp": occurred_at}, sort_keys=True)


def scrub_text(text: str | None, email: str) -> str | None:
    """`text` without unsubscribe tokens (they hold the address) and without the address itself, in any case,
    plain or URL-encoded."""
    if text is None:
        return None
    text = _TOKEN.sub(r"\1[token]", text)
    address = email.strip()
    for form in (address, address.replace("@", "%40")):
        text = re.sub(re.escape(form), "[erased]", text, flags=re.IGNORECASE)
    return text


def holds(text: str | bytes | None, email: str) -> bool:
    """Whether `text` holds the address (ASCII case folded), as the engines search for it."""
    if text is None:
        return False
    needle = fold(email)
    if isinstance(text, bytes):
        return needle.encode("utf-8", "surrogatepass") in text.lower()
    return needle in fold(text)


def scrub_record(record: EventRecord) -> EventRecord:
    """An event of an erased address, as it is stored: no address, the minimal payload, never applied (it cannot
    match a delivery any more, and the erased marker already suppresses the address)."""
    email = record.email or ""
    return dataclasses.replace(record, email=None, status="unmatched" if record.status == "applied" else record.status,
                               payload=minimal_payload(record.event, record.occurred_at),
                               url=scrub_text(record.url, email), outcome=None, suppress=None,
                               lifts_group_unsubscribe=False)
