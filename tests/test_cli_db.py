"""`newsletter db migrate` and `db copy`: real subprocesses, as an operator moves a newsletter to PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.store._sqlite import SQLiteStore
from tests.conftest import PG_URL_ENV, run_cli
from tests.storekit import seed_send


def test_copy_refuses_what_is_not_a_postgresql_url(site: Path) -> None:
    result = run_cli(site, "db", "copy", "--to", "sqlite:///elsewhere.sqlite3")
    assert result.returncode == 2 and "--to must be a PostgreSQL URL" in result.stderr
    assert "Traceback" not in result.stderr


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
