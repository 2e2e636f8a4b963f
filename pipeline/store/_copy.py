"""`newsletter db copy`: a SQLite store's history moved into an empty PostgreSQL one, counts verified.

A send running on SQLite while the copy is taken would be copied half done, then go on: resumed on PostgreSQL,
it would mail its rest a second time. So the copy holds the send lock of every send it copies, and reads the
whole store in one snapshot taken after those locks: no copied send can move until the copy is done.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import StoreError
from pipeline.store._lock import SendLock
from pipeline.store._sqlite import SQLiteStore
from pipeline.store._types import Store

# Parents before children, so that every foreign key finds its row.
ORDER = ("sends", "batches", "deliveries", "suppressions", "events", "delivery_status", "webhook_rejects", "erased",
         "readmitted")


def copy_store(source: SQLiteStore, target: Store) -> dict[str, int]:
    """Copy every row (erased markers too), ids kept; refuse a target that already holds sends, deliveries,
    suppressions or events (a second copy would mix two histories), and refuse while a send of the source runs.
    Returns the rows per table, equal on both sides."""
    held = {t: n for t, n in target.table_counts().items() if n}
    if held:
        raise StoreError(f"{target.where} already holds data ({', '.join(f'{n} {t}' for t, n in held.items())}); "
                         "nothing was copied — copy into a new, empty database (after `newsletter db migrate`)")
    with _sends_held(source) as copied:
        for table in ORDER:
            for columns, rows in source.dump(table):
                target.load(table, columns, rows)
        before = source.table_counts()  # the snapshot's, as dumped
    begun = [f"issue {i} to list {n}" for i, n in source.send_lists() if (i, n) not in copied]  # the log now
    after = target.table_counts()
    if before != after:
        raise StoreError(f"the copy does not match: {before} in {source.where}, {after} in {target.where} — "
                         "drop the target database and run the copy again")
    if begun:  # a new send began on SQLite meanwhile: run on PostgreSQL, it would mail its list again
        raise StoreError(f"a send began on {source.where} during the copy and is not in it ({', '.join(begun)}) — "
                         "drop the target database, and run the copy again once that send has ended")
    return after


@contextmanager
def _sends_held(source: SQLiteStore) -> Iterator[set[tuple[str, str]]]:
    """A snapshot of the source in which every send is locked since before it began, locks held to the end.

    A send recorded between reading the sends and the snapshot's first read is locked and the snapshot taken
    again (it may have moved meanwhile). One recorded later is not in the snapshot: `copy_store` names it."""
    locks: dict[Path, SendLock] = {}
    try:
        while True:
            _take(source, source.send_lists(), locks)
            with source.snapshot():
                sends = source.send_lists()  # the snapshot's first read: it begins here, after the locks
                if all(source.lock(issue=i, list_name=n).path in locks for i, n in sends):
                    yield set(sends)
                    return
    finally:
        for lock in locks.values():
            lock.release()


def _take(source: SQLiteStore, sends: Iterable[tuple[str, str]], locks: dict[Path, SendLock]) -> None:
    """Lock each send without waiting; if any is running, release them all and refuse, naming them."""
    running = []
    for issue, list_name in sends:
        lock = source.lock(issue=issue, list_name=list_name)
        if lock.path in locks:
            continue  # two names can share a lock file: taken once
        owner = lock.take(holder="newsletter db copy")
        if owner is None:
            locks[lock.path] = lock
        else:
            running.append(f"{lock.label} (pid {owner})")
    if running:
        for lock in locks.values():
            lock.release()
        locks.clear()
        one, it = len(running) == 1, "it" if len(running) == 1 else "them"
        raise StoreError(f"{'a send is' if one else 'sends are'} running on this machine: {', '.join(running)}; "
                         f"nothing was copied (the copy would hold {it} half done) — wait for {it} to end, or stop "
                         f"{it}, then run the copy again")
