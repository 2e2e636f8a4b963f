"""What happened after a send: SendGrid's events and the unsubscribe page's clicks, in the send log's database.

Tables (this module's migrations, applied by `open_db` through sendlog.migrate next to the send log's own):

- ``events``: every event we were told about, once. ``event_key`` is content-based (see webhook.event_key),
  so a batch SendGrid retries (even with new sg_event_ids) changes nothing. Events we could not apply
  (unknown type, unknown send, missing fields) are kept too, with their ``status``: nothing is lost.
- ``delivery_status``: one row per delivery that has heard back: the furthest delivery outcome
  (processed < deferred < delivered < bounce/dropped). It extends the send log's ``deliveries`` row,
  whose ``state`` column belongs to the send (pending ... accepted) and is never touched here.
- ``webhook_rejects``: signed posts whose body was not an event array, kept once per distinct body.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.sendlog import Migration, insert_suppression, now, open_sendlog, transaction

MIGRATIONS: list[Migration] = [
    ("events_001_initial", """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            event_key TEXT NOT NULL UNIQUE,
            event TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('applied', 'unknown_type', 'unmatched', 'invalid')),
            source TEXT NOT NULL CHECK (source IN ('webhook', 'link')),
            email TEXT COLLATE NOCASE,
            send_id INTEGER,
            delivery_id INTEGER,
            issue TEXT,
            list TEXT,
            occurred_at INTEGER,
            url TEXT,
            payload TEXT NOT NULL,
            received_at TEXT NOT NULL
        );
        CREATE INDEX events_issue ON events (issue, list, event);
        CREATE INDEX events_delivery ON events (delivery_id);
        CREATE TABLE delivery_status (
            delivery_id INTEGER PRIMARY KEY,
            outcome TEXT NOT NULL,
            outcome_at INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE webhook_rejects (
            body_sha256 TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            body BLOB NOT NULL,
            received_at TEXT NOT NULL,
            times INTEGER NOT NULL DEFAULT 1
        );
    """),
]

# `dropped` reasons that mean the address itself must not be mailed again, and the suppression reason.
DROP_SUPPRESSION = {"bounced address": "bounce", "invalid": "invalid", "spam reporting address": "spamreport",
                    "unsubscribed address": "unsubscribe"}
# Our names for them -> the send log's suppression reasons (sendlog.REASONS).
SUPPRESSION_REASONS = {"bounce": "bounced", "block": "blocked", "invalid": "invalid", "spamreport": "complained",
                       "unsubscribe": "unsubscribed", "group_unsubscribe": "unsubscribed"}
# Kept out of the stored payload: personal data the report does not need (the event key still covers them).
UNSTORED_FIELDS = frozenset({"ip", "useragent"})
# How far a delivery got; a later event never moves it back (events arrive out of order).
OUTCOME_RANK = {"processed": 1, "deferred": 2, "delivered": 3, "bounce": 4, "dropped": 4}


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


def open_db(path: Path) -> sqlite3.Connection:
    """The send log with this module's tables: one database, one schema_migrations table."""
    return open_sendlog(path, migrations=MIGRATIONS)


@dataclass(frozen=True)
class Match:
    send_id: int
    delivery_id: int
    issue: str
    list_name: str


def find_delivery(conn: sqlite3.Connection, *, send_id: Any, email: str, issue: Any, list_name: Any) -> Match | None:
    """The delivery row the send's custom_args point at; None unless send, issue, list and address all agree."""
    try:
        sid = int(send_id)
    except (TypeError, ValueError):
        return None
    row = conn.execute(
        "SELECT d.id, s.issue, s.list FROM deliveries d JOIN sends s ON s.id = d.send_id "
        "WHERE d.send_id = ? AND d.email = ? AND s.transport = 'sendgrid'", (sid, email)).fetchone()
    if row is None or (issue is not None and row[1] != issue) or (list_name is not None and row[2] != list_name):
        return None
    return Match(send_id=sid, delivery_id=int(row[0]), issue=str(row[1]), list_name=str(row[2]))


# Event times SendGrid could send: Unix seconds up to the year 2286. Anything else is stored as NULL.
MAX_TIMESTAMP = 10**10


def sane_timestamp(value: Any) -> int | None:
    """An event's `timestamp` as whole Unix seconds, or None if it is missing, not a number or absurd."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value < MAX_TIMESTAMP:  # also False for NaN; infinities and huge ints never reach int()
        return None
    return int(value)


def record_event(conn: sqlite3.Connection, *, key: str, event: Mapping[str, Any], status: str, source: str,
                 match: Match | None) -> bool:
    """Insert one event unless its key is known; True if it is new. Call inside a transaction."""
    cursor = conn.execute(
        "INSERT OR IGNORE INTO events (event_key, event, status, source, email, send_id, delivery_id, issue, list, "
        "occurred_at, url, payload, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (key, _text(event.get("event")) or "", status, source, _text(event.get("email")),
         match.send_id if match else None, match.delivery_id if match else None,
         match.issue if match else _text(event.get("nl_issue")),
         match.list_name if match else _text(event.get("nl_list")),
         sane_timestamp(event.get("timestamp")), _text(event.get("url")),
         json.dumps({k: v for k, v in event.items() if k not in UNSTORED_FIELDS}, sort_keys=True, default=str),
         now()))
    return cursor.rowcount == 1


def _text(value: Any) -> str | None:
    """A value for a TEXT column: lone surrogates (valid JSON, not valid UTF-8) become U+FFFD."""
    if value is None:
        return None
    return str(value).encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def advance_outcome(conn: sqlite3.Connection, delivery_id: int, outcome: str, at: int) -> None:
    """Move a delivery's outcome forward (never back). Call inside a transaction."""
    rank = OUTCOME_RANK[outcome]
    row = conn.execute("SELECT outcome, outcome_at FROM delivery_status WHERE delivery_id = ?",
                       (delivery_id,)).fetchone()
    if row is not None:
        old_rank = OUTCOME_RANK.get(row[0], 0)
        if rank < old_rank or (rank == old_rank and at <= row[1]):
            return
    conn.execute("INSERT INTO delivery_status (delivery_id, outcome, outcome_at, updated_at) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (delivery_id) DO UPDATE SET outcome = excluded.outcome, "
                 "outcome_at = excluded.outcome_at, updated_at = excluded.updated_at",
                 (delivery_id, outcome, at, now()))


def record_reject(conn: sqlite3.Connection, body: bytes, reason: str) -> None:
    """Keep a signed body we could not read (once per distinct body; SendGrid retries it)."""
    digest = hashlib.sha256(body).hexdigest()
    with transaction(conn):
        conn.execute("INSERT INTO webhook_rejects (body_sha256, reason, body, received_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (body_sha256) DO UPDATE SET times = times + 1", (digest, reason, body, now()))


# --- the unsubscribe page -------------------------------------------------------------------------------

LINK_SOURCE = "unsubscribe-link"


def link_unsubscribe(conn: sqlite3.Connection, *, email: str, list_name: str, issue: str) -> bool:
    """Suppress the address and record the click; a second click changes nothing. True if newly suppressed."""
    fields = {"event": "unsubscribe", "email": email.lower(), "nl_list": list_name, "nl_issue": issue}
    key = hashlib.sha256(json.dumps(["link", fields], sort_keys=True).encode()).hexdigest()
    with transaction(conn):
        added = insert_suppression(conn, email, reason="unsubscribed", source=f"{LINK_SOURCE} {list_name} {issue}")
        match = _match_link(conn, email=email, list_name=list_name, issue=issue)
        record_event(conn, key=key, event=fields, status="applied", source="link", match=match)
    return added


def _match_link(conn: sqlite3.Connection, *, email: str, list_name: str, issue: str) -> Match | None:
    row = conn.execute("SELECT d.id, s.id FROM deliveries d JOIN sends s ON s.id = d.send_id WHERE s.issue = ? "
                       "AND s.list = ? AND d.email = ? ORDER BY s.transport = 'sendgrid' DESC LIMIT 1",
                       (issue, list_name, email)).fetchone()
    return Match(send_id=int(row[1]), delivery_id=int(row[0]), issue=issue, list_name=list_name) if row else None


def link_resubscribe(conn: sqlite3.Connection, *, email: str) -> tuple[bool, str | None]:
    """Lift only a suppression that an unsubscribe link added. A bounce, block, spam report or SendGrid-side
    unsubscribe stays; one that arrived after the link's (and so was not stored: the first reason is kept)
    takes its place now. Returns (lifted, the reason the address stays suppressed, or None).
    """
    address = email.strip()
    with transaction(conn):
        row = conn.execute("SELECT reason, source FROM suppressions WHERE email = ?", (address,)).fetchone()
        if row is None:
            return False, None
        if row[0] != "unsubscribed" or not str(row[1]).startswith(f"{LINK_SOURCE} "):
            return False, str(row[0])
        blocker = _webhook_suppression(conn, address)
        if blocker is not None:
            conn.execute("UPDATE suppressions SET reason = ?, source = ? WHERE email = ?", (*blocker, address))
            return False, blocker[0]
        conn.execute("DELETE FROM suppressions WHERE email = ?", (address,))
    return True, None


def _webhook_suppression(conn: sqlite3.Connection, email: str) -> tuple[str, str] | None:
    """The newest recorded SendGrid event that suppresses this address (group ones excepted: SendGrid has
    group_resubscribe for those), as (reason, source)."""
    rows = conn.execute("SELECT event, payload FROM events WHERE email = ? AND source = 'webhook' AND status IN "
                        "('applied', 'unmatched') AND event IN ('bounce', 'dropped', 'spamreport', 'unsubscribe') "
                        "ORDER BY occurred_at DESC, id DESC", (email,))
    for kind, payload in rows:
        reason = suppression_reason(json.loads(payload))
        if reason:
            return SUPPRESSION_REASONS[reason], f"webhook {kind}"
    return None
