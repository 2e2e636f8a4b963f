"""What happened after a send, in the SQLite store: SendGrid's events, unsubscribe clicks, the report's counts.

What an event means (which suppression, which outcome) is decided outside (pipeline.web.events); here it is
matched to its delivery and written, every event once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.store._sqlite_tx import transaction
from pipeline.store._types import MAX_REJECTS, OUTCOME_RANK, EventCounts, EventRecord, Match, Send, now

LINK_SOURCE = "unsubscribe-link"
ReasonOf = Callable[[Mapping[str, Any]], tuple[str, str] | None]


class EventsMixin:
    conn: sqlite3.Connection

    def _insert_suppression(self, email: str, *, reason: str, source: str) -> bool:
        raise NotImplementedError

    def _scrub_erased(self, events: list[EventRecord]) -> list[EventRecord]:
        raise NotImplementedError

    def counts(self, send_id: int) -> dict[str, int]:
        raise NotImplementedError

    def _find_delivery(self, record: EventRecord) -> Match | None:
        """The delivery the send's custom_args point at; None unless send, issue, list and address all agree."""
        try:
            sid = int(record.send_id)
        except (TypeError, ValueError, OverflowError):
            return None
        if not -2**63 <= sid < 2**63:
            return None
        row = self.conn.execute(
            "SELECT d.id, s.issue, s.list FROM deliveries d JOIN sends s ON s.id = d.send_id "
            "WHERE d.send_id = ? AND d.email = ? AND s.transport = 'sendgrid'", (sid, record.email)).fetchone()
        if row is None or (record.issue is not None and row[1] != record.issue) or \
                (record.list_name is not None and row[2] != record.list_name):
            return None
        return Match(send_id=sid, delivery_id=int(row[0]), issue=str(row[1]), list_name=str(row[2]))

    def _insert_event(self, r: EventRecord, status: str, match: Match | None) -> bool:
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO events (event_key, event, status, source, email, send_id, delivery_id, issue, "
            "list, occurred_at, url, payload, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.key, r.event, status, r.source, r.email, match.send_id if match else None,
             match.delivery_id if match else None, match.issue if match else r.issue,
             match.list_name if match else r.list_name, r.occurred_at, r.url, r.payload, now()))
        return cursor.rowcount == 1

    def _advance_outcome(self, delivery_id: int, outcome: str, at: int) -> None:
        """Move a delivery's outcome forward (never back)."""
        rank = OUTCOME_RANK[outcome]
        row = self.conn.execute("SELECT outcome, outcome_at FROM delivery_status WHERE delivery_id = ?",
                                (delivery_id,)).fetchone()
        if row is not None:
            old_rank = OUTCOME_RANK.get(row[0], 0)
            if rank < old_rank or (rank == old_rank and at <= row[1]):
                return
        self.conn.execute("INSERT INTO delivery_status (delivery_id, outcome, outcome_at, updated_at) "
                          "VALUES (?, ?, ?, ?) ON CONFLICT (delivery_id) DO UPDATE SET outcome = excluded.outcome, "
                          "outcome_at = excluded.outcome_at, updated_at = excluded.updated_at",
                          (delivery_id, outcome, at, now()))

    def record_events(self, events: Sequence[EventRecord]) -> list[tuple[str, bool]]:
        """Store every event once and apply the new ones, in one transaction. Returns per event its status
        (`duplicate`, `applied`, `unmatched`, `unknown_type`, `invalid`) and whether it newly suppressed."""
        done: list[tuple[str, bool]] = []
        with transaction(self.conn):
            for r in self._scrub_erased(list(events)):
                match = self._find_delivery(r) if r.status == "applied" else None
                status = "unmatched" if r.status == "applied" and match is None else r.status
                if not self._insert_event(r, status, match):
                    done.append(("duplicate", False))
                    continue
                suppressed = False
                if status == "applied":
                    assert match is not None and r.email is not None
                    if r.outcome in OUTCOME_RANK:
                        self._advance_outcome(match.delivery_id, r.outcome, r.occurred_at or 0)
                    if r.lifts_group_unsubscribe:  # undoes only what a group_unsubscribe event added
                        self.conn.execute("DELETE FROM suppressions WHERE email = ? AND "
                                          "source = 'webhook group_unsubscribe'", (r.email.strip(),))
                    if r.suppress:
                        suppressed = self._insert_suppression(r.email, reason=r.suppress[0], source=r.suppress[1])
                done.append((status, suppressed))
        return done

    def record_reject(self, body: bytes, reason: str) -> None:
        """Keep a signed body we could not read (once per distinct body; SendGrid retries it)."""
        digest = hashlib.sha256(body).hexdigest()
        with transaction(self.conn):
            self.conn.execute("INSERT INTO webhook_rejects (body_sha256, reason, body, received_at) VALUES "
                              "(?, ?, ?, ?) ON CONFLICT (body_sha256) DO UPDATE SET times = times + 1",
                              (digest, reason, body, now()))
            self.conn.execute("DELETE FROM webhook_rejects WHERE body_sha256 IN (SELECT body_sha256 FROM "
                              "webhook_rejects ORDER BY received_at DESC LIMIT -1 OFFSET ?)", (MAX_REJECTS,))

    # --- the unsubscribe page ---------------------------------------------------------------------------

    def link_unsubscribe(self, *, email: str, list_name: str, issue: str) -> bool:
        """Suppress the address and record the click; a second click changes nothing. True if newly suppressed."""
        fields = {"event": "unsubscribe", "email": email.lower(), "nl_list": list_name, "nl_issue": issue}
        key = hashlib.sha256(json.dumps(["link", fields], sort_keys=True).encode()).hexdigest()
        record = EventRecord(key=key, event="unsubscribe", status="applied", source="link", email=email.lower(),
                             send_id=None, issue=issue, list_name=list_name, occurred_at=None, url=None,
                             payload=json.dumps(fields, sort_keys=True))
        with transaction(self.conn):
            (record,) = self._scrub_erased([record])  # an erased reader's old link: no address stored, none added
            added = self._insert_suppression(email, reason="unsubscribed",
                                             source=f"{LINK_SOURCE} {list_name} {issue}")
            row = self.conn.execute("SELECT d.id, s.id FROM deliveries d JOIN sends s ON s.id = d.send_id WHERE "
                                    "s.issue = ? AND s.list = ? AND d.email = ? ORDER BY s.transport = 'sendgrid' "
                                    "DESC LIMIT 1", (issue, list_name, email)).fetchone()
            match = Match(send_id=int(row[1]), delivery_id=int(row[0]), issue=issue, list_name=list_name) \
                if row else None
            self._insert_event(record, record.status, match if record.email else None)
        return added

    def link_resubscribe(self, *, email: str, reason_of: ReasonOf | None = None) -> tuple[bool, str | None]:
        """Lift only a suppression that an unsubscribe link added. A bounce, block, spam report or SendGrid-side
        unsubscribe stays; one that arrived after the link's (and so was not stored: the first reason is kept)
        takes its place now (`reason_of` says which events suppress). Returns (lifted, the reason the address
        stays suppressed, or None)."""
        address = email.strip()
        with transaction(self.conn):
            row = self.conn.execute("SELECT reason, source FROM suppressions WHERE email = ?", (address,)).fetchone()
            if row is None:
                return False, None
            if row[0] != "unsubscribed" or not str(row[1]).startswith(f"{LINK_SOURCE} "):
                return False, str(row[0])
            rows = self.conn.execute(
                "SELECT payload FROM events WHERE email = ? AND source = 'webhook' AND status IN "
                "('applied', 'unmatched') AND event IN ('bounce', 'dropped', 'spamreport', 'unsubscribe') "
                "ORDER BY occurred_at DESC, id DESC", (address,)).fetchall() if reason_of else []
            for (payload,) in rows:
                assert reason_of is not None
                if (blocker := reason_of(json.loads(payload))) is not None:
                    self.conn.execute("UPDATE suppressions SET reason = ?, source = ? WHERE email = ?",
                                      (*blocker, address))
                    return False, blocker[0]
            self.conn.execute("DELETE FROM suppressions WHERE email = ?", (address,))
        return True, None

    # --- the report -------------------------------------------------------------------------------------

    def event_counts(self, send: Send, counted: dict[str, tuple[str, ...]]) -> EventCounts:
        """A send's recipients and, from its events, distinct addresses per group of event kinds, opens,
        unique clicks and the links by clicks."""
        conn, issue, name = self.conn, send.issue, send.list_name
        states = self.counts(send.id)
        total, accepted = sum(states.values()), states["accepted"]
        where = "issue = ? AND list = ? AND status = 'applied' AND event IN ({})"
        distinct = {key: int(conn.execute(
            f"SELECT count(DISTINCT lower(email)) FROM events WHERE {where.format(','.join('?' * len(kinds)))}",
            (issue, name, *kinds)).fetchone()[0]) for key, kinds in counted.items()}
        opens = conn.execute(f"SELECT count(*) FROM events WHERE {where.format('?')}", (issue, name, "open")).fetchone()
        unique = conn.execute(f"SELECT count(DISTINCT lower(email)) FROM events WHERE {where.format('?')}",
                              (issue, name, "click")).fetchone()
        links = [(str(url), int(n), int(u)) for url, n, u in conn.execute(
            f"SELECT url, count(*), count(DISTINCT lower(email)) FROM events WHERE {where.format('?')} "
            "GROUP BY url ORDER BY count(*) DESC, url", (issue, name, "click"))]
        return EventCounts(recipients=int(total), accepted=int(accepted or 0), distinct=distinct,
                           opens=int(opens[0]), unique_clicks=int(unique[0]), links=links)

    def event_times(self, issue: str) -> list[tuple[int, str]]:
        """(unix time, `open` or `click`) of an issue's applied opens and clicks, oldest first."""
        rows = self.conn.execute("SELECT occurred_at, event FROM events WHERE issue = ? AND status = 'applied' "
                                 "AND event IN ('open', 'click') AND occurred_at IS NOT NULL ORDER BY occurred_at",
                                 (issue,))
        return [(int(at), str(kind)) for at, kind in rows]
