"""Shared fixtures: small real newsletter folders copied to a temporary place for each test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.store import Store
    from tests.loop_support import Signer
    from tests.standin import StandIn

TESTS = Path(__file__).parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A copy of tests/fixtures/site: newsletter.yaml, the `plain` theme, issue 001-hello, a 3-row list."""
    root = tmp_path / "site"
    shutil.copytree(FIXTURES / "site", root)
    return root


@pytest.fixture
def sample_root(tmp_path: Path) -> Path:
    """A copy of the repository's own newsletter (config, templates, sample issue No. 27, sample list)."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "newsletter.yaml", root)
    for folder in ("templates", "issues", "subscribers"):
        shutil.copytree(REPO / folder, root / folder)
    return root


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess, as a user runs it (python -m pipeline == newsletter)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# --- stores: every store test runs against both engines ------------------------------------------------
# PostgreSQL tests need a server: NEWSLETTER_TEST_PG_URL (`.ci/run` starts a throwaway cluster); without it
# they are skipped, and the SQLite half still runs.

PG_URL_ENV = "NEWSLETTER_TEST_PG_URL"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(engine: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for SQLite; for PostgreSQL a new, empty database of its own, dropped after the test."""
    if engine == "sqlite":
        yield None
        return
    base = os.environ.get(PG_URL_ENV)
    if not base:
        pytest.skip(f"no PostgreSQL for the tests: set {PG_URL_ENV}")
    from pg_support import fresh_database

    with fresh_database(base) as url:
        yield url


@pytest.fixture
def store_env(database_url: str | None) -> dict[str, str]:
    """What a subprocess needs in its environment to use the test's store."""
    return {"NEWSLETTER_DATABASE_URL": database_url} if database_url else {}


@pytest.fixture
def store(tmp_path: Path, database_url: str | None) -> Iterator[Store]:
    """A new, migrated store of the test's engine."""
    from pipeline.store._sqlite import SQLiteStore

    if database_url is None:
        opened: Store = SQLiteStore(tmp_path / "state" / "sendlog.sqlite3")
    else:
        from pipeline.store._postgres import PostgresStore

        opened = PostgresStore(database_url, migrate=True)
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The test PostgreSQL server (NEWSLETTER_TEST_PG_URL; `.ci/run` starts one); skips the test without one."""
    base = os.environ.get(PG_URL_ENV, "").strip()
    if not base:
        pytest.skip(f"no PostgreSQL for the tests: set {PG_URL_ENV}")
    return base


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[str]:
    """PostgreSQL-only tests: the URL of a new, empty database (no migrations applied), dropped after."""
    from pg_support import fresh_database

    with fresh_database(pg_url) as url:
        yield url


# --- a send against the SendGrid stand-in, on the test's engine --------------------------------------------


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A SendGrid stand-in on 127.0.0.1 (a test module may define its own, e.g. with slower answers)."""
    from tests.sendkit import KEY
    from tests.standin import StandIn

    with StandIn(api_key=KEY, retry_after=0, slow_seconds=30) as sg:
        yield sg


@pytest.fixture
def env(standin: StandIn, store_env: dict[str, str]) -> dict[str, str]:
    """The stand-in's address and keys, and the test's engine (migrated): a test that takes it runs on both."""
    from tests.sendkit import environ
    from tests.storekit import migrate

    found = environ(standin.url, **store_env)
    migrate(found)
    return found


# --- `serve` on the test's engine (test_web, test_web_guard) ------------------------------------------------


@pytest.fixture
def config(site: Path) -> Config:
    """The fixture newsletter with a second issue (002-second), which no send has published."""
    from pipeline.config import load_config

    shutil.copytree(FIXTURES / "extra-issues" / "002-second", site / "issues" / "002-second")
    return load_config(site)


@pytest.fixture(scope="module")
def signer() -> Signer:
    from tests.loop_support import Signer

    return Signer()


@pytest.fixture
def server(config: Config, signer: Signer, store_env: dict[str, str]) -> Iterator[tuple[str, Store, int]]:
    """(base URL, the store, send id): issue 001-hello sent to list `sample`; 002-second not sent yet.
    Runs on each engine: the app opens its own stores as `serve` does."""
    from pipeline.web.app import Settings, create_app
    from pipeline.web.webhook import public_key_from_base64
    from tests.loop_support import SECRET, running
    from tests.storekit import seed_send, site_store

    store = site_store(config.root, store_env)
    send_id = seed_send(store)
    settings = Settings(config=config, secret=SECRET, webhook_key=public_key_from_base64(signer.public_base64),
                        open_store=lambda: site_store(config.root, store_env), max_webhook_bytes=64 * 1024)
    try:
        with running(create_app(settings)) as url:
            yield url, store, send_id
    finally:
        store.close()
