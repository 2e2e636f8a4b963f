"""`suppressions sync`: pull SendGrid's suppression lists into the send log's one suppression store.

A team that also uses SendGrid's own unsubscribe pages, or whose mail bounced before the webhook was set
up, stays consistent: whatever SendGrid will not deliver to, `send` does not even try. Sync only adds
(the first reason for an address is kept); removing an address here does not remove it at SendGrid, so
the next sync brings it back until it is removed there as well.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any

from email_validator import EmailNotValidError, validate_email

from pipeline import keys
from pipeline.errors import ConfigError, SendError
from pipeline.store import Store

API_KEY_ENV = keys.API_KEY_ENV
API_HOST_ENV = "SENDGRID_API_HOST"  # only to point the client at a stand-in in tests
DEFAULT_HOST = "https://api.sendgrid.com"
PAGE_SIZE = 500  # the largest page SendGrid's suppression endpoints return
MAX_PAGES = 10_000  # 5 million addresses per list: a server ignoring `offset` cannot loop us forever


@dataclass(frozen=True)
class Kind:
    name: str
    path: tuple[str, ...]  # under /v3
    reason: str  # the send log's suppression reason


KINDS = (
    Kind("bounces", ("suppression", "bounces"), "bounced"),
    Kind("blocks", ("suppression", "blocks"), "blocked"),
    Kind("spam_reports", ("suppression", "spam_reports"), "complained"),
    Kind("invalid_emails", ("suppression", "invalid_emails"), "invalid"),
    Kind("unsubscribes", ("suppression", "unsubscribes"), "unsubscribed"),
    Kind("group_unsubscribes", ("asm", "suppressions"), "unsubscribed"),
)


class SyncError(SendError):
    """SendGrid did not answer a suppression request usefully."""


@dataclass
class SyncResult:
    fetched: dict[str, int] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)


Fetch = Callable[[Kind, int, int], list[dict[str, Any]]]  # (kind, limit, offset) -> one page


def client_fetch(environ: Mapping[str, str] = os.environ, *, timeout: float = 30.0) -> Fetch:
    """A page fetcher using the `sendgrid` client with SENDGRID_API_KEY (and SENDGRID_API_HOST if set)."""
    from python_http_client.exceptions import HTTPError
    from sendgrid import SendGridAPIClient

    key = keys.from_env(API_KEY_ENV, ConfigError, environ=environ, ascii_only=True)
    if not key:
        raise ConfigError(f"{API_KEY_ENV} is not set — create an API key with read access to Suppressions in "
                          f"SendGrid and export {API_KEY_ENV}=<key>")
    # python_http_client logs request headers (the key) and response bodies (the addresses) at DEBUG: never let it.
    logging.getLogger("python_http_client").setLevel(logging.WARNING)
    client = SendGridAPIClient(api_key=key, host=environ.get(API_HOST_ENV, DEFAULT_HOST).rstrip("/"))
    client.client.timeout = timeout

    def fetch(kind: Kind, limit: int, offset: int) -> list[dict[str, Any]]:
        endpoint = client.client
        for part in kind.path:
            endpoint = endpoint._(part)
        where = "/v3/" + "/".join(kind.path)
        try:
            response = endpoint.get(query_params={"limit": limit, "offset": offset})
            data = json.loads(response.body or b"[]")
        except HTTPError as exc:
            detail = (exc.body or b"").decode("utf-8", "replace").replace(key, "[key]")[:300]
            hint = "check that the key may read Suppressions" if exc.status_code in (401, 403) else "try again later"
            raise SyncError(f"SendGrid answered {exc.status_code} to GET {where}: {detail} — {hint}") from None
        except (urllib.error.URLError, HTTPException, TimeoutError, OSError) as exc:
            raise SyncError(f"GET {where} failed ({exc}) — check the network and try again") from None
        except ValueError:
            raise SyncError(f"GET {where} did not answer JSON — try again later") from None
        if not isinstance(data, list):
            raise SyncError(f"GET {where} answered {type(data).__name__}, not a list — try again later")
        return [item for item in data if isinstance(item, dict)]

    return fetch


def fetch_all(fetch: Fetch, kind: Kind, *, page_size: int = PAGE_SIZE) -> list[dict[str, Any]]:
    """Every entry of one list, page by page, until a short page."""
    entries: list[dict[str, Any]] = []
    for number in range(MAX_PAGES):
        page = fetch(kind, page_size, number * page_size)
        entries += page
        if len(page) < page_size:
            return entries
    raise SyncError(f"{kind.name}: more than {MAX_PAGES} pages — the server may ignore `offset`")


def sync(store: Store, fetch: Fetch, *, group_id: int | None = None,
         page_size: int = PAGE_SIZE) -> SyncResult:
    """Fetch every list first (no transaction open during the network), then add them (a transaction per kind).

    Group suppressions count only for our unsubscribe group when one is configured (other groups are other
    mail streams); without one, every group's count, as the careful choice.
    """
    pulled: list[tuple[Kind, list[dict[str, Any]]]] = []
    for kind in KINDS:
        entries = fetch_all(fetch, kind, page_size=page_size)
        if kind.name == "group_unsubscribes" and group_id is not None:
            entries = [e for e in entries if str(e.get("group_id")) == str(group_id)]
        pulled.append((kind, entries))
    result = SyncResult()
    for kind, entries in pulled:
        by_source: dict[str, list[tuple[str, str]]] = {}
        for entry in entries:
            email = entry.get("email")
            if not isinstance(email, str) or "@" not in email:
                continue
            source = f"sendgrid {kind.name}"
            if kind.name == "group_unsubscribes":
                source += f" group {entry.get('group_id')}"
            by_source.setdefault(source, []).append((email, kind.reason))
        result.fetched[kind.name] = len(entries)
        # a transaction per kind and source: a sync that stops halfway has added only suppressions, and the
        # next one adds the rest
        result.added[kind.name] = sum(store.add_suppressions(found, source=source)
                                      for source, found in by_source.items())
    return result


def normalise_address(text: str) -> str:
    """A syntactically valid address for `suppressions add|remove` (no DNS lookup)."""
    try:
        return str(validate_email(text.strip(), check_deliverability=False).normalized)
    except EmailNotValidError as exc:
        raise ConfigError(f"{text!r} is not an email address ({exc}) — pass one address, e.g. ada@example.org") \
            from None
