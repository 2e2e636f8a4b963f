"""`newsletter db migrate` and `db copy`: real subprocesses, as an operator moves a newsletter to PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.errors import StoreError
from pipeline.store._copy import copy_store
from pipeline.store._lock import SendLock
from pipeline.store._sqlite import SQLiteStore
from tests.conftest import PG_URL_ENV, run_cli
from tests.sendkit import ISSUE, cli, environ, write_list
from tests.standin import StandIn
from tests.storekit import seed_send, select


def test_copy_refuses_what_is_not_a_postgresql_url(site: Path) -> None:
    result = run_cli(site, "db", "copy", "--to", "sqlite:///elsewhere.sqlite3")
    assert result.returncode == 2 and "--to must be a PostgreSQL URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_copy_to_a_malformed_postgresql_url_names_the_option(site: Path) -> None:
    assert run_cli(site, "db", "migrate").returncode == 0  # the SQLite send log to copy
    for url in ("postgresql://newsletter@127.0.0.1:1/news?colour=blue", "postgresql://newsletter@[::1/news"):
        result = run_cli(site, "db", "copy", "--to", url)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "--to" in result.stderr and "NEWSLETTER_DATABASE_URL" not in result.stderr


def test_an_unreadable_database_url_never_shows_its_password(site: Path) -> None:
    for url in ("postgresql://newsletter:pw-s3cr3t%zz@127.0.0.1:1/news", "postgresql://newsletter:pw-s3cr3t@[::1/news"):
        result = run_cli(site, "db", "migrate", env={"NEWSLETTER_DATABASE_URL": url})
        assert result.returncode == 6 and "Traceback" not in result.stderr, result.stderr
        assert "NEWSLETTER_DATABASE_URL" in result.stderr and "s3cr3t" not in result.stderr


def test_migrate_then_copy_the_sqlite_history_into_postgresql(site: Path) -> None:
    base = os.environ.get(PG_URL_ENV)
    if not base:
        pytest.skip(f"no PostgreSQL for the tests: set {PG_URL_ENV}")
    from tests.pg_support import fresh_database

    store = SQLiteStore(site / ".newsletter" / "sendlog.sqlite3")
    seed_send(store)
    store.add_suppression("gone@example.org", reason="bounced", source="test")
    store.close()
    with fresh_database(base) as url:
        migrated = run_cli(site, "db", "migrate", env={"NEWSLETTER_DATABASE_URL": url})
        assert migrated.returncode == 0 and "none pending" in migrated.stdout, migrated.stderr
        copied = run_cli(site, "db", "copy", "--to", url)
        assert copied.returncode == 0, copied.stderr
        assert "1 sends" in copied.stdout and "3 deliveries" in copied.stdout and "1 suppressions" in copied.stdout
        again = run_cli(site, "db", "copy", "--to", url)  # a second copy would mix two histories
        assert again.returncode != 0 and "already holds data" in again.stderr
        status = run_cli(site, "status", "issues/001-hello", "--json", env={"NEWSLETTER_DATABASE_URL": url})
        assert status.returncode == 0 and '"accepted": 3' in status.stdout, status.stderr


def _migrate_and_copy(site: Path, url: str) -> subprocess.CompletedProcess[str]:
    """`db migrate` of the new database at `url`, then `db copy --to` it."""
    assert run_cli(site, "db", "migrate", env={"NEWSLETTER_DATABASE_URL": url}).returncode == 0
    return run_cli(site, "db", "copy", "--to", url)


def test_copy_while_a_send_runs_does_not_lead_to_a_second_copy(site: Path, standin: StandIn,
                                                               pg_database: str) -> None:
    """`db copy` taken while a SQLite send waits for a retry (a 429 with Retry-After): the send then goes on and
    finishes on SQLite, after the copy was verified. Resumed on PostgreSQL, as the copy's message says to, the
    copy must not send again what the SQLite run sent after it: the copy refuses while the send runs (it holds
    the send lock), or the history it copied leaves nothing to send twice."""
    sender, addresses, env = _send_waiting_for_a_retry(site, standin)
    copied = _migrate_and_copy(site, pg_database)
    _, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    assert standin.recipients() == dict.fromkeys(addresses, 1)
    if copied.returncode != 0:  # refused: the send was running
        assert "Traceback" not in copied.stderr and "running" in copied.stderr, copied.stderr
        return
    resumed = cli(site, "send", ISSUE, "--list", "big", "--yes", env={**env, "NEWSLETTER_DATABASE_URL": pg_database})
    assert resumed.returncode == 0, resumed.stderr
    assert standin.recipients() == dict.fromkeys(addresses, 1)  # nobody twice



def test_copy_refused_while_a_send_runs_copies_nothing_and_names_the_send(site: Path, standin: StandIn,
                                                                         pg_database: str) -> None:
    """The refusal names the send and its process, copies nothing (the target stays empty, so the same copy can
    be run again), and once the send has ended the copy goes through."""
    from pipeline.store._postgres import PostgresStore

    sender, _, _ = _send_waiting_for_a_retry(site, standin)
    try:
        copied = _migrate_and_copy(site, pg_database)
        assert copied.returncode == 6, copied.stderr
        assert f"issue 001-hello to list big (pid {sender.pid})" in copied.stderr, copied.stderr
        assert copied.stderr.rstrip().endswith("wait for it to end, or stop it, then run the copy again")
        assert "Traceback" not in copied.stderr and copied.stdout == ""
        target = PostgresStore(pg_database, migrate=False)
        try:
            assert not any(target.table_counts().values())
        finally:
            target.close()
    finally:
        _, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    again = run_cli(site, "db", "copy", "--to", pg_database)
    assert again.returncode == 0 and "6 deliveries" in again.stdout, again.stderr


class _Target(SQLiteStore):
    """A SQLite target (the copy reads the Store interface only) that runs `during` at its first load."""

    during: Callable[[], None] = staticmethod(lambda: None)

    def load(self, table: str, columns: list[str], rows: list[tuple[object, ...]]) -> None:
        during, self.during = self.during, lambda: None
        during()
        super().load(table, columns, rows)


def test_copy_holds_the_lock_of_every_send_until_it_is_done(tmp_path: Path) -> None:
    source = SQLiteStore(tmp_path / "source" / "sendlog.sqlite3")
    seed_send(source)
    seed_send(source, list_name="other")
    target = _Target(tmp_path / "target" / "sendlog.sqlite3")
    holders: list[str | None] = []
    target.during = lambda: holders.extend(SendLock(tmp_path / "source", issue="001-hello", list_name=name).take()
                                           for name in ("sample", "other"))
    assert copy_store(source, target)["deliveries"] == 6
    assert holders == [f"{os.getpid()}, newsletter db copy"] * 2  # a send would have been refused, naming it
    assert SendLock(tmp_path / "source", issue="001-hello", list_name="sample").take() is None  # released after


def test_a_send_begun_during_the_copy_is_not_in_it_and_is_named(tmp_path: Path) -> None:
    """The copy reads one snapshot, so the new send's rows are not in it; run on PostgreSQL it would mail its
    list again: the copy says so instead of reporting success."""
    source = SQLiteStore(tmp_path / "source" / "sendlog.sqlite3")
    seed_send(source)
    other = SQLiteStore(source.path)  # another process's connection
    target = _Target(tmp_path / "target" / "sendlog.sqlite3")

    def send_later() -> None:
        seed_send(other, issue="002-later")

    target.during = send_later
    with pytest.raises(StoreError, match="during the copy .*issue 002-later to list sample"):
        copy_store(source, target)
    assert target.table_counts()["sends"] == 1 and target.table_counts()["deliveries"] == 3  # the snapshot's


def _send_waiting_for_a_retry(site: Path, standin: StandIn) -> tuple[subprocess.Popen[str], list[str], dict[str, str]]:
    """`send --list big` (6 readers) as a process of its own, returned once it waits 10 s to retry a 429."""
    config = site / "newsletter.yaml"
    config.write_text(config.read_text("utf-8").replace("retry_budget_seconds: 5", "retry_budget_seconds: 60"),
                      "utf-8")
    addresses = write_list(site, "big", 6)
    standin.retry_after = 10
    standin.script(["ok", "429"])  # batch_size 2: the second batch waits 10 s for its retry
    env = environ(standin.url)
    sender = subprocess.Popen([sys.executable, "-m", "pipeline", "send", ISSUE, "--list", "big", "--yes"], cwd=site,
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    store = SQLiteStore(site / ".newsletter" / "sendlog.sqlite3")
    try:
        deadline = time.monotonic() + 60
        while select(store, "SELECT count(*) FROM batches WHERE state = 'waiting'") != [(1,)]:
            assert time.monotonic() < deadline and sender.poll() is None, "the send never waited for a retry"
            time.sleep(0.02)
    finally:
        store.close()
    return sender, addresses, env


@pytest.mark.parametrize("args", [("status", ISSUE), ("db", "copy", "--to", "postgresql://u@127.0.0.1:1/x")])
def test_without_postgresql_support_a_database_url_is_one_clear_message(site: Path, args: tuple[str, ...]) -> None:
    """psycopg is an extra: a PostgreSQL URL without it installed (here: its import made to fail) says what to
    install, without a traceback."""
    (site / ".newsletter").mkdir()
    SQLiteStore(site / ".newsletter" / "sendlog.sqlite3").close()  # for db copy: a SQLite log to copy
    code = (f"import sys; sys.modules['psycopg'] = None; sys.argv = ['newsletter', *{list(args)!r}]; "
            "from pipeline.cli.main import run; run()")
    env = environ(None, NEWSLETTER_DATABASE_URL="postgresql://u@127.0.0.1:1/x")
    done = subprocess.run([sys.executable, "-c", code], cwd=site, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 6 and "Traceback" not in done.stderr, done.stderr
    assert "PostgreSQL support is not installed" in done.stderr and "[postgresql]" in done.stderr
