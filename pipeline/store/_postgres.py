"""The PostgreSQL engine (psycopg 3): one database shared by every machine that sends and every `serve`.

States, return values and guarantees are the SQLite engine's (_sqlite); read its docstrings. Here:

- One connection per store, autocommit off, every method one explicit transaction (`_tx`), committed
  durably (synchronous_commit as the server has it: on by default). A connection that died is replaced
  at the next call, after the call that saw it die failed.
- Any psycopg error becomes a StoreError naming the database without its password: the send stops, and
  nothing is counted as sent that was not committed, so the same command resumes it.
- Migrations (_pg_schema) are applied by `newsletter db migrate` (`migrate=True`) under an advisory lock;
  a store opened with migrations pending refuses to start.
- The send lock is an advisory lock on a connection of its own (_pg_lock).
- Lists arrive by COPY into a temporary table, then one INSERT ... SELECT in list order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pipeline.errors import SendError, StoreError
from pipeline.store._pg_claims import PgClaimsMixin
from pipeline.store._pg_erase import PgEraseMixin
from pipeline.store._pg_events import PgEventsMixin
from pipeline.store._pg_lock import PgSendLock
from pipeline.store._pg_schema import IDENTITY_TABLES, MIGRATIONS, TABLES, key
from pipeline.store._pg_stop import PgStopMixin
from pipeline.store._types import STATES, ListRow, Send, Suppression, erased_marker, now

MIGRATION_LOCK = 0x6E6C5F6D69677261  # advisory lock key of `migrate`: one process applies migrations at a time
# On the send lock's connection, which stays idle for the whole send: a cut network becomes a socket error
# after about 25 s of silence (10 + 3 x 5), which its `held()` sees, instead of after the kernel's 2 hours.
LOCK_KEEPALIVES = {"keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
WORK_MEM = "64MB"  # for the hash joins of a million-row list (the default 4 MB spills them to disk)

_SEND_COLUMNS = "id, issue, list, transport, content_hash, subject, send_at, created_at, finished_at"
_COUNTS = "SELECT " + ", ".join(f"count(*) FILTER (WHERE state = '{s}')" for s in STATES) + " FROM deliveries"
_LISTED = ('CREATE TEMP TABLE listed (ord bigint GENERATED ALWAYS AS IDENTITY, email text COLLATE "C", '
           "name text, fields text, edition text COLLATE \"C\" NOT NULL DEFAULT '') ON COMMIT DROP")


def where(url: str) -> str:
    """The database for messages: user, host, port and name, never the password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "(NEWSLETTER_DATABASE_URL, which is not a readable PostgreSQL URL)"
    user = f"{quote(str(parts['user']))}@" if parts.get("user") else ""
    host = str(parts.get("host") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{quote(str(parts.get('dbname') or ''))}"


def _send(row: tuple[Any, ...]) -> Send:
    i, issue, list_name, transport, content_hash, subject, send_at, created, finished = row
    return Send(id=int(i), issue=issue, list_name=list_name, transport=transport, content_hash=content_hash,
                subject=subject, send_at=send_at, created_at=created, finished_at=finished)


class PostgresStore(PgEraseMixin, PgClaimsMixin, PgEventsMixin, PgStopMixin):
    """The store in a PostgreSQL database at `url` (from NEWSLETTER_DATABASE_URL: it may hold a password)."""

    engine = "postgresql"

    def __init__(self, url: str, *, migrate: bool) -> None:
        self._url = url
        self.where = where(url)
        self._readable = True
        try:
            self._password = str(conninfo_to_dict(url).get("password") or "")
        except psycopg.Error:
            self._password, self._readable = "", False
        self.conn = self._connect()
        try:
            if migrate:
                self.migrate()
            elif pending := [name for name, _ in MIGRATIONS if name not in set(self.applied_migrations())]:
                raise StoreError(f"the database at {self.where} lacks migrations {', '.join(pending)} — "
                                 f"run `newsletter db migrate` (with the same NEWSLETTER_DATABASE_URL), then "
                                 f"this command again")
        except BaseException:
            self.conn.close()
            raise

    def _connect(self, **defaults: Any) -> psycopg.Connection[Any]:
        """A connection; `defaults` (and a 10 s connect_timeout) apply where the URL does not say otherwise."""
        options: dict[str, Any] = {"autocommit": False, "application_name": "newsletter"}
        try:
            given = conninfo_to_dict(self._url)
            options |= {k: v for k, v in {"connect_timeout": 10, **defaults}.items() if k not in given}
            return psycopg.connect(self._url, **options)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the database at {self.where} ({self._detail(exc)}) — check "
                             f"NEWSLETTER_DATABASE_URL and that the server is running, then run the same command "
                             f"again") from None

    def _detail(self, exc: BaseException) -> str:
        if not self._readable:  # libpq's message quotes the URL or a part of it: maybe the password
            return "a bracket, a %-escape or a parameter after ? that PostgreSQL does not know"
        # A server error's DETAIL and CONTEXT quote the failing row or key (addresses, names): the first line only.
        primary = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
        text = " ".join((primary or str(exc)).split()) or type(exc).__name__
        return text.replace(self._password, "***") if self._password else text

    def _failure(self, exc: psycopg.Error) -> StoreError:
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return StoreError(f"the database at {self.where} went away ({self._detail(exc)}); nothing unrecorded "
                              f"was counted as sent — run the same command again when it is back")
        return StoreError(f"the database at {self.where} refused a statement ({self._detail(exc)}); nothing "
                          f"unrecorded was counted as sent — if `newsletter db migrate` does not help, report "
                          f"this message")

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction; a psycopg error inside (or a dead connection) becomes a StoreError."""
        if self.conn.closed or self.conn.broken:
            self.conn = self._connect()
        try:
            with self.conn.transaction():
                yield self.conn
        except psycopg.Error as exc:
            raise self._failure(exc) from None

    def close(self) -> None:
        self.conn.close()

    # --- migrations, locks, the send loop's mode --------------------------------------------------------

    def applied_migrations(self) -> list[str]:
        with self._tx() as conn:
            row = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
            if row is None or row[0] is None:
                return []
            recorded = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
        # in the order they are applied (two applied within one millisecond tie on applied_at)
        known = [name for name, _ in MIGRATIONS if name in recorded]
        return known + sorted(recorded.difference(known))

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet, each in its own transaction under an advisory lock (two
        processes migrating at once take turns); return their names."""
        done = []
        for name, script in MIGRATIONS:
            with self._tx() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, "
                             "applied_at text NOT NULL)")
                if conn.execute("SELECT 1 FROM schema_migrations WHERE name = %s", (name,)).fetchone():
                    continue
                conn.execute(script.encode())  # no parameters: several statements in one go
                conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (%s, %s)", (name, now()))
            done.append(name)
        return done

    def lock(self, *, issue: str, list_name: str) -> PgSendLock:
        """A database lock: one send of an issue to a list at a time, whichever machine it runs on."""
        return PgSendLock(lambda: self._connect(**LOCK_KEEPALIVES), self._failure, issue=issue, list_name=list_name)

    def sending(self) -> AbstractContextManager[None]:
        return nullcontext()

    # --- suppressions -----------------------------------------------------------------------------------

    def add_suppression(self, email: str, *, reason: str, source: str) -> bool:
        """Suppress an address for every list; False if it already was (the first reason is kept)."""
        with self._writing_addresses() as conn:
            return self._insert_suppression(conn, email, reason=reason, source=source)

    def add_suppressions(self, found: Iterable[tuple[str, str]], *, source: str) -> int:
        """(address, reason) pairs in one transaction (by COPY: imports can be large); returns how many were new."""
        with self._writing_addresses() as conn:
            conn.execute('CREATE TEMP TABLE found (ord bigint GENERATED ALWAYS AS IDENTITY, email text COLLATE "C", '
                         'reason text, marker text COLLATE "C") ON COMMIT DROP')
            with conn.cursor().copy("COPY found (email, reason, marker) FROM STDIN") as copy:
                for email, reason in found:
                    copy.write_row((email.strip(), reason, erased_marker(email)))
            # not an erased address: its marker suppresses it already, and the address must not come back
            return conn.execute(f"INSERT INTO suppressions (email, reason, source, created_at) SELECT email, reason, "
                                f"%s, %s FROM found f WHERE NOT EXISTS (SELECT 1 FROM erased e WHERE e.marker = "
                                f"f.marker) ORDER BY ord ON CONFLICT (({key('email')})) DO NOTHING",
                                (source, now())).rowcount

    def remove_suppression(self, email: str) -> bool:
        """Allow mail to an address again; False if it was not suppressed."""
        with self._tx() as conn:
            return conn.execute(f"DELETE FROM suppressions WHERE {key('email')} = {key('%s::text')}",
                                (email.strip(),)).rowcount == 1

    def list_suppressions(self) -> list[Suppression]:
        with self._tx() as conn:
            rows = conn.execute("SELECT email, reason, source, created_at FROM suppressions "
                                f"ORDER BY created_at, {key('email')}, email").fetchall()
        return [Suppression(email=e, reason=r, source=s, created_at=c) for e, r, s, c in rows]

    def is_suppressed(self, email: str) -> bool:
        with self._tx() as conn:
            return conn.execute(f"SELECT 1 FROM suppressions WHERE {key('email')} = {key('%s::text')}",
                                (email.strip(),)).fetchone() is not None

    def suppressed_set(self) -> set[str]:
        """Every suppressed address, lower-cased: a fast membership test while streaming a list."""
        with self._tx() as conn:
            return {str(row[0]).lower() for row in conn.execute("SELECT email FROM suppressions")}

    # --- sends ------------------------------------------------------------------------------------------

    def find_send(self, *, issue: str, list_name: str, transport: str) -> Send | None:
        with self._tx() as conn:
            row = conn.execute(f"SELECT {_SEND_COLUMNS} FROM sends WHERE issue = %s AND list = %s AND "
                               f"transport = %s", (issue, list_name, transport)).fetchone()
        return _send(row) if row else None

    def sends_of_issue(self, issue: str) -> list[Send]:
        with self._tx() as conn:
            rows = conn.execute(f"SELECT {_SEND_COLUMNS} FROM sends WHERE issue = %s ORDER BY list, transport",
                                (issue,)).fetchall()
        return [_send(row) for row in rows]

    def create_send(self, *, issue: str, list_name: str, transport: str, content_hash: str, subject: str,
                    send_at: str | None = None) -> Send:
        with self._tx() as conn:
            row = conn.execute(f"INSERT INTO sends (issue, list, transport, content_hash, subject, send_at, "
                               f"created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_SEND_COLUMNS}",
                               (issue, list_name, transport, content_hash, subject, send_at, now())).fetchone()
        assert row is not None
        return _send(row)

    def update_send(self, send_id: int, *, content_hash: str, subject: str, send_at: str | None) -> None:
        """After the operator allowed changed content: the rest of the send uses the new build."""
        with self._tx() as conn:
            conn.execute("UPDATE sends SET content_hash = %s, subject = %s, send_at = %s WHERE id = %s",
                         (content_hash, subject, send_at, send_id))

    def delete_send(self, send_id: int) -> None:
        """Forget a send entirely (outbox runs start afresh each time; never used for real sends)."""
        with self._tx() as conn:
            for table, column in (("deliveries", "send_id"), ("batches", "send_id"), ("sends", "id")):
                conn.execute(f"DELETE FROM {table} WHERE {column} = %s", (send_id,))

    def finish_send(self, send_id: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE sends SET finished_at = %s WHERE id = %s", (now(), send_id))

    def sent_issues(self) -> set[str]:
        """Issues that are public: a real send of them has had at least one request accepted."""
        with self._tx() as conn:
            rows = conn.execute("SELECT DISTINCT s.issue FROM sends s JOIN batches b ON b.send_id = s.id "
                                "WHERE s.transport = 'sendgrid' AND b.state = 'accepted'").fetchall()
        return {str(row[0]) for row in rows}

    # --- deliveries -------------------------------------------------------------------------------------

    def _copy_listed(self, conn: psycopg.Connection[Any], rows: Iterable[ListRow]) -> None:
        """The list into the temporary table `listed` (dropped at commit), numbered in list order."""
        conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
        conn.execute(_LISTED)
        with conn.cursor().copy("COPY listed (email, name, fields, edition) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row if len(row) == 4 else (*row, ""))  # noqa: PLR2004 - a ListRow with its edition
        conn.execute("ANALYZE listed")

    def add_recipients(self, send_id: int, rows: Iterable[ListRow]) -> int:
        """Record the recipients of a new send (one transaction); duplicates are ignored. Returns rows added.

        One INSERT in list order; only if it meets a duplicate (the list reader removes them, so rarely) is
        it rolled back and made again skipping them, which costs a unique index probe per row.
        """
        with self._writing_addresses() as conn:
            if conn.execute("SELECT 1 FROM sends WHERE id = %s", (send_id,)).fetchone() is None:
                raise SendError(f"send {send_id} is not in the send log")
            self._copy_listed(conn, rows)
            insert = "INSERT INTO deliveries (send_id, email, name, fields, edition) SELECT %s, email, name, " \
                     "fields, edition FROM listed ORDER BY ord"
            try:
                with conn.transaction():
                    added = conn.execute(insert, (send_id,)).rowcount
            except psycopg.errors.UniqueViolation:
                added = conn.execute(f"{insert} ON CONFLICT DO NOTHING", (send_id,)).rowcount
            _analyze(conn)
        return added

    def sync_recipients(self, send_id: int, rows: Iterable[ListRow]) -> int:
        """On a re-run: add recipients new to the list, mark unsent ones no longer in it `removed` (see
        the SQLite engine's docstring). Returns rows added."""
        listed = f"EXISTS (SELECT 1 FROM listed l WHERE {key('l.email')} = {key('d.email')})"
        suppressed = f"EXISTS (SELECT 1 FROM suppressions s WHERE {key('s.email')} = {key('d.email')})"
        with self._writing_addresses() as conn:
            self._copy_listed(conn, rows)
            added = conn.execute(
                f"INSERT INTO deliveries (send_id, email, name, fields, edition) SELECT %s, email, name, fields, "
                f"edition FROM listed d "
                f"WHERE NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.send_id = %s AND {key('e.email')} = "
                f"{key('d.email')}) ORDER BY ord ON CONFLICT DO NOTHING", (send_id, send_id)).rowcount
            stamp = now()
            for new, condition in (("suppressed", suppressed), ("removed", f"NOT {listed}")):
                conn.execute(f"UPDATE deliveries d SET state = '{new}', updated_at = %s WHERE send_id = %s "
                             f"AND state IN ('pending', 'failed') AND {condition}", (stamp, send_id))
            conn.execute(f"UPDATE deliveries d SET state = 'pending', updated_at = %s WHERE send_id = %s AND state "
                         f"IN ('removed', 'suppressed') AND {listed}", (stamp, send_id))
            if added:
                _analyze(conn)
        return added

    def recover_in_flight(self, send_id: int) -> int:
        """After a process died (call with the send's lock held): requests it left in flight are in doubt,
        batches it left waiting to retry are failed. Returns the number of batches put in doubt."""
        with self._tx() as conn:
            stamp, count = now(), 0
            for state, new in (("waiting", "failed"), ("in_flight", "in_doubt")):
                conn.execute(f"UPDATE deliveries SET state = '{new}', updated_at = %s WHERE send_id = %s AND state = "
                             f"'in_flight' AND batch_id IN (SELECT id FROM batches WHERE send_id = %s AND state = %s)",
                             (stamp, send_id, send_id, state))
                count = conn.execute(f"UPDATE batches SET state = '{new}', finished_at = %s, error = "
                                     f"'process ended ' || coalesce('after: ' || error, 'before the answer') "
                                     f"WHERE send_id = %s AND state = %s", (stamp, send_id, state)).rowcount
        return count

    def counts(self, send_id: int) -> dict[str, int]:
        with self._tx() as conn:
            row = conn.execute(f"{_COUNTS} WHERE send_id = %s", (send_id,)).fetchone()
        assert row is not None
        return dict(zip(STATES, (int(n) for n in row), strict=True))

    def in_doubt_addresses(self, send_id: int) -> list[str]:
        with self._tx() as conn:
            return [r[0] for r in conn.execute("SELECT email FROM deliveries WHERE send_id = %s AND state = "
                                               "'in_doubt' ORDER BY id", (send_id,))]

    def send_times(self, send_id: int) -> tuple[str | None, str | None]:
        """When the first and the last accepted request of a send finished."""
        with self._tx() as conn:
            row = conn.execute("SELECT min(finished_at), max(finished_at) FROM batches WHERE send_id = %s "
                               "AND state = 'accepted'", (send_id,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    # --- copying to another store -----------------------------------------------------------------------

    def table_counts(self) -> dict[str, int]:
        with self._tx() as conn:
            return {t: _count(conn, t) for t in TABLES}

    def dump(self, table: str) -> Iterator[tuple[list[str], list[tuple[object, ...]]]]:
        """A table's rows in primary-key order, 10,000 at a time, with their column names."""
        order = TABLES[table]
        with self._tx() as conn, conn.cursor(name=f"dump_{table}") as cursor:
            cursor.execute(sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.Identifier(table),
                                                                          sql.Identifier(order)))
            columns = [d.name for d in cursor.description or ()]
            while chunk := cursor.fetchmany(10_000):
                yield columns, [tuple(r) for r in chunk]

    def load(self, table: str, columns: list[str], rows: list[tuple[object, ...]]) -> None:
        """Rows as `dump` gives them (ids kept), by COPY; identity sequences then continue after the largest."""
        assert table in TABLES
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns))
        with self._tx() as conn:
            with conn.cursor().copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
            if table in IDENTITY_TABLES:
                conn.execute(sql.SQL("SELECT setval(pg_get_serial_sequence(%s, 'id'), "
                                     "(SELECT coalesce(max(id), 0) + 1 FROM {}), false)").format(sql.Identifier(table)),
                             (table,))

    # --- editions ---------------------------------------------------------------------------------------

    def edition_counts(self, send_id: int) -> dict[str, dict[str, int]]:
        """Deliveries per edition and state ('' is the default edition of rows recorded before editions)."""
        with self._tx() as conn:
            rows = conn.execute(f"{_COUNTS.replace('SELECT ', 'SELECT edition, ', 1)} WHERE send_id = %s "
                                "GROUP BY edition ORDER BY edition", (send_id,)).fetchall()
        return {str(edition): dict(zip(STATES, (int(n) for n in row), strict=True)) for edition, *row in rows}


def _analyze(conn: psycopg.Connection[Any]) -> None:
    """Statistics at once after a bulk insert: until autovacuum comes by, the planner would take a new send for
    a few rows and read all of it for every batch (a seq scan per claim instead of an index range)."""
    conn.execute("ANALYZE deliveries")


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0
