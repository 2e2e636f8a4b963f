"""What happened after a send, in the PostgreSQL store: SendGrid's events, unsubscribe clicks, the report's counts.

The same methods as the SQLite engine's (_sqlite_events), whose docstrings say what each one means. Any
number of `serve` instances may write at once: every write is one transaction, events are unique by their
content key (ON CONFLICT DO NOTHING), and a delivery's outcome only moves forward under a row lock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from pipeline.store._pg_schema import key
from pipeline.store._sqlite_events import LINK_SOURCE
from pipeline.store._types import OUTCOME_RANK, EventCounts, EventRecord, Match, Send, now

ReasonOf = Callable[[Mapping[str, Any]], tuple[str, str] | None]
_RANK_SQL = "CASE {} " + " ".join(f"WHEN '{k}' THEN {v}" for k, v in OUTCOME_RANK.items()) + " ELSE 0 END"


class PgEventsMixin:
    def _tx(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        raise NotImplementedError

    def _insert_suppression(self, conn: psycopg.Connection[Any], email: str, *, reason: str, source: str) -> bool:
        return self._suppression_cursor(conn, email, reason=reason, source=source).rowcount == 1

    def _insert_event(self, conn: psycopg.Connection[Any], r: EventRecord, status: str, match: Match | None) -> bool:
        cursor = conn.execute(
            "INSERT INTO events (event_key, event, status, source, email, send_id, delivery_id, issue, list, "
            "occurred_at, url, payload, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (event_key) DO NOTHING",
            (r.key, r.event, status, r.source, r.email, match.send_id if match else None,
             match.delivery_id if match else None, match.issue if match else r.issue,
             match.list_name if match else r.list_name, r.occurred_at, r.url, r.payload, now()))
        return cursor.rowcount == 1

    def _advance_outcome(self, conn: psycopg.Connection[Any], delivery_id: int, outcome: str, at: int) -> None:
        """Move a delivery's outcome forward (never back), in one statement: safe when two `serve` race."""
        rank = OUTCOME_RANK[outcome]
        old = _RANK_SQL.format("delivery_status.outcome")
        conn.execute(f"INSERT INTO delivery_status (delivery_id, outcome, outcome_at, updated_at) "
                     f"VALUES (%s, %s, %s, %s) ON CONFLICT (delivery_id) DO UPDATE SET outcome = excluded.outcome, "
                     f"outcome_at = excluded.outcome_at, updated_at = excluded.updated_at "
                     f"WHERE {old} < %s OR ({old} = %s AND delivery_status.outcome_at < excluded.outcome_at)",
                     (delivery_id, outcome, at, now(), rank, rank))

    def record_events(self, events: Sequence[EventRecord]) -> list[tuple[str, bool]]:
        """Store every event once and apply the new ones, in one transaction. Returns per event its status
        (`duplicate`, `applied`, `unmatched`, `unknown_type`, `invalid`) and whether it newly suppressed.

        In three pipelined steps (a round trip each, not two or three per event): find every event's
        delivery, insert every event, then apply the new ones in order. Only the order of the reads moves:
        finding a delivery reads sends and deliveries, which recording events does not change."""
        with self._tx() as conn:
            with conn.pipeline():
                found = [self._find_cursor(conn, r) if r.status == "applied" else None for r in events]
            matches = [self._match(r, c) for r, c in zip(events, found, strict=True)]
            statuses = ["unmatched" if r.status == "applied" and m is None else r.status
                        for r, m in zip(events, matches, strict=True)]
            with conn.pipeline():
                inserted = [self._insert_event_cursor(conn, r, status, m)
                            for r, status, m in zip(events, statuses, matches, strict=True)]
            new = [c.rowcount == 1 for c in inserted]
            applied = [i for i, status in enumerate(statuses) if new[i] and status == "applied"]
            suppressing: dict[int, psycopg.Cursor[Any]] = {}
            with conn.pipeline():
                # Outcomes in delivery order (two posts at once lock their rows in the same order: no deadlock),
                # each delivery's in the order of its events (a stable sort): the outcome only moves forward.
                for delivery_id, outcome, at in sorted(
                        ((m.delivery_id, r.outcome, r.occurred_at or 0) for r, m in
                         ((events[i], matches[i]) for i in applied) if m is not None and r.outcome in OUTCOME_RANK),
                        key=lambda advance: advance[0]):
                    self._advance_outcome(conn, delivery_id, outcome, at)
                for i in applied:
                    r = events[i]
                    assert r.email is not None
                    if r.lifts_group_unsubscribe:  # undoes only what a group_unsubscribe event added
                        conn.execute(f"DELETE FROM suppressions WHERE {key('email')} = {key('%s::text')} AND "
                                     f"source = 'webhook group_unsubscribe'", (r.email.strip(),))
                    if r.suppress:
                        suppressing[i] = self._suppression_cursor(conn, r.email, reason=r.suppress[0],
                                                                  source=r.suppress[1])
        return [("duplicate", False) if not new[i] else
                (statuses[i], i in suppressing and suppressing[i].rowcount == 1) for i in range(len(events))]

    def _find_cursor(self, conn: psycopg.Connection[Any], record: EventRecord) -> psycopg.Cursor[Any] | None:
        """The query for the delivery an event names (send, address), sent but not read yet (pipeline mode);
        None when the event cannot match one."""
        try:
            sid = int(record.send_id)
        except (TypeError, ValueError, OverflowError):
            return None
        if not -2**63 <= sid < 2**63 or record.email is None:
            return None
        return conn.execute(
            f"SELECT d.id, s.issue, s.list, s.id FROM deliveries d JOIN sends s ON s.id = d.send_id "
            f"WHERE d.send_id = %s AND {key('d.email')} = {key('%s::text')} AND s.transport = 'sendgrid'",
            (sid, record.email))

    @staticmethod
    def _match(record: EventRecord, cursor: psycopg.Cursor[Any] | None) -> Match | None:
        row = cursor.fetchone() if cursor is not None else None
        if row is None or (record.issue is not None and row[1] != record.issue) or \
                (record.list_name is not None and row[2] != record.list_name):
            return None
        return Match(send_id=int(row[3]), delivery_id=int(row[0]), issue=str(row[1]), list_name=str(row[2]))

    def _insert_event_cursor(self, conn: psycopg.Connection[Any], r: EventRecord, status: str,
                             match: Match | None) -> psycopg.Cursor[Any]:
        return conn.execute(
            "INSERT INTO events (event_key, event, status, source, email, send_id, delivery_id, issue, list, "
            "occurred_at, url, payload, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (event_key) DO NOTHING",
            (r.key, r.event, status, r.source, r.email, match.send_id if match else None,
             match.delivery_id if match else None, match.issue if match else r.issue,
             match.list_name if match else r.list_name, r.occurred_at, r.url, r.payload, now()))

    def _suppression_cursor(self, conn: psycopg.Connection[Any], email: str, *, reason: str,
                            source: str) -> psycopg.Cursor[Any]:
        return conn.execute(f"INSERT INTO suppressions (email, reason, source, created_at) VALUES "
                            f"(%s, %s, %s, %s) ON CONFLICT (({key('email')})) DO NOTHING",
                            (email.strip(), reason, source, now()))

    def record_reject(self, body: bytes, reason: str) -> None:
        """Keep a signed body we could not read (once per distinct body; SendGrid retries it)."""
        digest = hashlib.sha256(body).hexdigest()
        with self._tx() as conn:
            conn.execute("INSERT INTO webhook_rejects (body_sha256, reason, body, received_at) VALUES "
                         "(%s, %s, %s, %s) ON CONFLICT (body_sha256) DO UPDATE SET times = webhook_rejects.times + 1",
                         (digest, reason, body, now()))

    # --- the unsubscribe page ---------------------------------------------------------------------------

    def link_unsubscribe(self, *, email: str, list_name: str, issue: str) -> bool:
        """Suppress the address and record the click; a second click changes nothing. True if newly suppressed."""
        fields = {"event": "unsubscribe", "email": email.lower(), "nl_list": list_name, "nl_issue": issue}
        event_key = hashlib.sha256(json.dumps(["link", fields], sort_keys=True).encode()).hexdigest()
        record = EventRecord(key=event_key, event="unsubscribe", status="applied", source="link",
                             email=email.lower(), send_id=None, issue=issue, list_name=list_name, occurred_at=None,
                             url=None, payload=json.dumps(fields, sort_keys=True))
        with self._tx() as conn:
            added = self._insert_suppression(conn, email, reason="unsubscribed",
                                             source=f"{LINK_SOURCE} {list_name} {issue}")
            row = conn.execute(f"SELECT d.id, s.id FROM deliveries d JOIN sends s ON s.id = d.send_id WHERE "
                               f"s.issue = %s AND s.list = %s AND {key('d.email')} = {key('%s::text')} "
                               f"ORDER BY s.transport = 'sendgrid' DESC LIMIT 1", (issue, list_name, email)).fetchone()
            match = Match(send_id=int(row[1]), delivery_id=int(row[0]), issue=issue, list_name=list_name) \
                if row else None
            self._insert_event(conn, record, "applied", match)
        return added

    def link_resubscribe(self, *, email: str, reason_of: ReasonOf | None = None) -> tuple[bool, str | None]:
        """Lift only a suppression that an unsubscribe link added (see the SQLite engine's docstring)."""
        address = email.strip()
        with self._tx() as conn:
            row = conn.execute(f"SELECT reason, source FROM suppressions WHERE {key('email')} = {key('%s::text')} "
                               f"FOR UPDATE", (address,)).fetchone()
            if row is None:
                return False, None
            if row[0] != "unsubscribed" or not str(row[1]).startswith(f"{LINK_SOURCE} "):
                return False, str(row[0])
            blockers = f"SELECT payload FROM events WHERE {key('email')} = {key('%s::text')} AND source = 'webhook' " \
                       f"AND status IN ('applied', 'unmatched') AND event IN ('bounce', 'dropped', 'spamreport', " \
                       f"'unsubscribe') ORDER BY occurred_at DESC NULLS LAST, id DESC"
            rows = conn.execute(blockers, (address,)).fetchall() if reason_of else []
            for (payload,) in rows:
                assert reason_of is not None
                if (blocker := reason_of(json.loads(payload))) is not None:
                    conn.execute(f"UPDATE suppressions SET reason = %s, source = %s WHERE {key('email')} = "
                                 f"{key('%s::text')}", (*blocker, address))
                    return False, blocker[0]
            conn.execute(f"DELETE FROM suppressions WHERE {key('email')} = {key('%s::text')}", (address,))
        return True, None

    # --- the report -------------------------------------------------------------------------------------

    def event_counts(self, send: Send, counted: dict[str, tuple[str, ...]]) -> EventCounts:
        """A send's recipients and, from its events, distinct addresses per group of event kinds, opens,
        unique clicks and the links by clicks."""
        issue, name, addr = send.issue, send.list_name, key("email")
        where = "issue = %s AND list = %s AND status = 'applied' AND event = ANY(%s)"
        with self._tx() as conn:
            total, accepted = conn.execute("SELECT count(*), count(*) FILTER (WHERE state = 'accepted') "
                                           "FROM deliveries WHERE send_id = %s", (send.id,)).fetchone() or (0, 0)
            distinct = {k: int(_one(conn, f"SELECT count(DISTINCT {addr}) FROM events WHERE {where}",
                                    (issue, name, list(kinds)))) for k, kinds in counted.items()}
            opens = _one(conn, f"SELECT count(*) FROM events WHERE {where}", (issue, name, ["open"]))
            unique = _one(conn, f"SELECT count(DISTINCT {addr}) FROM events WHERE {where}", (issue, name, ["click"]))
            links = [(str(url), int(n), int(u)) for url, n, u in conn.execute(
                f"SELECT url, count(*), count(DISTINCT {addr}) FROM events WHERE {where} "
                f"GROUP BY url ORDER BY count(*) DESC, url", (issue, name, ["click"]))]
        return EventCounts(recipients=int(total), accepted=int(accepted or 0), distinct=distinct,
                           opens=int(opens), unique_clicks=int(unique), links=links)

    def event_times(self, issue: str) -> list[tuple[int, str]]:
        """(unix time, `open` or `click`) of an issue's applied opens and clicks, oldest first."""
        with self._tx() as conn:
            rows = conn.execute("SELECT occurred_at, event FROM events WHERE issue = %s AND status = 'applied' "
                                "AND event IN ('open', 'click') AND occurred_at IS NOT NULL ORDER BY occurred_at",
                                (issue,)).fetchall()
        return [(int(at), str(kind)) for at, kind in rows]


def _one(conn: psycopg.Connection[Any], sql: str, params: tuple[object, ...]) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row and row[0] is not None else 0
