"""Erasing a reader on request (`newsletter subscribers erase`): every trace of an address, found, then erased.

Where: the store (`Store.find_address`, `Store.erase_address`: deliveries, events, suppression, webhook bodies,
request errors; an erased marker kept), the rows of every list in `subscribers/`, and the reader's `.eml` in
outbox folders. Everything is read
first (a list that cannot be read stops it before anything changes); then, with the send locks of every send
that mailed the address held (a running send refuses it), the store is erased in one transaction and each
list that holds the address is rewritten atomically without those rows, every other byte kept.

Addresses compare without regard to case. Nothing here logs an address.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config
from pipeline.errors import ConfigError, SubscriberError
from pipeline.lists.subscribers import EMAIL_COLUMN, CsvFile, normalise
from pipeline.lists.values import outbox_file_name
from pipeline.store import Erased, Store


@dataclass(frozen=True, kw_only=True, slots=True)
class ListRows:
    """The rows of one list file that hold the address: the first line of each (a quoted cell may span lines)."""

    path: Path
    lines: tuple[int, ...]
    tracked: bool  # the file is in git's index: git history still holds the rows


@dataclass(frozen=True, kw_only=True, slots=True)
class Traces:
    """Every trace of one address: in the store (counts) and in the list files."""

    address: str
    store: Erased
    lists: tuple[ListRows, ...]
    outbox: tuple[Path, ...] = ()  # the reader's mail in outbox folders (`send --outbox DIR`)

    @property
    def list_rows(self) -> int:
        return sum(len(found.lines) for found in self.lists)


def checked_address(text: str, *, unchanged: str = "nothing was erased") -> str:
    """The address as lists hold it (email-validator's normal form), or ConfigError (exit 2) naming it."""
    try:
        return normalise(text)
    except ValueError as exc:
        raise ConfigError(f"{text.strip()[:80]!r} is not an email address ({exc}); {unchanged} — pass one "
                          f"address per argument, e.g. ada@example.org") from None


def list_files(config: Config) -> list[Path]:
    """Every list the newsletter knows: subscribers/*.csv."""
    folder = config.subscribers_dir
    return sorted(p for p in folder.glob("*.csv") if p.is_file()) if folder.is_dir() else []


def outbox_folders(config: Config, given: Sequence[Path]) -> list[Path]:
    """The outbox folders to look in: those given, else the newsletter's `outbox/` (the README's) if it exists."""
    if given:
        return list(given)
    default = config.root / "outbox"
    return [default] if default.is_dir() else []


def find(config: Config, store: Store, address: str, *, outboxes: Sequence[Path] = ()) -> Traces:
    """Where `address` is kept; nothing is changed. A list that cannot be read raises SubscriberError."""
    lists = []
    for path in list_files(config):
        lines = tuple(line for line, _, mine in _records(path, address) if mine)
        if lines:
            lists.append(ListRows(path=path, lines=lines, tracked=tracked_by_git(path)))
    name = outbox_file_name(address)
    mails = tuple(p for folder in outboxes for p in (folder / name, folder / f"{name}.tmp") if p.is_file())
    return Traces(address=address, store=store.find_address(address), lists=tuple(lists), outbox=mails)


def erase_all(config: Config, store: Store, found: list[Traces]) -> list[Traces]:
    """`erase` each address; the store then takes the old bytes out of its files once (a rebuild or VACUUM of a
    large send log per address would take minutes), also when one of them fails."""
    try:
        return [erase(config, store, traces, leave_no_copy=False) for traces in found]
    finally:
        store.leave_no_copy()


def erase(config: Config, store: Store, traces: Traces, *, leave_no_copy: bool = True) -> Traces:
    """Erase what `find` found (and whatever the store holds by now): the store first, in one transaction under
    the locks of the sends concerned, then the list files. Returns what was erased."""
    with ExitStack() as held:
        for issue, list_name in dict.fromkeys((i, n) for i, n, _ in store.find_address(traces.address).sends):
            held.enter_context(store.lock(issue=issue, list_name=list_name))
        erased = store.erase_address(traces.address, leave_no_copy=leave_no_copy)
    lists = []
    for found in traces.lists:
        lines = _rewrite(found.path, traces.address)
        if lines:
            lists.append(ListRows(path=found.path, lines=lines, tracked=found.tracked))
    mails = []
    for mail in traces.outbox:
        if mail.is_file():
            mail.unlink()
            mails.append(mail)
    return Traces(address=traces.address, store=erased, lists=tuple(lists), outbox=tuple(mails))


# --- list files -----------------------------------------------------------------------------------------


def _same(cell: str, address: str) -> bool:
    try:
        cell = normalise(cell)
    except ValueError:
        cell = cell.strip()
    return cell.lower() == address.lower()


def _records(path: Path, address: str) -> Iterator[tuple[int, bytes, bool]]:
    """(first line, raw bytes, holds the address) of each record of a list, the header first (never the address).

    A record is what the csv module reads as one row (a quoted cell may hold line breaks), given back byte for
    byte: a file rewritten from them differs only by the rows left out."""
    email_at = CsvFile(path).require(EMAIL_COLUMN)  # the header checked as the list reader checks it
    needle = address.lower().encode("utf-8", "surrogatepass")
    raw: list[bytes] = []
    with path.open("rb") as handle:

        def lines() -> Iterator[str]:
            for line in handle:
                raw.append(line)
                yield line.decode("utf-8", "surrogateescape")

        reader, first = csv.reader(lines()), 1
        try:
            for cells in reader:
                record = b"".join(raw)
                raw.clear()
                mine = first > 1 and needle in record.lower() and email_at < len(cells) and \
                    _same(cells[email_at], address)
                yield first, record, mine
                first = reader.line_num + 1
        except csv.Error as exc:
            raise SubscriberError(f"{path}:{reader.line_num + 1}: the CSV cannot be read ({exc}); nothing was "
                                  f"erased — check the quoting of that row") from None
    if raw:  # a last line the reader took for nothing (cannot happen with csv's rules, kept to lose no byte)
        yield first, b"".join(raw), False


def _rewrite(path: Path, address: str) -> tuple[int, ...]:
    """The list without the rows of `address`, through a temporary file moved over it (mode kept); the lines of
    the rows left out. The file is left as it is when none holds it (any more)."""
    dropped: list[int] = []
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            for line, record, mine in _records(path, address):
                if mine:
                    dropped.append(line)
                else:
                    out.write(record)
            out.flush()
            if dropped:
                os.fsync(out.fileno())
        if not dropped:
            Path(temp).unlink()
            return ()
        shutil.copymode(path, temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return tuple(dropped)


# --- git ---------------------------------------------------------------------------------------------------


def tracked_by_git(path: Path) -> bool:
    """Whether git tracks `path` (then its history still holds the rows). False without git, outside a
    repository, or when git does not answer within 10 s: only a warning depends on it."""
    try:
        done = subprocess.run(["git", "ls-files", "--error-unmatch", "--", path.name], cwd=path.parent,
                              capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0
