"""SQLite transactions as the store writes them: BEGIN IMMEDIATE, so a writer never waits halfway."""

from __future__ import annotations

import sqlite3

from pipeline.errors import StoreError


class transaction:  # noqa: N801 - used like a function: `with transaction(conn):`
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): takes the write lock at once, so no surprises.

    A database locked for longer than the busy timeout, or a disk that refuses the write, becomes a
    StoreError: nothing of the transaction was written, and the same command can be run again."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from None
        return self.conn

    def __exit__(self, exc_type: object, exc: BaseException | None, _: object) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.OperationalError as error:
                exc = error
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError):
            raise _unavailable(exc) from None


def _unavailable(exc: sqlite3.Error) -> StoreError:
    return StoreError(f"the send log could not be written ({exc}); nothing of that step was recorded — "
                      "run the same command again (if it is locked, another process holds it: wait for it)")


class snapshot:  # noqa: N801 - used like a function: `with snapshot(conn):`
    """Reads that see one moment (a read transaction; in WAL mode writers go on meanwhile). Inside a
    transaction already, it is that transaction's."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self._own = conn, False

    def __enter__(self) -> sqlite3.Connection:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")
            self._own = True
        return self.conn

    def __exit__(self, *_: object) -> None:
        if self._own and self.conn.in_transaction:
            self.conn.execute("COMMIT")
