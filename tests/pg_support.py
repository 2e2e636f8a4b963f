"""PostgreSQL for the tests: a fresh database per test on the server NEWSLETTER_TEST_PG_URL points at."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit


@contextmanager
def fresh_database(base_url: str) -> Iterator[str]:
    """CREATE DATABASE with a unique name, yield its URL, DROP it (closing its connections) afterwards."""
    import psycopg

    name = f"nl_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(base_url)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    try:
        yield url
    finally:
        with psycopg.connect(base_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
