"""The store: every SQL statement of the product, behind one interface with two engines.

    store = open_store(config)          # SQLite in .newsletter/, or PostgreSQL if NEWSLETTER_DATABASE_URL is set
    send = store.find_send(issue="027-2022-04-01", list_name="sample", transport="sendgrid")
    store.counts(send.id)               # {"pending": ..., "accepted": ..., ...}

SQLite (the default) needs nothing set up and applies its migrations when opened. PostgreSQL (psycopg 3,
the `postgresql` extra) is for a team: sends from several machines, any number of `serve` instances; its
migrations are applied by `newsletter db migrate` and checked when a store is opened.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipeline.store._types import (
    OUTCOME_RANK,
    REASONS,
    SCHEDULE_STATES,
    STATES,
    TO_SEND,
    Claim,
    DeliveryRow,
    Erased,
    EventCounts,
    EventRecord,
    Finish,
    ListRow,
    Match,
    Outcomes,
    Peeked,
    Schedule,
    Send,
    SendLockHandle,
    Store,
    Suppression,
    erased_marker,
    now,
)

if TYPE_CHECKING:
    from pipeline.config import Config

DATABASE_URL_ENV = "NEWSLETTER_DATABASE_URL"

__all__ = ["DATABASE_URL_ENV", "OUTCOME_RANK", "REASONS", "STATES", "TO_SEND", "Claim", "DeliveryRow", "EventCounts",
           "EventRecord", "Finish", "ListRow", "Match", "Peeked", "Send", "Store", "Suppression", "database_url", "now",
           "open_store"]
__all__ += ["SCHEDULE_STATES", "Outcomes", "Schedule"]
__all__ += ["SendLockHandle"]
__all__ += ["Erased", "erased_marker"]


def database_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The PostgreSQL URL from the environment (it holds a password: never from a file), or None."""
    url = (os.environ if environ is None else environ).get(DATABASE_URL_ENV, "").strip()
    return url or None


def readable_url(url: str) -> bool:
    """Whether libpq can read `url` (its own error would quote the URL, password and all). True without
    psycopg installed: `open_store` then says what to install."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return True
    try:
        conninfo_to_dict(url)
    except psycopg.Error:
        return False
    return True


def open_store(config: Config, *, environ: Mapping[str, str] | None = None, url: str | None = None,
               migrate: bool = False) -> Store:
    """The store the environment chooses: PostgreSQL at NEWSLETTER_DATABASE_URL (or `url`), else the SQLite
    file in the newsletter's state folder. `migrate` applies pending PostgreSQL migrations instead of
    refusing to start with them."""
    url = url or database_url(environ)
    if url:
        try:
            from pipeline.store._postgres import PostgresStore
        except ImportError:  # psycopg is an extra
            from pipeline.errors import StoreError

            raise StoreError("a PostgreSQL database is named, but PostgreSQL support is not installed — install "
                             "it with pip install 'newsletter-pipeline[postgresql]', or unset "
                             f"{DATABASE_URL_ENV} to use the SQLite file") from None
        return PostgresStore(url, migrate=migrate)
    from pipeline.store._sqlite import SQLiteStore

    return SQLiteStore(config.sendlog_path, state_dir=config.state_dir)
