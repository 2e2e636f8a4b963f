"""The recipients of a send: its list read once, every row checked, into the send log's deliveries.

Reading and recording are one pass, so that a million rows are never held in memory: the rows go into the
send log inside one transaction, and a bad row found anywhere (without --skip-invalid) rolls it all back
before anything is sent. A test copy takes only the list's first row, for its name and merge fields.
Each row's `language` column picks the edition it gets, recorded with it (`edition_of`: see SendJob).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import Problem, SubscriberError
from pipeline.lists.subscribers import ListReader
from pipeline.send.batches import Personalizer
from pipeline.send.gcpause import gc_paused
from pipeline.store import DeliveryRow, Store, erased_marker

log = logging.getLogger("pipeline.send.job")  # its line is part of what `newsletter send` reports


@dataclass(frozen=True, kw_only=True, slots=True)
class Recorded:
    listed: int  # valid rows, each address once
    added: int  # new deliveries in the send log (all of them for a new send)
    skipped: tuple[Problem, ...]  # the rows left out, as warnings
    erased: int = 0  # rows of readers erased on request, skipped (counted among the suppressed too)


class Skip:
    """Whom a send skips once someone was erased: the suppressed addresses, and erased readers, known by the
    marker (a hash) the store keeps of their address; `erased` counts the latter."""

    def __init__(self, suppressed: set[str], markers: set[str]) -> None:
        self.suppressed, self.markers, self.erased = suppressed, markers, 0

    def __call__(self, email: str) -> bool:
        lowered = email.lower()
        if lowered in self.suppressed:
            return True
        if erased_marker(lowered) in self.markers:
            self.erased += 1
            return True
        return False


def reader(store: Store, path: Path, base_url: str, send_id: int | None = None) -> tuple[ListReader, Skip | None]:
    """A reader of the list that skips everyone the store's suppression list holds, and erased readers (for a
    send, also those readmitted since it was created: it may have mailed them). While nobody was erased no row
    is hashed: the membership test is the one it always was."""
    suppressed, markers = store.suppressed_set(), store.erased_markers(send_id)
    if markers:
        skip = Skip(suppressed, markers)
        return ListReader(path, suppressed=skip, base_url=base_url), skip
    return ListReader(path, suppressed=(lambda e: e.lower() in suppressed) if suppressed else None,
                      base_url=base_url), None


def row_for_test_copy(store: Store, path: Path, address: str, *, base_url: str) -> DeliveryRow:
    """A test copy goes to `address` with the name and merge fields of the list's first (valid) recipient."""
    return copy_row(store, path, address, base_url=base_url)[0]


def copy_row(store: Store, path: Path, address: str, *, base_url: str) -> tuple[DeliveryRow, str]:
    """`row_for_test_copy`, and the first recipient's `language` (what picks the copy's edition)."""
    for recipient in reader(store, path, base_url)[0]:
        fields = json.dumps(dict(recipient.fields)) if recipient.fields else None
        return (0, address, recipient.name, fields), recipient.language
    return (0, address, "", None), ""


def record_list(store: Store, send_id: int, path: Path, personalizer: Personalizer, *, list_name: str,
                new_send: bool, skip_invalid: bool, edition_of: Callable[[str], str] | None = None) -> Recorded:
    """Read the list into the deliveries of `send_id`: all rows for a new send, the ones it lacks for a
    resumed one. Raises SubscriberError (nothing recorded) on bad rows unless `skip_invalid`.
    `edition_of` gives a row's edition from its `language` cell (called once per distinct cell)."""
    started = time.perf_counter()
    source, skip = reader(store, path, personalizer.mailing.base_url, send_id)
    listed = 0

    editions: dict[str, str] = {}

    def rows() -> Iterator[tuple[str, str, str | None, str]]:
        nonlocal listed
        for email, name, fields, _, language in source.rows(dedupe=not new_send):  # bad rows: pipeline.lists.values
            listed += 1
            edition = editions.get(language)
            if edition is None:
                edition = editions[language] = edition_of(language) if edition_of is not None else ""
            yield email, name, (json.dumps(dict(fields), ensure_ascii=False) if fields else None), edition
        blocking = [p for p in source.problems if p.blocking]
        if blocking and not skip_invalid:
            raise SubscriberError(
                f"list {list_name} ({path}) has {source.invalid} bad row(s); nothing was sent — "
                "fix them, or pass --skip-invalid to send to the valid rows only", problems=blocking)

    with gc_paused():
        added = store.add_recipients(send_id, rows()) if new_send else store.sync_recipients(send_id, rows())
    duplicates = source.duplicates
    if new_send:  # the send log dropped the duplicates: they were counted as listed until then
        duplicates, listed = listed - added, added
    erased = skip.erased if skip is not None else 0
    # Readers erased while the list was read: their rows were read before their marker existed, and the erase
    # could not see rows recorded after it. Erased now, before anything is sent.
    late = store.erased_markers() - (skip.markers if skip is not None else set())
    if late:
        for email in store.recorded_erased(send_id, late):
            store.erase_address(email, leave_no_copy=False)
            erased += 1
            listed -= 1
        store.leave_no_copy()
    skipped = tuple(Problem(message=p.message, file=p.file, line=p.line, fix=p.fix, blocking=False)
                    for p in source.problems)
    if erased:
        skipped += (Problem(message=f"{erased} row(s) of readers erased on request skipped: they are not mailed",
                            file=path, blocking=False, fix="delete them from the list (`newsletter subscribers "
                            "erase ADDRESS` does); a reader who asked to be mailed again: `newsletter subscribers "
                            "readmit ADDRESS`, then a send created after that mails them"),)
    log.info("list %s: %d recipients (%d invalid, %d duplicates, %d suppressed skipped%s), read and recorded in %.1f s",
             list_name, listed, source.invalid, duplicates, source.suppressed,
             f", {erased} of them erased" if erased else "", time.perf_counter() - started)
    return Recorded(listed=listed, added=added, skipped=skipped, erased=erased)
