"""Subscriber lists: `subscribers/NAME.csv`, streamed row by row, validated, deduplicated and filtered.

Lists are personal data. Addresses appear only in the per-row problems shown to the operator, never in
logs. A list of a million rows is read without being held in memory: only a 64-bit hash per address is
kept, to drop duplicates.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import itertools
import os
import re
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, Any

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from pipeline.config import Config
from pipeline.errors import Problem, SubscriberError
from pipeline.lists.values import RowRule, language_tag_ok, unsafe_char

if TYPE_CHECKING:
    from pipeline.lists.importing import ImportResult

EMAIL_COLUMN = "email"
NAME_COLUMN = "name"
#: Which edition of an issue the row gets (a BCP 47 tag: ko, en, ko-KR); not a merge field.
LANGUAGE_COLUMN = "language"
MAX_DETAILED_PROBLEMS = 50
SKIP_FIX = "correct or delete the row, or use --skip-invalid to send to the valid rows only"
UTF8_FIX = "save the file as 'CSV UTF-8' (in Excel: File > Save As > CSV UTF-8)"
FIELD_NAME = re.compile(r"[A-Za-z0-9_]+")
#: Tags the pipeline fills itself; a list column of that name must not replace them.
RESERVED_FIELDS = frozenset({"unsubscribe_url"})
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]++"
_LABEL = r"[a-z0-9]++(?:-[a-z0-9]++)*+"  # no hyphen at either end, none doubled (so no IDNA "xn--")
_SPECIAL = "|".join(sorted({re.escape(name.rsplit(".", 1)[-1]) for name in SPECIAL_USE_DOMAIN_NAMES}))
#: Plain ASCII addresses with a lower-case domain. Up to 64 characters long (so no part is too long),
#: everything it accepts email-validator accepts unchanged (tests/test_subscribers.py checks this over
#: many samples); anything else goes to email-validator, which costs ~20 µs an address.
_PLAIN = re.compile(rf"{_ATOM}(?:\.{_ATOM})*+@(?:{_LABEL}\.)++(?!(?:{_SPECIAL})\Z)[a-z]{{2,63}}").fullmatch
_BAD_BYTES = re.compile("[\udc80-\udcff]")  # how surrogateescape shows bytes that are not UTF-8
_NO_FIELDS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, kw_only=True, slots=True)
class Recipient:
    email: str  # normalised: as email-validator writes it (domain lower-cased)
    name: str = ""  # ';' and ',' removed: SendGrid refuses them in names
    fields: Mapping[str, str] = field(default_factory=dict)  # other columns, keys as in the header
    line: int  # line in the CSV, for messages
    language: str = ""  # the `language` column as written ('' without one): it picks the edition


_new = object.__new__
_slots: dict[str, Any] = {name: vars(Recipient)[name].__set__ for name in Recipient.__slots__}
_set_email, _set_name, _set_fields, _set_line, _set_language = (
    _slots[n] for n in ("email", "name", "fields", "line", "language"))


def _recipient(email: str, name: str, fields: Mapping[str, str], line: int, language: str) -> Recipient:
    """Recipient(...) without the frozen dataclass __init__ (object.__setattr__ per field): 2.5x faster,
    and a quarter of the time a row takes."""
    recipient: Recipient = _new(Recipient)
    _set_email(recipient, email)
    _set_name(recipient, name)
    _set_fields(recipient, fields)
    _set_line(recipient, line)
    _set_language(recipient, language)
    return recipient


def normalise(address: str) -> str:
    """The address as we send it (email-validator's normal form); ValueError with the reason if invalid."""
    address = address.strip()
    if len(address) <= 64 and _PLAIN(address):
        return address
    if not address:
        raise ValueError("the address is empty")
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None


def dedupe_key(email: str) -> int:
    """A compact case-insensitive key for one run: Python's 64-bit string hash (SipHash, keyed anew in each
    process) instead of the address. Two different addresses of a 1,000,000-row list share a key with a
    chance of about 3e-8, and then the second is counted as a duplicate in that run only."""
    return hash(email.lower())


def clean_name(name: str) -> str:
    """SendGrid refuses ';' and ',' in names; line breaks (from quoted cells) would break headers."""
    if ";" in name or "," in name:
        name = name.replace(";", "").replace(",", "")
    if not name.isprintable():
        name = " ".join(name.split())
    return name.strip()


def list_path(config: Config, name: str, *, must_exist: bool = True) -> Path:
    """subscribers/NAME.csv; `name` may carry the .csv suffix but no folder."""
    stem = name.removesuffix(".csv")
    if not stem or "/" in stem or "\\" in stem or ".." in stem or stem.startswith("."):
        raise SubscriberError(f"invalid list name {name!r} — give the file name in subscribers/ without "
                              f"a folder, e.g. 'sample' for subscribers/sample.csv")
    if bad := unsafe_char(stem):
        raise SubscriberError(f"the list name holds a control character ({bad}) and cannot go into a mail header "
                              f"or a link — rename the file in subscribers/ to a plain name, e.g. 'members'")
    path = config.subscribers_dir / f"{stem}.csv"
    if must_exist and not path.is_file():
        listed = ", ".join(sorted(p.stem for p in config.subscribers_dir.glob("*.csv"))) or "none"
        raise SubscriberError(f"no list {stem!r}: {path} does not exist (available lists: {listed}) — "
                              f"use one of those names, or create it with 'newsletter subscribers import'")
    return path


class _Text:
    """Feeds csv with decoded 1 MB blocks (much faster than line by line); bytes that are not UTF-8 are
    kept as lone surrogates and `dirty` is set, so only such files pay for checking each row."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.dirty = False

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self._blocks())

    def _blocks(self) -> Iterator[io.StringIO]:
        rest, first = b"", True
        while True:
            block = self.handle.read(1 << 20)
            data = rest + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            if block and cut == 0:  # no line end yet: read on
                rest = data
                continue
            data, rest = data[:cut], data[cut:]
            try:
                text = data.decode()
            except UnicodeDecodeError:
                text = data.decode(errors="surrogateescape")
                self.dirty = True
            if first:
                text, first = text.removeprefix("\ufeff"), False
            yield io.StringIO(text, newline="")
            if not block:
                return


class CsvFile:
    """A CSV file with a header row, checked at once (SubscriberError); `rows()` streams the rest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with path.open("rb") as handle:
                start = handle.read(65536)
        except OSError as exc:
            raise SubscriberError(f"cannot read {path}: {exc.strerror} — check the path and permissions") from None
        if not start.removeprefix(b"\xef\xbb\xbf").strip():
            raise SubscriberError(f"{path}:1: the file is empty — add a header row such as 'email,name' "
                                  f"and one row per subscriber")
        if b"\0" in start:
            raise SubscriberError(f"{path}:1: not a CSV text file (a spreadsheet, or UTF-16 text?) — {UTF8_FIX}")
        try:
            start.decode()
        except UnicodeDecodeError as exc:
            if exc.start < len(start) - 4:  # not just a character cut at the end of the sample
                line = start[:exc.start].count(b"\n") + 1
                raise SubscriberError(f"{path}:{line}: the file is not UTF-8 (byte {start[exc.start]:#x}) "
                                      f"— {UTF8_FIX}") from None
        with path.open("rb") as handle:
            try:
                header = next(csv.reader(_Text(handle)), [])
            except csv.Error as exc:
                raise SubscriberError(f"{path}:1: not a CSV file ({exc}) — {UTF8_FIX}") from None
        self.header = [h.strip() for h in header]
        repeated = sorted({h for h in self.header if h and self.header.count(h) > 1})
        if repeated:
            raise SubscriberError(f"{path}:1: column(s) {', '.join(repeated)} appear more than once — "
                                  f"rename or delete the repeated columns")

    def column(self, name: str) -> int | None:
        """Index of a column, matched without regard to case."""
        lowered = [h.lower() for h in self.header]
        return lowered.index(name.lower()) if name.lower() in lowered else None

    def require(self, name: str) -> int:
        index = self.column(name)
        if index is None:
            hint = " (the columns are separated by ';': save it comma-separated)" if ";" in "".join(self.header) else ""
            raise SubscriberError(f"{self.path}:1: no {name!r} column in the header{hint} — the first row "
                                  f"must name the columns, e.g. 'email,name'; found: {', '.join(self.header)}")
        return index

    def rows(self) -> Iterator[tuple[int, list[str], bool]]:
        """(first line of the row, cells, whether the row had bytes that are not UTF-8); blank rows skipped."""
        with self.path.open("rb") as handle:
            # The whole file is read anyway: the kernel reads it ahead at once instead of block by block (a
            # list written a while ago may be off the page cache: reading 1M rows then stalled 1.5 s in I/O).
            with contextlib.suppress(AttributeError, OSError):  # no posix_fadvise (not Linux/BSD): plain reads
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
            text = _Text(handle)
            reader = csv.reader(text)
            try:
                next(reader)
                end = reader.line_num
                for row in reader:
                    start, end = end + 1, reader.line_num
                    if row:
                        yield start, row, text.dirty and any(_BAD_BYTES.search(cell) for cell in row)
            except csv.Error as exc:
                raise SubscriberError(f"{self.path}:{reader.line_num + 1}: the CSV cannot be read ({exc}) — "
                                      f"check the quoting of that row") from None


def note_invalid(problems: list[Problem], invalid: int, path: Path, line: int, message: str,
                 fix: str = SKIP_FIX) -> None:
    """Keep the first MAX_DETAILED_PROBLEMS invalid rows in detail; `invalid` counts them all."""
    if invalid <= MAX_DETAILED_PROBLEMS:
        problems.append(Problem(message=message, file=path, line=line, fix=fix))


def note_hidden(problems: list[Problem], invalid: int, path: Path, fix: str = SKIP_FIX) -> None:
    if invalid > MAX_DETAILED_PROBLEMS:
        problems.append(Problem(message=f"{invalid - MAX_DETAILED_PROBLEMS} more invalid row(s) not shown",
                                file=path, fix=fix))


def check_cells(row: list[str], bad_utf8: bool, width: int, email_at: int) -> tuple[str, str]:
    """(normalised address, "") or ("", why the row is invalid)."""
    if bad_utf8:
        return "", "the row is not valid UTF-8 (save the file as 'CSV UTF-8')"
    if len(row) > width:
        return "", (f"the row has {len(row)} cells but the header has {width} (put values that contain "
                    f"commas in double quotes: \"Doe, Jane\")")
    raw = row[email_at] if email_at < len(row) else ""
    try:
        return normalise(raw), ""
    except ValueError as exc:
        return "", f"invalid address {raw.strip()!r}: {exc}"


class ListReader:
    """Streams a list once: valid, deduplicated, unsuppressed recipients in file order.

    The header is checked at construction (SubscriberError); invalid rows become `problems` and are
    skipped, so the caller decides whether to stop (the send does, unless --skip-invalid).
    `suppressed` gets the normalised address and should compare without regard to case.
    """

    def __init__(self, path: Path, *, suppressed: Callable[[str], bool] | None = None, base_url: str = "") -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.total = self.invalid = self.duplicates = self.suppressed = 0
        self.bad_languages = 0  # rows whose `language` is not a language tag (they get the default edition)
        self._is_suppressed = suppressed
        self._used = False
        self._csv = CsvFile(path)
        self._email_at = self._csv.require(EMAIL_COLUMN)
        self._name_at = self._csv.column(NAME_COLUMN)
        self._language_at = self._csv.column(LANGUAGE_COLUMN)
        self._fields: list[tuple[int, str]] = []
        for index, column in enumerate(self._csv.header):
            if index in (self._email_at, self._name_at, self._language_at) or not column:
                continue
            if column.lower() in RESERVED_FIELDS:
                self.problems.append(Problem(
                    message=f"column {column!r} is ignored: %%{column}%% is filled by the pipeline", file=path,
                    line=1, fix="rename or delete the column", blocking=False))
            elif FIELD_NAME.fullmatch(column):
                self._fields.append((index, column))
            else:
                self.problems.append(Problem(
                    message=f"column {column!r} cannot be used as a merge field %%{column}%%", file=path, line=1,
                    fix="rename it with letters, digits and underscores only (e.g. 'first_name')", blocking=False))
        # The one bad-row rule (pipeline.lists.values): `subscribers check` and `send` both come through here.
        self._rule = RowRule(base_url=base_url, list_name=path.stem, columns=[c for _, c in self._fields])

    def _bad_language(self, line: int, language: str) -> None:
        self.bad_languages += 1
        if self.bad_languages <= MAX_DETAILED_PROBLEMS:
            shown = language[:40] if not unsafe_char(language) else "(control characters)"
            self.problems.append(Problem(
                message=f"language {shown!r} is not a language tag: this recipient gets the default edition",
                file=self.path, line=line, blocking=False,
                fix="write a BCP 47 tag such as ko, en or ko-KR, or leave the cell empty"))

    @property
    def valid(self) -> int:
        return self.total - self.invalid - self.duplicates - self.suppressed

    def __iter__(self) -> Iterator[Recipient]:
        rows = self.rows()
        try:
            yield from itertools.starmap(_recipient, rows)
        finally:
            rows.close()  # the counts are kept when the caller stops early

    def rows(self, *, dedupe: bool = True) -> Generator[tuple[str, str, Mapping[str, str], int, str], None, None]:
        """What `iter` gives as Recipients, as plain (email, name, fields, line, language) tuples: a send records
        a million rows, and a Recipient each was a sixth of the time it took to read them.

        A `language` that is not a language tag is no reason to skip the row (the recipient gets the default
        edition): it is counted in `bad_languages`, and the first few are warnings in `problems`.

        `dedupe=False` leaves duplicates to the caller: a new send's log drops them by its UNIQUE index,
        exactly, without a set of a million hashes in memory (60 MB, a sixth of the reading time).
        """
        if self._used:
            raise RuntimeError("a ListReader iterates once; make a new one")
        self._used = True
        seen: set[int] = set()
        seen_add = seen.add
        width, email_at, name_at, fields = len(self._csv.header), self._email_at, self._name_at, self._fields
        language_at, known = self._language_at, {"": True}  # tag -> whether it is a language tag
        is_suppressed, problem = self._is_suppressed, self._rule.problem
        total = invalid = duplicates = suppressed = 0
        try:
            for line, row, bad_utf8 in self._csv.rows():
                total += 1
                # normalise()'s fast path, inlined for the common row; check_cells does the rest
                email = row[email_at] if not bad_utf8 and email_at < len(row) <= width else ""
                why = ""
                if not (len(email) <= 64 and _PLAIN(email)):
                    email, why = check_cells(row, bad_utf8, width, email_at)
                if not why:
                    if len(row) < width:
                        row += [""] * (width - len(row))
                    name = clean_name(row[name_at]) if name_at is not None else ""
                    values = {k: row[i] for i, k in fields} if fields else _NO_FIELDS
                    why = problem(email, name, values)  # before duplicates and suppressions: as `check` sees it
                if why:
                    invalid += 1
                    note_invalid(self.problems, invalid, self.path, line, why)
                    continue
                if dedupe:
                    before = len(seen)
                    seen_add(hash(email.lower()))  # dedupe_key, inlined; one probe of the set, not two
                    if len(seen) == before:
                        duplicates += 1
                        continue
                if is_suppressed is not None and is_suppressed(email):
                    suppressed += 1
                    continue
                if language_at is None:
                    yield email, name, values, line, ""
                    continue
                language = row[language_at].strip()
                ok = known.get(language)
                if ok is None:
                    ok = known[language] = language_tag_ok(language)
                if not ok:
                    self._bad_language(line, language)
                yield email, name, values, line, language
            note_hidden(self.problems, invalid, self.path)
        finally:
            self.total, self.invalid, self.duplicates, self.suppressed = total, invalid, duplicates, suppressed


def check_list(path: Path, *, suppressed: Callable[[str], bool] | None = None, base_url: str = "") -> ListReader:
    """Read the whole list for its counts and problems; the caller decides what they mean."""
    reader = ListReader(path, suppressed=suppressed, base_url=base_url)
    collections.deque(reader, maxlen=0)
    return reader


def __getattr__(name: str) -> Any:
    """`from pipeline.lists.subscribers import ImportResult` works, without loading the import code up front."""
    if name == "ImportResult":
        from pipeline.lists.importing import ImportResult

        return ImportResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def import_export(src: Path, dest: Path, *, base_url: str = "") -> ImportResult:
    """Append a Mailchimp or Substack export (or a plain CSV) to a list; see pipeline.lists.importing."""
    from pipeline.lists.importing import import_export as run

    return run(src, dest, base_url=base_url)
