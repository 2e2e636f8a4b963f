"""`find_address` / `erase_address` on both engines: every trace of one reader gone in one transaction, the
sends' counts kept, a marker that keeps the address from coming back (suppressions, events), and `db copy`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sendkit import recorded_send
from storekit import seed_send, select

from pipeline.store import Store, erased_marker
from pipeline.store._types import EventRecord
from pipeline.web.webhook import process_events

ADA = "ada@example.org"
TABLES = ("sends", "batches", "deliveries", "suppressions", "events", "delivery_status", "webhook_rejects", "erased",
          "readmitted")


def _events(send_id: int, email: str = "Ada@Example.org") -> list[dict[str, Any]]:
    common = {"email": email, "nl_send_id": str(send_id), "nl_issue": "001-hello", "nl_list": "sample",
              "sg_message_id": "msg-1.filter", "ip": "203.0.113.9", "useragent": "Mail/1.0"}
    return [{**common, "event": "delivered", "timestamp": 1_700_000_000},
            {**common, "event": "open", "timestamp": 1_700_000_100},
            {**common, "event": "click", "timestamp": 1_700_000_200,
             "url": f"https://news.example.org/unsubscribe/TOKENOFADA?utm=x&for={email}"},
            {**common, "event": "click", "timestamp": 1_700_000_300, "url": "https://example.org/article"},
            {**common, "email": "grace@example.org", "event": "open", "timestamp": 1_700_000_400}]


def _everything(store: Store) -> str:
    """Every row of every table as text (bytes decoded), lower-cased: where an address could be."""
    rows = []
    for table in TABLES:
        for row in select(store, f"SELECT * FROM {table}"):
            rows.append(" ".join(bytes(v).decode("utf-8", "replace") if isinstance(v, bytes | memoryview) else str(v)
                                 for v in row))
    return "\n".join(rows).lower()


def _report(store: Store, send_id: int) -> tuple[object, ...]:
    send = next(s for s in store.sends_of_issue("001-hello") if s.id == send_id)
    counted = {"delivered": ("delivered",), "opens": ("open",), "clicks": ("click",)}
    found = store.event_counts(send, counted)
    return store.counts(send_id), found.distinct, found.opens, found.unique_clicks, sorted(found.links)


def test_erasing_a_reader_leaves_no_trace_and_every_count(store: Store) -> None:
    send_id = seed_send(store, issue="001-hello")
    outcome = process_events(store, _events(send_id))
    assert outcome.applied == 5
    assert store.add_suppression("ADA@example.org", reason="manual", source="cli")
    store.record_reject(b'{"not": "a list", "email": "ada@EXAMPLE.org"}', "not an array")
    store.record_reject(b'{"someone": "else"}', "not an array")
    before = _report(store, send_id)
    assert ADA in _everything(store)

    found = store.find_address(" Ada@Example.org ")
    assert (found.deliveries, found.events, found.suppressions, found.rejects, found.marked) == (1, 4, 1, 1, False)
    assert found.sends == (("001-hello", "sample", "sendgrid"),)
    assert _report(store, send_id) == before  # finding changed nothing

    erased = store.erase_address("ADA@example.ORG")
    assert (erased.deliveries, erased.events, erased.suppressions, erased.rejects) == (1, 4, 1, 1)
    text = _everything(store)
    assert ADA not in text and "ada%40example.org" not in text and "tokenofada" not in text
    assert "203.0.113.9" not in text  # the webhook never stored the IP
    counts, distinct, opens, clicks, links = _report(store, send_id)
    assert (counts, distinct, opens, clicks) == before[:4]  # the send's states and the report's counts
    assert [n for _, n, _ in links] == [n for _, n, _ in before[4]]
    assert "https://news.example.org/unsubscribe/[token]?utm=x&for=[erased]" in [u for u, _, _ in links]
    assert "grace@example.org" in text and select(store, "SELECT count(*) FROM webhook_rejects")[0][0] == 1
    payloads = [json.loads(p) for (p,) in select(store, "SELECT payload FROM events WHERE email LIKE ?", ("erased-%",))]
    assert sorted(p["event"] for p in payloads) == ["click", "click", "delivered", "open"]
    assert all(p["erased"] and p["timestamp"] >= 1_700_000_000 for p in payloads)
    assert store.erased_markers() == {erased_marker(ADA)} and store.is_erased("ADA@EXAMPLE.ORG")
    assert not store.is_suppressed(ADA) and store.find_address(ADA).marked
    assert store.find_address(ADA).total == 0


def test_an_erased_address_is_never_stored_again(store: Store) -> None:
    send_id = seed_send(store, issue="001-hello")
    store.erase_address(ADA)
    assert not store.add_suppression("Ada@Example.org", reason="manual", source="cli")
    assert store.add_suppressions([(ADA, "bounced"), ("new@example.org", "bounced")], source="sendgrid bounces") == 1
    unsubscribe = {"email": "ADA@example.org", "event": "unsubscribe", "timestamp": 1_700_000_500,
                   "nl_send_id": str(send_id), "nl_issue": "001-hello", "nl_list": "sample"}
    outcome = process_events(store, [unsubscribe, {**unsubscribe, "email": "grace@example.org"}])
    assert (outcome.unmatched, outcome.applied, outcome.suppressed) == (1, 1, ["grace@example.org"])
    assert not store.link_unsubscribe(email="ada@example.org", list_name="sample", issue="001-hello")
    # sorted: the two may be stored within one millisecond, and the list orders by time, then address
    assert sorted(s.email for s in store.list_suppressions()) == ["grace@example.org", "new@example.org"]
    assert ADA not in _everything(store)
    assert process_events(store, [unsubscribe]).duplicates == 1  # a retry of the post is still a duplicate


def test_unsent_deliveries_of_an_erased_reader_are_never_sent(store: Store) -> None:
    send = recorded_send(store, 4)  # r0..r3 pending
    claim = store.claim_batch(send.id, size=2, request_id="first")  # r0, r1 in flight: a request under way
    assert claim is not None
    store.record([])
    erased = store.erase_address("R1@example.org")
    assert erased.deliveries == 1
    store.erase_address("r2@example.org")
    counts = store.counts(send.id)
    assert (counts["in_flight"], counts["pending"], counts["suppressed"]) == (1, 1, 2)
    rest = store.claim_batch(send.id, size=10, after=claim.last, request_id="second")
    assert rest is not None and [row[1] for row in rest.rows] == ["r3@example.org"]


def test_a_readmitted_reader_is_still_skipped_by_sends_created_before(store: Store) -> None:
    before = seed_send(store, issue="001-hello")
    store.erase_address(ADA)
    assert not store.readmit("grace@example.org")  # never erased: nothing to lift
    time.sleep(0.002)  # timestamps are to the millisecond
    assert store.readmit("Ada@Example.org") and not store.is_erased(ADA) and not store.readmit(ADA)
    time.sleep(0.002)
    after = seed_send(store, issue="002-next", recipients=(ADA,))
    assert store.erased_markers() == set() == store.erased_markers(after)
    assert store.erased_markers(before) == {erased_marker(ADA)}
    assert store.add_suppression(ADA, reason="manual", source="cli")  # the address may be stored again

    store.erase_address(ADA)  # erased again: skipped by every send, its readmission forgotten
    assert store.erased_markers() == {erased_marker(ADA)} == store.erased_markers(after)
    assert select(store, "SELECT * FROM readmitted") == []


def test_a_marker_is_kept_for_an_address_found_nowhere(store: Store) -> None:
    found = store.find_address("nobody@example.org")
    assert found.total == 0 and not found.marked
    store.erase_address("nobody@example.org")
    store.erase_address("Nobody@example.org")  # twice: one marker
    assert store.erased_markers() == {erased_marker("nobody@example.org")}


def test_sqlite_file_keeps_no_byte_of_the_address(tmp_path: Path) -> None:
    from pipeline.store._sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "sendlog.sqlite3")
    store.conn.execute("PRAGMA secure_delete = OFF")  # type: ignore[attr-defined]  # as SQLite's default is (this machine's build has it on)
    send_id = seed_send(store, issue="001-hello")
    process_events(store, _events(send_id))
    store.add_suppression(ADA, reason="manual", source="cli")
    outbox = store.create_send(issue="001-hello", list_name="sample", transport="outbox", content_hash="h",
                               subject="s")
    others = [(f"reader{i}@example.org", f"Reader {i}", None) for i in range(2000)]
    store.add_recipients(outbox.id, [*others[:1000], (ADA, "Ada Lovelace", '{"city": "London"}'), *others[1000:]])
    club = store.create_send(issue="001-hello", list_name="club", transport="sendgrid", content_hash="h", subject="s")
    store.add_recipients(club.id, others)
    store.delete_send(outbox.id)  # pages freed without zeroing: only a rebuild clears them
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
    assert store.conn.execute("PRAGMA freelist_count").fetchone()[0] > 0  # type: ignore[attr-defined]
    rebuilds: list[str] = []
    store.conn.set_trace_callback(lambda sql: rebuilds.append(sql) if sql == "VACUUM" else None)  # type: ignore[attr-defined]
    store.erase_address(ADA)
    store.record_reject(b'[{"email": "reader7@example.org", "note": "' + b"x" * 50_000 + b'"}]', "not JSON")
    store.erase_address("reader7@example.org")  # frees the pages of that body, zeroed: no second rebuild
    assert rebuilds == ["VACUUM"]
    files = [p for p in tmp_path.iterdir() if p.name.startswith("sendlog.sqlite3")]
    data = b"".join(p.read_bytes() for p in files).lower()
    assert b"ada@example.org" not in data and b"ada lovelace" not in data and b"tokenofada" not in data
    assert b"grace@example.org" in data and b"reader7@example.org" not in data and b"reader8@example.org" in data
    store.close()


def test_db_copy_carries_the_markers(tmp_path: Path, pg_database: str) -> None:
    from pipeline.store._copy import copy_store
    from pipeline.store._postgres import PostgresStore
    from pipeline.store._sqlite import SQLiteStore

    source = SQLiteStore(tmp_path / "sendlog.sqlite3", state_dir=tmp_path)
    seed_send(source, issue="001-hello")
    source.erase_address(ADA)
    source.erase_address("grace@example.org")
    source.readmit("grace@example.org")
    target = PostgresStore(pg_database, migrate=True)
    counts = copy_store(source, target)
    assert counts["erased"] == counts["readmitted"] == 1 and target.erased_markers() == {erased_marker(ADA)}
    assert target.erased_markers(target.sends_of_issue("001-hello")[0].id) == {erased_marker(a) for a in (
        ADA, "grace@example.org")}
    assert not target.add_suppression(ADA, reason="manual", source="cli")
    target.close()
    source.close()


def _record(email: str) -> EventRecord:
    return EventRecord(key=f"k-{email}", event="open", status="applied", source="webhook", email=email,
                       send_id="1", issue="001-hello", list_name="sample", occurred_at=1, url=None,
                       payload=json.dumps({"email": email}))


def test_events_of_others_are_untouched_by_a_marker(store: Store) -> None:
    seed_send(store, issue="001-hello")
    store.erase_address(ADA)
    assert store.record_events([_record("grace@example.org"), _record(ADA)]) == [("applied", False),
                                                                              ("unmatched", False)]
    rows = dict(select(store, "SELECT event_key, payload FROM events"))
    assert json.loads(rows["k-grace@example.org"]) == {"email": "grace@example.org"}
    assert ADA not in rows[f"k-{ADA}"]


def test_postgresql_erase_waits_for_a_post_under_way_and_erases_what_it_wrote(pg_database: str) -> None:
    """READ COMMITTED: an erase that ran while a webhook post's transaction was open would miss the address
    that post then commits. The post's transaction shares the erase lock: the erase waits for it and sees it."""
    import threading
    import time

    from pipeline.store._postgres import PostgresStore

    store, other = PostgresStore(pg_database, migrate=True), PostgresStore(pg_database, migrate=False)
    try:
        with other._writing_addresses() as conn:  # a post under way: it has written the address, not committed
            conn.execute("INSERT INTO suppressions (email, reason, source, created_at) VALUES (%s, 'bounced', "
                         "'webhook', 'now')", (ADA,))
            erasing = threading.Thread(target=store.erase_address, args=(ADA,))
            erasing.start()
            time.sleep(0.5)
            assert erasing.is_alive()  # waiting for the post to end
        erasing.join(timeout=30)
        assert not erasing.is_alive()
        assert select(store, "SELECT count(*) FROM suppressions") == [(0,)]
        assert store.is_erased(ADA)
    finally:
        store.close()
        other.close()


def test_postgresql_vacuums_once_for_several_addresses(pg_database: str, site: Path) -> None:
    """An erase of several readers vacuums the tables once, after the last (each VACUUM reads a large send
    log's tables whole)."""
    import psycopg

    from pipeline.config import load_config
    from pipeline.lists import erasure
    from pipeline.store._postgres import PostgresStore

    store = PostgresStore(pg_database, migrate=True)
    try:
        recorded_send(store, 3)
        config = load_config(site)
        found = [erasure.find(config, store, f"r{i}@example.org") for i in range(3)]
        erasure.erase_all(config, store, found)
        assert select(store, "SELECT count(*) FROM deliveries WHERE email LIKE 'r_@example.org'") == [(0,)]
    finally:
        store.close()
    with psycopg.connect(pg_database, autocommit=True) as conn:  # each VACUUM's backend has ended: stats flushed
        (vacuums,) = conn.execute("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'deliveries'"
                                  ).fetchone() or (None,)
    assert vacuums == 1
