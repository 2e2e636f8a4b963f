"""Import a Mailchimp or Substack subscriber export into one of our lists, without duplicating anyone.

People who unsubscribed or bounced elsewhere must not be mailed here either: such rows are not added
but returned in `ImportResult.to_suppress`, for the suppression store. The list is rewritten atomically
(temporary file, then os.replace), so a crash leaves either the old list or the new one.

What we assume of the exports (see the README, "Importing from Mailchimp or Substack"):
- Mailchimp: "Email Address", "First Name", "Last Name", user-defined fields by label, and system
  columns (MEMBER_RATING, OPTIN_IP, LATITUDE, ...), which we drop: they are personal data we do not
  need. The unsubscribed file has UNSUB_TIME, the cleaned (bounced) file CLEAN_TIME.
- Substack: email, active_subscription, expiry, plan, email_disabled, created_at, first_payment_at;
  no name. Rows with email_disabled=true or active_subscription=false are suppressed, not added.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import Problem, SubscriberError
from pipeline.lists.subscribers import (
    EMAIL_COLUMN,
    FIELD_NAME,
    LANGUAGE_COLUMN,
    NAME_COLUMN,
    RESERVED_FIELDS,
    CsvFile,
    check_cells,
    clean_name,
    dedupe_key,
    normalise,
    note_hidden,
    note_invalid,
)
from pipeline.lists.values import RowRule

MAILCHIMP_SYSTEM = frozenset({
    "MEMBER_RATING", "OPTIN_TIME", "OPTIN_IP", "CONFIRM_TIME", "CONFIRM_IP", "LATITUDE", "LONGITUDE",
    "GMTOFF", "DSTOFF", "TIMEZONE", "CC", "REGION", "LAST_CHANGED", "LEID", "EUID", "NOTES", "TAGS",
    "UNSUB_TIME", "UNSUB_CAMPAIGN_TITLE", "UNSUB_CAMPAIGN_ID", "UNSUB_REASON", "UNSUB_REASON_OTHER",
    "CLEAN_TIME", "CLEAN_CAMPAIGN_TITLE", "CLEAN_CAMPAIGN_ID",
})
IMPORT_FIX = "the row was not imported: correct it in the export and import the file again"


@dataclass(kw_only=True)
class ImportResult:
    source_format: str  # "mailchimp", "substack" or "csv"
    added: int = 0
    already_present: int = 0  # in the list before, or earlier in the same export
    invalid: int = 0
    to_suppress: list[tuple[str, str]] = field(default_factory=list)  # (email, "unsubscribed" | "bounced")
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class _Mapping:
    """How one export format maps to our columns."""

    source_format: str
    email_at: int
    name: Callable[[list[str]], str]
    fields: list[tuple[int, str]]  # (source column, our column)
    suppress: Callable[[list[str]], str]  # "" to subscribe, else the suppression reason


def safe_name(column: str) -> str:
    """A merge-field name usable as %%tag%%: lower-case letters, digits, underscores."""
    name = re.sub(r"[^0-9A-Za-z]+", "_", column).strip("_").lower()
    return f"f_{name}" if name[:1].isdigit() else name


def _cell(row: list[str], index: int | None) -> str:
    return row[index].strip() if index is not None and index < len(row) else ""


def _fields(source: CsvFile, skip: set[int]) -> list[tuple[int, str]]:
    taken = {EMAIL_COLUMN, NAME_COLUMN, *RESERVED_FIELDS}
    fields = []
    for index, column in enumerate(source.header):
        name = safe_name(column)
        if index in skip or not name or name in taken:
            continue
        taken.add(name)
        fields.append((index, name))
    return fields


def detect(source: CsvFile) -> _Mapping:
    """Tell the export format from its header."""
    lowered = {h.lower() for h in source.header}
    if source.column("Email Address") is not None:
        email_at = source.require("Email Address")
        first, last = source.column("First Name"), source.column("Last Name")
        reason = "unsubscribed" if "unsub_time" in lowered else "bounced" if "clean_time" in lowered else ""
        system = {i for i, h in enumerate(source.header) if h.upper() in MAILCHIMP_SYSTEM}
        return _Mapping("mailchimp", email_at, lambda row: f"{_cell(row, first)} {_cell(row, last)}".strip(),
                        _fields(source, system | {email_at}), lambda row: reason)
    email_at = source.require(EMAIL_COLUMN)
    if lowered & {"active_subscription", "email_disabled"}:
        active, disabled = source.column("active_subscription"), source.column("email_disabled")

        def substack_reason(row: list[str]) -> str:
            off = _cell(row, disabled).lower() == "true" or _cell(row, active).lower() == "false"
            return "unsubscribed" if off else ""

        return _Mapping("substack", email_at, lambda row: "", [], substack_reason)
    name_at = source.column(NAME_COLUMN)
    return _Mapping("csv", email_at, lambda row: _cell(row, name_at), _fields(source, {email_at, name_at or -1}),
                    lambda row: "")


def _existing(dest: Path) -> tuple[list[str], set[int]]:
    """The list's header and the keys of the addresses already in it."""
    if not dest.exists():
        return [EMAIL_COLUMN, NAME_COLUMN], set()
    current = CsvFile(dest)
    email_at = current.require(EMAIL_COLUMN)
    keys = set()
    for line, row, bad_utf8 in current.rows():
        if bad_utf8:
            raise SubscriberError(f"{dest}:{line}: the list has a row that is not UTF-8, and rewriting it would "
                                  f"change it — fix the list first (newsletter subscribers check)")
        raw = _cell(row, email_at)
        try:
            keys.add(dedupe_key(normalise(raw)))
        except ValueError:
            keys.add(dedupe_key(raw))
    return current.header, keys


