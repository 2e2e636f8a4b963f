"""What SendGrid's events mean: which suppression an event adds, how far a delivery got.

The store (pipeline.store) keeps the events, matches each to its delivery and applies what is decided here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.store import OUTCOME_RANK

__all__ = ["OUTCOME_RANK", "SUPPRESSION_REASONS", "UNSTORED_FIELDS", "clean_text", "reason_of", "sane_timestamp",
           "suppression_reason"]

# `dropped` reasons that mean the address itself must not be mailed again, and the suppression reason.
DROP_SUPPRESSION = {"bounced address": "bounce", "invalid": "invalid", "spam reporting address": "spamreport",
                    "unsubscribed address": "unsubscribe"}
# Our names for them -> the send log's suppression reasons (sendlog.REASONS).
SUPPRESSION_REASONS = {"bounce": "bounced", "block": "blocked", "invalid": "invalid", "spamreport": "complained",
                       "unsubscribe": "unsubscribed", "group_unsubscribe": "unsubscribed"}
# Kept out of the stored payload: personal data the report does not need (the event key still covers them).
UNSTORED_FIELDS = frozenset({"ip", "useragent"})


def suppression_reason(event: Mapping[str, Any]) -> str | None:
    """Which suppression (if any) an event adds: the address must not be mailed again, on any list."""
    kind = event.get("event")
    if kind == "bounce":
        return "block" if event.get("type") == "blocked" else "bounce"
    if kind == "dropped":
        return DROP_SUPPRESSION.get(str(event.get("reason", "")).strip().lower())
    if kind in ("spamreport", "unsubscribe", "group_unsubscribe"):
        return str(kind)
    return None


def reason_of(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """(suppression reason, source) of a stored webhook event that suppresses its address, if it does."""
    reason = suppression_reason(event)
    return (SUPPRESSION_REASONS[reason], f"webhook {event.get('event')}") if reason else None


# Event times SendGrid could send: Unix seconds up to the year 2286. Anything else is stored as NULL.
MAX_TIMESTAMP = 10**10


def sane_timestamp(value: Any) -> int | None:
    """An event's `timestamp` as whole Unix seconds, or None if it is missing, not a number or absurd."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value < MAX_TIMESTAMP:  # also False for NaN; infinities and huge ints never reach int()
        return None
    return int(value)


def clean_text(value: Any) -> str | None:
    """A value for a TEXT column: lone surrogates (valid JSON, not valid UTF-8) become U+FFFD."""
    if value is None:
        return None
    return str(value).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
