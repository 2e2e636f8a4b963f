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
from pipeline.store._types import MAX_REJECTS, OUTCOME_RANK, EventCounts, EventRecord, Match, Send, erased_marker, now

ReasonOf = Callable[[Mapping[str, Any]], tuple[str, str] | None]
_RANK_SQL = "CASE {} " + " ".join(f"WHEN '{k}' THEN {v}" for k, v in OUTCOME_RANK.items()) + " ELSE 0 END"


class PgEventsMixin:
    def _tx(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        raise NotImplementedError

    def _scrub_erased(self, conn: psycopg.Connection[Any], events: list[EventRecord]) -> list[EventRecord]:
        raise NotImplementedError

    def _writing_addresses(self) -> AbstractContextManager[psycopg.Connection[Any]]:
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

    def record_events(self, events: Sequence[EventRecord]) -> list[tuple[str, bool]]:
        """Store every event once and apply the new ones, in one transaction. Returns per event its status
        (`duplicate`, `applied`, `unmatched`, `unknown_type`, `invalid`) and whether it newly suppressed.

        A statement per step for the whole post, not two or three per event: find every event's delivery,
        insert every event (the new ones are returned), move the outcomes forward, then the rare
        suppressions one by one, in order. Only the order of the reads moves: finding a delivery reads
        sends and deliveries, which recording events does not change."""
        with self._writing_addresses() as conn:
            events = self._scrub_erased(conn, list(events))
            matches = self._find_all(conn, events)
            statuses = ["unmatched" if r.status == "applied" and m is None else r.status
                        for r, m in zip(events, matches, strict=True)]
            new = self._insert_all(conn, events, statuses, matches)
            applied = [i for i, status in enumerate(statuses) if new[i] and status == "applied"]
            self._advance_all(conn, [(m.delivery_id, r.outcome, r.occurred_at or 0) for r, m in
                                     ((events[i], matches[i]) for i in applied)
                                     if m is not None and r.outcome in OUTCOME_RANK])
            suppressing: dict[int, psycopg.Cursor[Any]] = {}
            with conn.pipeline():
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

    def _find_all(self, conn: psycopg.Connection[Any], events: Sequence[EventRecord]) -> list[Match | None]:
        """The delivery each event names, in one query; None unless send, issue, list and address all agree."""
        wanted: dict[int, tuple[int, str]] = {}
        for i, r in enumerate(events):
            if r.status != "applied" or r.email is None:
                continue
            try:
                sid = int(r.send_id)
            except (TypeError, ValueError, OverflowError):
                continue
            if -2**63 <= sid < 2**63:
                wanted[i] = (sid, r.email)
        found: dict[int, tuple[Any, ...]] = {}
        if wanted:
            rows = conn.execute(
                f"SELECT u.i, d.id, s.issue, s.list, s.id FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) "
                f"AS u (i, sid, email) JOIN deliveries d ON d.send_id = u.sid AND {key('d.email')} = "
                f"{key('u.email')} JOIN sends s ON s.id = d.send_id WHERE s.transport = 'sendgrid'",
                (list(wanted), [w[0] for w in wanted.values()], [w[1] for w in wanted.values()])).fetchall()
            found = {int(row[0]): row for row in rows}
        matches: list[Match | None] = []
        for i, r in enumerate(events):
            row = found.get(i)
            if row is None or (r.issue is not None and row[2] != r.issue) or \
                    (r.list_name is not None and row[3] != r.list_name):
                matches.append(None)
            else:
                matches.append(Match(send_id=int(row[4]), delivery_id=int(row[1]), issue=str(row[2]),
                                     list_name=str(row[3])))
        return matches

    def _insert_all(self, conn: psycopg.Connection[Any], events: Sequence[EventRecord], statuses: list[str],
                    matches: list[Match | None]) -> list[bool]:
        """Insert every event not stored yet, in one statement; per event whether it was new (of two with one
        key in the same post, the first)."""
        columns: list[list[Any]] = [[] for _ in range(11)]
        for r, status, m in zip(events, statuses, matches, strict=True):
            for column, value in zip(columns, (
                    r.key, r.event, status, r.source, r.email, m.send_id if m else None,
                    m.delivery_id if m else None, m.issue if m else r.issue, m.list_name if m else r.list_name,
                    r.occurred_at, r.url), strict=True):
                column.append(value)
        payloads = [r.payload for r in events]
        rows = conn.execute(
            "INSERT INTO events (event_key, event, status, source, email, send_id, delivery_id, issue, list, "
            "occurred_at, url, payload, received_at) SELECT k, e, st, so, em, sid, did, iss, li, oc, url, pl, %s "
            "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[], "
            "%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[]) WITH ORDINALITY "
            "AS u (k, e, st, so, em, sid, did, iss, li, oc, url, pl, n) ORDER BY n "
            "ON CONFLICT (event_key) DO NOTHING RETURNING event_key", (now(), *columns, payloads)).fetchall()
        fresh = {str(row[0]) for row in rows}
        new = []
        for r in events:
            new.append(r.key in fresh)
            fresh.discard(r.key)  # a second event with that key in this post is a duplicate
        return new

    def _advance_all(self, conn: psycopg.Connection[Any], advances: list[tuple[int, str | None, int]]) -> None:
        """Move outcomes forward (never back), in one statement. Per delivery the post's own events are
        folded first by the same rule (the later one wins only with a higher rank, or the same rank and a
        later time), which gives what applying them one by one gives; the rows are locked in delivery
        order, so two posts at once cannot deadlock."""
        best: dict[int, tuple[str, int]] = {}
        for delivery_id, outcome, at in advances:
            assert outcome is not None
            old = best.get(delivery_id)
            if old is None or (OUTCOME_RANK[outcome], at) > (OUTCOME_RANK[old[0]], old[1]):
                best[delivery_id] = (outcome, at)
        if not best:
            return
        ids = sorted(best)
        rank_new, rank_old = _RANK_SQL.format("excluded.outcome"), _RANK_SQL.format("delivery_status.outcome")
        conn.execute(f"INSERT INTO delivery_status (delivery_id, outcome, outcome_at, updated_at) SELECT d, o, a, %s "
                     f"FROM unnest(%s::bigint[], %s::text[], %s::bigint[]) AS u (d, o, a) ORDER BY d "
                     f"ON CONFLICT (delivery_id) DO UPDATE SET outcome = excluded.outcome, "
                     f"outcome_at = excluded.outcome_at, updated_at = excluded.updated_at "
                     f"WHERE {rank_old} < {rank_new} OR ({rank_old} = {rank_new} AND "
                     f"delivery_status.outcome_at < excluded.outcome_at)",
                     (now(), ids, [best[i][0] for i in ids], [best[i][1] for i in ids]))

    def _suppression_cursor(self, conn: psycopg.Connection[Any], email: str, *, reason: str,
                            source: str) -> psycopg.Cursor[Any]:
        """Not for an erased address: its marker suppresses it already, and the address must not come back."""
        return conn.execute(f"INSERT INTO suppressions (email, reason, source, created_at) SELECT %s, %s, %s, %s "
                            f"WHERE NOT EXISTS (SELECT 1 FROM erased WHERE marker = %s) "
                            f"ON CONFLICT (({key('email')})) DO NOTHING",
                            (email.strip(), reason, source, now(), erased_marker(email)))

    def record_reject(self, body: bytes, reason: str) -> None:
        """Keep a signed body we could not read (once per distinct body; SendGrid retries it)."""
        digest = hashlib.sha256(body).hexdigest()
        with self._writing_addresses() as conn:
            conn.execute("INSERT INTO webhook_rejects (body_sha256, reason, body, received_at) VALUES "
                         "(%s, %s, %s, %s) ON CONFLICT (body_sha256) DO UPDATE SET times = webhook_rejects.times + 1",
                         (digest, reason, body, now()))
            conn.execute("DELETE FROM webhook_rejects WHERE body_sha256 IN (SELECT body_sha256 FROM webhook_rejects "
                         "ORDER BY received_at DESC OFFSET %s)", (MAX_REJECTS,))

    # --- the unsubscribe page ---------------------------------------------------------------------------

    def link_unsubscribe(self, *, email: str, list_name: str, issue: str) -> bool:
        """Suppress the address and record the click; a second click changes nothing. True if newly suppressed."""
        fields = {"event": "unsubscribe", "email": email.lower(), "nl_list": list_name, "nl_issue": issue}
        event_key = hashlib.sha256(json.dumps(["link", fields], sort_keys=True).encode()).hexdigest()
        record = EventRecord(key=event_key, event="unsubscribe", status="applied", source="link",
                             email=email.lower(), send_id=None, issue=issue, list_name=list_name, occurred_at=None,
                             url=None, payload=json.dumps(fields, sort_keys=True))
        with self._writing_addresses() as conn:
            (record,) = self._scrub_erased(conn, [record])  # an erased reader's old link: no address stored, none added
            added = self._insert_suppression(conn, email, reason="unsubscribed",
                                             source=f"{LINK_SOURCE} {list_name} {issue}")
            row = conn.execute(f"SELECT d.id, s.id FROM deliveries d JOIN sends s ON s.id = d.send_id WHERE "
                               f"s.issue = %s AND s.list = %s AND {key('d.email')} = {key('%s::text')} "
                               f"ORDER BY s.transport = 'sendgrid' DESC LIMIT 1", (issue, list_name, email)).fetchone()
            match = Match(send_id=int(row[1]), delivery_id=int(row[0]), issue=issue, list_name=list_name) \
                if row else None
            self._insert_event(conn, record, record.status, match if record.email else None)
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