def import_export(src: Path, dest: Path, *, base_url: str = "") -> ImportResult:
    """Append the export's new, valid, subscribed addresses to `dest` (created with a header if missing); a row
    the list's bad-row rule refuses (pipeline.lists.values, as `check` and `send` apply it) is invalid here too."""
    source = CsvFile(src)
    mapping = detect(source)
    header, seen = _existing(dest)
    result = ImportResult(source_format=mapping.source_format)
    present = {h.lower() for h in header}
    columns = header + [name for _i, name in mapping.fields if name not in present]
    width = len(source.header)
    merge = [c for c in columns if FIELD_NAME.fullmatch(c)
             and c.lower() not in (EMAIL_COLUMN, NAME_COLUMN, LANGUAGE_COLUMN, *RESERVED_FIELDS)]
    rule = RowRule(base_url=base_url, list_name=dest.stem, columns=merge)
    new_rows: list[list[str]] = []
    for line, row, bad_utf8 in source.rows():
        email, why = check_cells(row, bad_utf8, width, mapping.email_at)
        if why:
            result.invalid += 1
            note_invalid(result.problems, result.invalid, src, line, why, IMPORT_FIX)
            continue
        reason = mapping.suppress(row)
        if reason:
            result.to_suppress.append((email, reason))
            continue
        values = {EMAIL_COLUMN: email, NAME_COLUMN: clean_name(mapping.name(row))}
        values.update((name, _cell(row, index)) for index, name in mapping.fields)
        why = rule.problem(email, values[NAME_COLUMN], {c: values.get(c.lower(), "") for c in merge})
        if why:
            result.invalid += 1
            note_invalid(result.problems, result.invalid, src, line, why, IMPORT_FIX)
            continue
        key = dedupe_key(email)
        if key in seen:
            result.already_present += 1
            continue
        seen.add(key)
        new_rows.append([values.get(c.lower(), "") for c in columns])
    note_hidden(result.problems, result.invalid, src, IMPORT_FIX)
    if new_rows:
        _write(dest, header, columns, new_rows)
        result.added = len(new_rows)
    return result


def _write(dest: Path, header: list[str], columns: list[str], new_rows: list[list[str]]) -> None:
    """Old rows (widened to the new columns) then the new ones, in a temporary file moved over `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            if dest.exists():
                padding = [""] * (len(columns) - len(header))
                for _line, row, _bad in CsvFile(dest).rows():
                    writer.writerow(row + [""] * (len(header) - len(row)) + padding)
                shutil.copymode(dest, temp)
            writer.writerows(new_rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, dest)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
