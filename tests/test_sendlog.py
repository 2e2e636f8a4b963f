"""The send log on a real SQLite file: migrations, suppressions, claiming batches, recovery, the lock."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import sendlog
from pipeline.errors import SendError
from pipeline.lock import SendLock


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return sendlog.open_sendlog(tmp_path / "state" / "sendlog.sqlite3")


def _send(conn: sqlite3.Connection, n: int = 5) -> sendlog.Send:
    send = sendlog.create_send(conn, issue="001", list_name="sample", transport="sendgrid",
                               content_hash="h1", subject="Hello")
    sendlog.add_recipients(conn, send.id, [(f"r{i}@example.org", f"R {i}", None) for i in range(n)])
    return send


def test_wal_and_migrations_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    conn = sendlog.open_sendlog(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations")]
    assert names == ["sendlog_001_initial"]
    extra = [("test_001_events", "CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT);")]
    again = sendlog.open_sendlog(path, migrations=extra)
    names = [r[0] for r in again.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == ["sendlog_001_initial", "test_001_events"]
    assert sendlog.migrate(again, [*sendlog.MIGRATIONS, *extra]) == []


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


def test_claim_finish_and_counts(conn: sqlite3.Connection) -> None:
    send = _send(conn)
    sendlog.add_suppression(conn, "r1@example.org", reason="bounced", source="test")
    first = sendlog.claim_batch(conn, send.id, size=2, request_id="a")
    assert first is not None
    assert [r[1] for r in first.rows] == ["r0@example.org"]  # r1 is suppressed: a smaller batch
    assert sendlog.counts(conn, send.id)["in_flight"] == 1
    sendlog.finish_batch(conn, first, state="accepted", attempts=1, http_status=202, message_id="M1")
    second = sendlog.claim_batch(conn, send.id, size=2, after=first.last, request_id="b")
    assert second is not None
    sendlog.finish_batch(conn, second, state="failed", attempts=1, http_status=400, error="bad")
    counts = sendlog.counts(conn, send.id)
    assert (counts["accepted"], counts["failed"], counts["suppressed"], counts["pending"]) == (1, 2, 1, 1)
    # failed = certainly not sent: a later run takes them again
    third = sendlog.claim_batch(conn, send.id, size=10, request_id="c")
    assert third is not None and len(third.rows) == 3
    first_at, last_at = sendlog.send_times(conn, send.id)
    assert first_at is not None and first_at == last_at


def test_recover_in_flight_becomes_in_doubt(conn: sqlite3.Connection) -> None:
    send = _send(conn, 3)
    claim = sendlog.claim_batch(conn, send.id, size=2, request_id="a")
    assert claim is not None
    assert sendlog.recover_in_flight(conn, send.id) == 1
    assert sendlog.in_doubt_addresses(conn, send.id) == ["r0@example.org", "r1@example.org"]
    assert sendlog.claim_batch(conn, send.id, size=10, request_id="b") is not None  # only r2
    again = sendlog.claim_batch(conn, send.id, size=10, states=("in_doubt",), request_id="c")
    assert again is not None and [r[1] for r in again.rows] == ["r0@example.org", "r1@example.org"]


def test_sync_recipients_adds_and_removes(conn: sqlite3.Connection) -> None:
    send = _send(conn, 3)
    claim = sendlog.claim_batch(conn, send.id, size=1, request_id="a")
    assert claim is not None
    sendlog.finish_batch(conn, claim, state="accepted", attempts=1)
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
    send = _send(conn, 2)
    sendlog.add_suppression(conn, "r0@example.org", reason="manual", source="test")
    claim = sendlog.claim_batch(conn, send.id, size=10, request_id="a")
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


def test_claim_peeked_takes_the_peeked_rows_or_nothing(conn: sqlite3.Connection, tmp_path: Path) -> None:
    send = _send(conn, 6)
    version = sendlog.data_version(conn)
    rows = sendlog.peek_batch(conn, send.id, size=2)
    claim = sendlog.claim_peeked(conn, send.id, rows, after=0, version=version, request_id="a")
    assert claim is not None and claim.rows is rows and sendlog.counts(conn, send.id)["in_flight"] == 2
    batch = conn.execute("SELECT size, first_delivery, last_delivery FROM batches WHERE id = ?", (claim.id,))
    assert tuple(batch.fetchone()) == (2, rows[0][0], rows[1][0])
    # a suppression committed by another process (`newsletter serve`) after the peek: nothing is taken
    version = sendlog.data_version(conn)
    rows = sendlog.peek_batch(conn, send.id, size=2, after=claim.last)
    other = sendlog.open_sendlog(tmp_path / "state" / "sendlog.sqlite3")
    sendlog.add_suppression(other, "R3@example.org", reason="unsubscribed", source="webhook")
    other.close()
    assert sendlog.claim_peeked(conn, send.id, rows, after=claim.last, version=version, request_id="b") is None
    assert sendlog.counts(conn, send.id)["in_flight"] == 2
    assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 1
    slow = sendlog.claim_batch(conn, send.id, size=2, after=claim.last, request_id="b")
    assert slow is not None and [r[1] for r in slow.rows] == ["r2@example.org"]
    assert sendlog.counts(conn, send.id)["suppressed"] == 1
    assert sendlog.claim_peeked(conn, send.id, [], after=0, version=version, request_id="c") is None


def test_claim_peeked_refuses_when_a_suppressed_row_lies_between(conn: sqlite3.Connection) -> None:
    send = _send(conn, 3)
    sendlog.add_suppression(conn, "r1@example.org", reason="manual", source="test")
    version = sendlog.data_version(conn)
    rows = sendlog.peek_batch(conn, send.id, size=3)
    assert [r[1] for r in rows] == ["r0@example.org", "r2@example.org"]  # the peek skips it, the range has it
    assert sendlog.claim_peeked(conn, send.id, rows, after=0, version=version, request_id="a") is None
    claim = sendlog.claim_batch(conn, send.id, size=3, request_id="a")
    assert claim is not None and claim.rows == rows
    assert sendlog.counts(conn, send.id)["suppressed"] == 1


def test_claim_peeked_records_the_last_answer_claimed_or_not(conn: sqlite3.Connection, tmp_path: Path) -> None:
    send = _send(conn, 6)
    first = sendlog.claim_batch(conn, send.id, size=2, request_id="a")
    assert first is not None
    version = sendlog.data_version(conn)
    rows = sendlog.peek_batch(conn, send.id, size=2, after=first.last)
    done = sendlog.Finish(claim=first, state="accepted", attempts=1, http_status=202, message_id="M1")
    second = sendlog.claim_peeked(conn, send.id, rows, after=first.last, version=version, request_id="b",
                                  finished=done)
    assert second is not None
    assert (sendlog.counts(conn, send.id)["accepted"], sendlog.counts(conn, send.id)["in_flight"]) == (2, 2)
    rows = sendlog.peek_batch(conn, send.id, size=2, after=second.last)
    other = sendlog.open_sendlog(tmp_path / "state" / "sendlog.sqlite3")
    sendlog.add_suppression(other, "r5@example.org", reason="bounced", source="webhook")
    other.close()
    done = sendlog.Finish(claim=second, state="accepted", attempts=1, http_status=202, message_id="M2")
    assert sendlog.claim_peeked(conn, send.id, rows, after=second.last, version=version, request_id="c",
                                finished=done) is None
    counts = sendlog.counts(conn, send.id)
    assert (counts["accepted"], counts["in_flight"], counts["pending"]) == (4, 0, 2)


def test_claim_peeked_keeps_the_answer_when_the_range_does_not_match(conn: sqlite3.Connection) -> None:
    send = _send(conn, 4)
    first = sendlog.claim_batch(conn, send.id, size=1, request_id="a")
    assert first is not None
    sendlog.add_suppression(conn, "r2@example.org", reason="manual", source="test")
    version = sendlog.data_version(conn)
    rows = sendlog.peek_batch(conn, send.id, size=3, after=first.last)
    done = sendlog.Finish(claim=first, state="accepted", attempts=1, http_status=202)
    assert sendlog.claim_peeked(conn, send.id, rows, after=first.last, version=version, request_id="b",
                                finished=done) is None
    counts = sendlog.counts(conn, send.id)
    assert (counts["accepted"], counts["in_flight"], counts["pending"]) == (1, 0, 3)
    assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 1


def test_the_message_id_and_time_of_an_answer_are_on_the_batch(conn: sqlite3.Connection) -> None:
    send = _send(conn, 2)
    claim = sendlog.claim_batch(conn, send.id, size=2, request_id="a")
    assert claim is not None
    sendlog.finish_batch(conn, claim, state="accepted", attempts=1, http_status=202, message_id="M1")
    rows = conn.execute("SELECT d.state, b.message_id, b.finished_at IS NOT NULL FROM deliveries d "
                        "JOIN batches b ON b.id = d.batch_id WHERE d.send_id = ?", (send.id,)).fetchall()
    assert rows == [("accepted", "M1", 1), ("accepted", "M1", 1)]


def test_claim_peeked_refuses_when_suppressed_rows_come_before_the_peeked_ones(conn: sqlite3.Connection) -> None:
    """The end of one peeked window and the start of the next can be suppressed rows the peek skipped:
    only `claim_batch` marks them, so the fast claim must not step over them."""
    send = _send(conn, 4)
    sendlog.add_suppression(conn, "r0@example.org", reason="manual", source="test")
    version = sendlog.data_version(conn)
    rows = sendlog.peek_batch(conn, send.id, size=2)
    assert [r[1] for r in rows] == ["r1@example.org"]
    assert sendlog.claim_peeked(conn, send.id, rows, after=0, version=version, request_id="a") is None
    claim = sendlog.claim_batch(conn, send.id, size=2, request_id="a")
    assert claim is not None and claim.rows == rows
    counts = sendlog.counts(conn, send.id)
    assert (counts["suppressed"], counts["in_flight"], counts["pending"]) == (1, 1, 2)


def test_checks_are_back_after_a_send_loop(conn: sqlite3.Connection) -> None:
    send = _send(conn, 2)
    with sendlog.unchecked_writes(conn):
        claim = sendlog.claim_batch(conn, send.id, size=2, request_id="a")
        assert claim is not None
        assert conn.execute("PRAGMA ignore_check_constraints").fetchone()[0] == 1  # not switched on in between
        sendlog.finish_batch(conn, claim, state="accepted", attempts=1, http_status=202)
    assert tuple(conn.execute("PRAGMA foreign_keys").fetchone()) == (1,)
    assert tuple(conn.execute("PRAGMA ignore_check_constraints").fetchone()) == (0,)
    with pytest.raises(sqlite3.IntegrityError):  # the CHECK on states holds again
        conn.execute("UPDATE deliveries SET state = 'sent' WHERE send_id = ?", (send.id,))
