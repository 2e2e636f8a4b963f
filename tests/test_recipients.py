"""Recording a list into a real send log: the rows a send will take, and what it leaves out and why."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline import recipients, sendlog
from pipeline.batches import Mailing, Personalizer
from pipeline.config import load_config
from pipeline.errors import SubscriberError
from pipeline.render import Email

LIST = ("email,name,city\n"
        "ada@example.org,Ada,London\n"
        "ADA@example.org,Ada again,\n"
        "gone@example.org,Gone,\n"
        "not-an-address,Nobody,\n"
        "grace@example.org,Grace,\n")


def _personalizer(site: Path) -> Personalizer:
    mail = Email(subject="Hi", preheader="", language="en", mjml="", html="<p>%%name%%</p>", text="%%name%%")
    return Personalizer(Mailing.from_config(load_config(site), email=mail, issue="001-hello", list_name="club",
                                            send_id=1, secret=b"recipients-test-secret-0123456789"))


def _setup(site: Path, conn: sqlite3.Connection, text: str = LIST) -> tuple[Path, int]:
    path = site / "subscribers" / "club.csv"
    path.write_text(text, "utf-8")
    sendlog.add_suppression(conn, "gone@example.org", reason="unsubscribed", source="test")
    send = sendlog.create_send(conn, issue="001-hello", list_name="club", transport="sendgrid", content_hash="h",
                               subject="Hi")
    return path, send.id


def _rows(conn: sqlite3.Connection, send_id: int) -> list[tuple[str, str, str | None]]:
    return conn.execute("SELECT email, name, fields FROM deliveries WHERE send_id = ? ORDER BY id",
                        (send_id,)).fetchall()


def test_bad_rows_stop_the_recording_and_leave_nothing(site: Path, conn: sqlite3.Connection) -> None:
    path, send_id = _setup(site, conn)
    with pytest.raises(SubscriberError) as caught:
        recipients.record_list(conn, send_id, path, _personalizer(site), list_name="club", new_send=True,
                               skip_invalid=False)
    assert "list club" in str(caught.value) and "--skip-invalid" in str(caught.value)
    assert [(p.file, p.line) for p in caught.value.problems] == [(path, 5)]
    assert _rows(conn, send_id) == []


def test_skip_invalid_records_each_valid_address_once_in_list_order(site: Path, conn: sqlite3.Connection) -> None:
    path, send_id = _setup(site, conn)
    recorded = recipients.record_list(conn, send_id, path, _personalizer(site), list_name="club", new_send=True,
                                      skip_invalid=True)
    assert _rows(conn, send_id) == [("ada@example.org", "Ada", '{"city": "London"}'),
                                    ("grace@example.org", "Grace", '{"city": ""}')]
    assert (recorded.listed, recorded.added) == (2, 2)
    assert [(p.line, p.blocking) for p in recorded.skipped] == [(5, False)]


def test_a_resumed_send_adds_only_the_new_rows(site: Path, conn: sqlite3.Connection) -> None:
    path, send_id = _setup(site, conn, "email,name\nada@example.org,Ada\n")
    recipients.record_list(conn, send_id, path, _personalizer(site), list_name="club", new_send=True,
                           skip_invalid=False)
    path.write_text("email,name\nada@example.org,Ada\nalan@example.org,Alan\nAlan@example.org,Alan\n", "utf-8")
    recorded = recipients.record_list(conn, send_id, path, _personalizer(site), list_name="club", new_send=False,
                                      skip_invalid=False)
    assert (recorded.listed, recorded.added) == (2, 1)
    assert [row[0] for row in _rows(conn, send_id)] == ["ada@example.org", "alan@example.org"]


def test_oversized_merge_fields_are_a_bad_row(site: Path, conn: sqlite3.Connection) -> None:
    path, send_id = _setup(site, conn, f"email,name\nada@example.org,{'x' * 10_000}\ngrace@example.org,Grace\n")
    with pytest.raises(SubscriberError) as caught:
        recipients.record_list(conn, send_id, path, _personalizer(site), list_name="club", new_send=True,
                               skip_invalid=False)
    assert caught.value.problems[0].line == 2 and "10000 bytes" in caught.value.problems[0].message


def test_a_test_copy_borrows_the_first_recipients_values(site: Path, conn: sqlite3.Connection) -> None:
    path, _ = _setup(site, conn)
    base = "https://x.example"
    assert recipients.row_for_test_copy(conn, path, "me@example.org", base_url=base) == (
        0, "me@example.org", "Ada", '{"city": "London"}')
    path.write_text("email,name\n", "utf-8")
    assert recipients.row_for_test_copy(conn, path, "me@example.org", base_url=base) == (0, "me@example.org", "", None)
