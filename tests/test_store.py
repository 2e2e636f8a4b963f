"""The send log on a real SQLite file: migrations, suppressions, claiming batches, recovery, the lock."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sendkit import recorded_send

from pipeline import claims, sendlog
from pipeline.errors import SendError
from pipeline.lock import SendLock


def test_wal_and_migrations_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    conn = sendlog.open_sendlog(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations")]
    assert names == ["sendlog_001_initial", "sendlog_002_delivery_log"]
    extra = [("test_001_events", "CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT);")]
    again = sendlog.open_sendlog(path, migrations=extra)
    names = [r[0] for r in again.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == ["sendlog_001_initial", "sendlog_002_delivery_log", "test_001_events"]
    assert sendlog.migrate(again, [*sendlog.MIGRATIONS, *extra]) == []


def test_a_send_log_of_an_older_version_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    assert sendlog.migrate(old, sendlog.MIGRATIONS[:1]) == ["sendlog_001_initial"]
    old.close()
    conn = sendlog.open_sendlog(path)
    assert conn.execute("SELECT count(*) FROM delivery_log").fetchone()[0] == 0
    names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == ["sendlog_001_initial", "sendlog_002_delivery_log"]


def test_suppressions(conn: sqlite3.Connection) -> None:
    assert sendlog.add_suppression(conn, "Ada@Example.org", reason="unsubscribed", source="web")
    assert not sendlog.add_suppression(conn, "ada@example.org", reason="bounced", source="webhook")
    assert sendlog.is_suppressed(conn, "ADA@example.org")
    assert [s.reason for s in sendlog.list_suppressions(conn)] == ["unsubscribed"]
    assert sendlog.suppressed_set(conn) == {"ada@example.org"}
    assert sendlog.remove_suppression(conn, "ada@EXAMPLE.org")
    assert not sendlog.is_suppressed(conn, "ada@example.org")
    assert not sendlog.remove_suppression(conn, "ada@example.org")


def test_duplicates_ignored_case_insensitively(conn: sqlite3.Connection) -> None:
    send = sendlog.create_send(conn, issue="001", list_name="l", transport="sendgrid", content_hash="h", subject="s")
    added = sendlog.add_recipients(conn, send.id, [("a@x.org", "", None), ("A@X.org", "", None)])
    assert added == 1


def test_recover_in_flight_becomes_in_doubt(conn: sqlite3.Connection) -> None:
    send = recorded_send(conn, 3)
    claim = claims.claim_batch(conn, send.id, size=2, request_id="a")
    assert claim is not None
    assert sendlog.recover_in_flight(conn, send.id) == 1
    assert sendlog.in_doubt_addresses(conn, send.id) == ["r0@example.org", "r1@example.org"]
    assert claims.claim_batch(conn, send.id, size=10, request_id="b") is not None  # only r2
    again = claims.claim_batch(conn, send.id, size=10, states=("in_doubt",), request_id="c")
    assert again is not None and [r[1] for r in again.rows] == ["r0@example.org", "r1@example.org"]


def test_sync_recipients_adds_and_removes(conn: sqlite3.Connection) -> None:
    send = recorded_send(conn, 3)
    claim = claims.claim_batch(conn, send.id, size=1, request_id="a")
    assert claim is not None
    claims.finish_batch(conn, claim, state="accepted", attempts=1)
    added = sendlog.sync_recipients(conn, send.id, [("r2@example.org", "", None), ("new@example.org", "", None)])
    assert added == 1
    counts = sendlog.counts(conn, send.id)
    assert (counts["accepted"], counts["removed"], counts["pending"]) == (1, 1, 2)
    everyone = [(f"r{i}@example.org", "", None) for i in range(3)] + [("new@example.org", "", None)]
    sendlog.sync_recipients(conn, send.id, everyone)
    assert sendlog.counts(conn, send.id)["removed"] == 0


def test_lock_refuses_second_and_names_pid(tmp_path: Path) -> None:
    with SendLock(tmp_path, issue="001", list_name="l"):
        with pytest.raises(SendError, match=f"pid {os.getpid()}"):
            SendLock(tmp_path, issue="001", list_name="l").acquire()
        with SendLock(tmp_path, issue="001", list_name="other"):
            pass
    with SendLock(tmp_path, issue="001", list_name="l"):
        pass


def test_lock_of_killed_process_is_taken_over(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from pipeline.lock import SendLock; "
            "lock = SendLock(Path(sys.argv[1]), issue='001', list_name='l'); lock.acquire(); "
            "print('locked', flush=True); time.sleep(600)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(SendError, match=f"pid {proc.pid}"):
            SendLock(tmp_path, issue="001", list_name="l").acquire()
    finally:
        proc.kill()
        proc.wait()
    with SendLock(tmp_path, issue="001", list_name="l"):
        pass


def test_sync_lifts_suppressed_rows_that_are_listed_again(conn: sqlite3.Connection) -> None:
    send = recorded_send(conn, 2)
    sendlog.add_suppression(conn, "r0@example.org", reason="manual", source="test")
    claim = claims.claim_batch(conn, send.id, size=10, request_id="a")
    assert claim is not None and [r[1] for r in claim.rows] == ["r1@example.org"]
    sendlog.remove_suppression(conn, "r0@example.org")
    sendlog.sync_recipients(conn, send.id, [("r0@example.org", "", None), ("r1@example.org", "", None)])
    assert sendlog.counts(conn, send.id)["pending"] == 1


def test_add_recipients_in_chunks_keeps_order_and_rolls_back_on_error(conn: sqlite3.Connection,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import bulk

    monkeypatch.setattr(bulk, "CHUNK_ROWS", 3)
    send = sendlog.create_send(conn, issue="001", list_name="l", transport="sendgrid", content_hash="h", subject="s")
    rows = [(f"r{i}@example.org", f"Zoë {i}", '{"city": "Köln"}' if i % 2 else None) for i in range(10)]
    assert sendlog.add_recipients(conn, send.id, iter(rows)) == 10
    stored = conn.execute("SELECT email, name, fields FROM deliveries WHERE send_id = ? ORDER BY id", (send.id,))
    assert [tuple(r) for r in stored] == rows
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1

    def broken() -> Iterator[sendlog.Row]:
        yield from [(f"b{i}@example.org", "", None) for i in range(7)]
        raise ValueError("bad row")

    other = sendlog.create_send(conn, issue="002", list_name="l", transport="sendgrid", content_hash="h", subject="s")
    with pytest.raises(ValueError, match="bad row"):
        sendlog.add_recipients(conn, other.id, broken())
    assert conn.execute("SELECT count(*) FROM deliveries WHERE send_id = ?", (other.id,)).fetchone()[0] == 0
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with pytest.raises(SendError, match="not in the send log"):
        sendlog.add_recipients(conn, 999, rows)


def test_checks_are_back_after_a_send_loop(conn: sqlite3.Connection) -> None:
    send = recorded_send(conn, 2)
    with sendlog.unchecked_writes(conn):
        claim = claims.claim_batch(conn, send.id, size=2, request_id="a")
        assert claim is not None
        assert conn.execute("PRAGMA ignore_check_constraints").fetchone()[0] == 1  # not switched on in between
        claims.finish_batch(conn, claim, state="accepted", attempts=1, http_status=202)
    assert tuple(conn.execute("PRAGMA foreign_keys").fetchone()) == (1,)
    assert tuple(conn.execute("PRAGMA ignore_check_constraints").fetchone()) == (0,)
    with pytest.raises(sqlite3.IntegrityError):  # the CHECK on states holds again
        conn.execute("UPDATE deliveries SET state = 'sent' WHERE send_id = ?", (send.id,))
