"""Recording a list into a real send log: the rows a send will take, and what it leaves out and why."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest
from storekit import same_store, select

from pipeline.build.render import Email
from pipeline.config import load_config
from pipeline.errors import SubscriberError
from pipeline.send import recipients
from pipeline.send.batches import Mailing, Personalizer
from pipeline.store import Store
from pipeline.store._erasing import delivery_pseudonym

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


def _setup(site: Path, store: Store, text: str = LIST) -> tuple[Path, int]:
    path = site / "subscribers" / "club.csv"
    path.write_text(text, "utf-8")
    store.add_suppression("gone@example.org", reason="unsubscribed", source="test")
    send = store.create_send(issue="001-hello", list_name="club", transport="sendgrid", content_hash="h",
                             subject="Hi")
    return path, send.id


def _rows(store: Store, send_id: int) -> list[tuple[str, str, str | None]]:
    return select(store, "SELECT email, name, fields FROM deliveries WHERE send_id = ? ORDER BY id",  # type: ignore[return-value]
                  (send_id,))


def test_bad_rows_stop_the_recording_and_leave_nothing(site: Path, store: Store) -> None:
    path, send_id = _setup(site, store)
    with pytest.raises(SubscriberError) as caught:
        recipients.record_list(store, send_id, path, _personalizer(site), list_name="club", new_send=True,
                               skip_invalid=False)
    assert "list club" in str(caught.value) and "--skip-invalid" in str(caught.value)
    assert [(p.file, p.line) for p in caught.value.problems] == [(path, 5)]
    assert _rows(store, send_id) == []


def test_skip_invalid_records_each_valid_address_once_in_list_order(site: Path, store: Store) -> None:
    path, send_id = _setup(site, store)
    recorded = recipients.record_list(store, send_id, path, _personalizer(site), list_name="club", new_send=True,
                                      skip_invalid=True)
    assert _rows(store, send_id) == [("ada@example.org", "Ada", '{"city": "London"}'),
                                    ("grace@example.org", "Grace", '{"city": ""}')]
    assert (recorded.listed, recorded.added) == (2, 2)
    assert [(p.line, p.blocking) for p in recorded.skipped] == [(5, False)]


def test_a_resumed_send_adds_only_the_new_rows(site: Path, store: Store) -> None:
    path, send_id = _setup(site, store, "email,name\nada@example.org,Ada\n")
    recipients.record_list(store, send_id, path, _personalizer(site), list_name="club", new_send=True,
                           skip_invalid=False)
    path.write_text("email,name\nada@example.org,Ada\nalan@example.org,Alan\nAlan@example.org,Alan\n", "utf-8")
    recorded = recipients.record_list(store, send_id, path, _personalizer(site), list_name="club", new_send=False,
                                      skip_invalid=False)
    assert (recorded.listed, recorded.added) == (2, 1)
    assert [row[0] for row in _rows(store, send_id)] == ["ada@example.org", "alan@example.org"]


def test_oversized_merge_fields_are_a_bad_row(site: Path, store: Store) -> None:
    path, send_id = _setup(site, store, f"email,name\nada@example.org,{'x' * 10_000}\ngrace@example.org,Grace\n")
    with pytest.raises(SubscriberError) as caught:
        recipients.record_list(store, send_id, path, _personalizer(site), list_name="club", new_send=True,
                               skip_invalid=False)
    assert caught.value.problems[0].line == 2 and "10000 bytes" in caught.value.problems[0].message


def test_a_test_copy_borrows_the_first_recipients_values(site: Path, store: Store) -> None:
    path, _ = _setup(site, store)
    base = "https://x.example"
    assert recipients.row_for_test_copy(store, path, "me@example.org", base_url=base) == (
        0, "me@example.org", "Ada", '{"city": "London"}')
    path.write_text("email,name\n", "utf-8")
    assert recipients.row_for_test_copy(store, path, "me@example.org", base_url=base) == (0, "me@example.org", "", None)


class _EraseBeforeRecording:
    """The store as the send sees it, but `serve`'s erase of one reader (another connection) commits after
    the list was read and before its rows are recorded: the erase cannot see those rows."""

    def __init__(self, store: Store, other: Store, address: str) -> None:
        self._store, self._other, self._address = store, other, address

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def add_recipients(self, send_id: int, rows: Iterable[Any]) -> int:
        listed = list(rows)  # the list is read: no marker yet, the reader is among the rows
        self._other.erase_address(self._address)
        return self._store.add_recipients(send_id, listed)


def test_a_reader_erased_while_the_list_is_recorded_is_erased_before_anything_is_sent(
        site: Path, store: Store, database_url: str | None) -> None:
    path, send_id = _setup(site, store, "email,name\nada@example.org,Ada\ngrace@example.org,Grace\n")
    other = same_store(store, database_url)
    try:
        racing = cast(Store, _EraseBeforeRecording(store, other, "Ada@Example.org"))
        recorded = recipients.record_list(racing, send_id, path, _personalizer(site), list_name="club",
                                          new_send=True, skip_invalid=False)
    finally:
        other.close()
    assert recorded.erased == 1 and recorded.listed == 1
    (first,) = select(store, "SELECT min(id) FROM deliveries WHERE send_id = ?", (send_id,))[0]
    assert [row[0] for row in _rows(store, send_id)] == [delivery_pseudonym(first), "grace@example.org"]
    counts = store.counts(send_id)
    assert (counts["pending"], counts["suppressed"]) == (1, 1)
    assert select(store, "SELECT count(*) FROM deliveries WHERE lower(email) = 'ada@example.org'") == [(0,)]
