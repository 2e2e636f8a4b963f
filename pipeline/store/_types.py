"""The store's values and its interface: what every engine offers, as plain data and named methods."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, Self

STATES = ("pending", "in_flight", "accepted", "in_doubt", "failed", "suppressed", "removed")
TO_SEND = ("pending", "failed")  # certainly not sent: what a run sends
# How far a delivery got; a later event never moves it back (events arrive out of order).
OUTCOME_RANK = {"processed": 1, "deferred": 2, "delivered": 3, "bounce": 4, "dropped": 4}
REASONS = ("unsubscribed", "bounced", "blocked", "invalid", "complained", "manual")

DeliveryRow = tuple[int, str, str, str | None]  # (delivery id, email, name, merge fields as JSON or None)
# (email, name, merge fields as JSON or None[, edition]): the language of the edition the recipient gets; without
# it (or '') the default edition's
ListRow = tuple[str, str, str | None] | tuple[str, str, str | None, str]
Editions = Sequence[str] | None  # a batch filter: the editions whose deliveries to take (None: all)


def erased_marker(email: str) -> str:
    """What the store keeps of an erased address: SHA-256 (hex) of it stripped and lower-cased. It cannot be read
    back, only matched: a list row, a webhook event or a suppression of that address is recognised by it."""
    return hashlib.sha256(email.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()


def now() -> str:
    """UTC timestamps as ISO 8601 text, to the millisecond."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, kw_only=True, slots=True)
class Send:
    id: int
    issue: str
    list_name: str
    transport: str
    content_hash: str
    subject: str
    send_at: str | None
    created_at: str
    finished_at: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Suppression:
    email: str
    reason: str
    source: str
    created_at: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    """A batch whose intent is committed: its deliveries are `in_flight` before the request is made."""

    id: int
    request_id: str
    rows: list[DeliveryRow]  # in delivery id order
    deferred: bool = False  # SQLite: the rows were left untouched, the batch row holds their state

    @property
    def first(self) -> int:
        return self.rows[0][0]

    @property
    def last(self) -> int:
        return self.rows[-1][0]

    def without(self, ids: set[int]) -> Claim:
        """The same batch without the deliveries `ids` (readers suppressed while it waited for a retry)."""
        return Claim(id=self.id, request_id=self.request_id, rows=[row for row in self.rows if row[0] not in ids])


@dataclass(frozen=True, kw_only=True, slots=True)
class Finish:
    """A request's outcome to record: `accepted`, `in_doubt` or `failed` (its deliveries go back to be sent)."""

    claim: Claim
    state: str
    attempts: int
    http_status: int | None = None
    message_id: str | None = None
    error: str | None = None


@dataclass(slots=True)
class Peeked:
    """Rows read ahead of their claim; `version` lets the engine tell whether anything changed since."""

    rows: list[DeliveryRow]
    after: int  # the rows are the next ones to send after this delivery id
    version: int


@dataclass(frozen=True)
class Match:
    """The delivery an event or an unsubscribe click belongs to."""

    send_id: int
    delivery_id: int
    issue: str
    list_name: str


@dataclass(frozen=True, kw_only=True, slots=True)
class EventRecord:
    """One event to store, with what applying it means already decided by the caller (pipeline.web.app)."""

    key: str  # content-based: the same event posted twice is stored once
    event: str
    status: str  # applied | unknown_type | unmatched | invalid; `applied` still needs a matching delivery
    source: str  # webhook | link
    email: str | None
    send_id: Any  # as the event carried it (custom_args are text): matched against the send log
    issue: str | None
    list_name: str | None
    occurred_at: int | None
    url: str | None
    payload: str  # JSON, without the fields we do not keep
    outcome: str | None = None  # processed/deferred/delivered/bounce/dropped: the delivery's furthest outcome
    suppress: tuple[str, str] | None = None  # (reason, source) when the address must not be mailed again
    lifts_group_unsubscribe: bool = False  # group_resubscribe: undo what a group_unsubscribe event added


@dataclass(frozen=True, kw_only=True, slots=True)
class EventCounts:
    """Per list of one issue: events counted for the report."""

    recipients: int
    accepted: int
    distinct: dict[str, int]  # event kinds (comma-joined key) -> distinct addresses
    opens: int
    unique_clicks: int
    links: list[tuple[str, int, int]]  # url, clicks, distinct clickers; most clicked first


@dataclass(frozen=True, kw_only=True, slots=True)
class Erased:
    """Where the store holds one address (`find_address`), or what `erase_address` changed there: counts only.

    `sends` are (issue, list, transport) of the sends with a delivery to it; `marked` is whether its erased
    marker was there before (`find_address`: the address was erased already)."""

    deliveries: int = 0
    sends: tuple[tuple[str, str, str], ...] = ()
    events: int = 0
    suppressions: int = 0
    rejects: int = 0
    batch_errors: int = 0  # SendGrid error texts of requests that quote the address
    marked: bool = False

    @property
    def total(self) -> int:
        return self.deliveries + self.events + self.suppressions + self.rejects + self.batch_errors


class Store(Protocol):
    """Everything the product keeps between runs. Engines: SQLite (`_sqlite`), PostgreSQL (`_postgres`)."""

    engine: str  # "sqlite" | "postgresql"
    where: str  # for messages: the file, or the database URL without its password

    def close(self) -> None: ...
    def applied_migrations(self) -> list[str]: ...
    def migrate(self) -> list[str]: ...
    def lock(self, *, issue: str, list_name: str) -> SendLockHandle: ...
    def sending(self) -> AbstractContextManager[None]: ...

    # sends
    def find_send(self, *, issue: str, list_name: str, transport: str) -> Send | None: ...
    def sends_of_issue(self, issue: str) -> list[Send]: ...
    def create_send(self, *, issue: str, list_name: str, transport: str, content_hash: str, subject: str,
                    send_at: str | None = None) -> Send: ...
    def update_send(self, send_id: int, *, content_hash: str, subject: str, send_at: str | None) -> None: ...
    def delete_send(self, send_id: int) -> None: ...
    def finish_send(self, send_id: int) -> None: ...
    def sent_issues(self) -> set[str]: ...

    # recipients
    def add_recipients(self, send_id: int, rows: Iterable[ListRow]) -> int: ...
    def sync_recipients(self, send_id: int, rows: Iterable[ListRow]) -> int: ...
    def recover_in_flight(self, send_id: int) -> int: ...
    def counts(self, send_id: int) -> dict[str, int]: ...
    def in_doubt_addresses(self, send_id: int) -> list[str]: ...
    def send_times(self, send_id: int) -> tuple[str | None, str | None]: ...

    # batches: intent before the request, outcome after
    def peek_batch(self, send_id: int, *, size: int, after: int = 0, states: Sequence[str] = TO_SEND,
                   editions: Editions = None) -> Peeked: ...
    def claim_batch(self, send_id: int, *, size: int, after: int = 0, states: Sequence[str] = TO_SEND,
                    request_id: str, finished: Sequence[Finish] = (), editions: Editions = None,
                    send_at: int | None = None) -> Claim | None: ...
    def claim_peeked(self, send_id: int, peeked: Peeked, *, states: Sequence[str] = TO_SEND, request_id: str,
                     finished: Sequence[Finish] = (), editions: Editions = None,
                     send_at: int | None = None) -> Claim | None: ...
    def record(self, finished: Sequence[Finish]) -> None: ...
    def mark_waiting(self, claim: Claim, *, attempts: int, http_status: int | None, error: str) -> None: ...
    # None: no longer waiting (another run took the send); else the claim without readers suppressed meanwhile
    def mark_in_flight(self, claim: Claim) -> Claim | None: ...

    # suppressions
    def add_suppression(self, email: str, *, reason: str, source: str) -> bool: ...
    def add_suppressions(self, found: Iterable[tuple[str, str]], *, source: str) -> int: ...
    def remove_suppression(self, email: str) -> bool: ...
    def list_suppressions(self) -> list[Suppression]: ...
    def is_suppressed(self, email: str) -> bool: ...
    def suppressed_set(self) -> set[str]: ...

    # erasure on request: `erase_address` in one transaction, with the locks of the sends it touches held
    def find_address(self, email: str) -> Erased: ...
    def erase_address(self, email: str, *, leave_no_copy: bool = True) -> Erased: ...
    def leave_no_copy(self) -> None: ...  # old bytes out of the files, once after erase_address(leave_no_copy=False)
    # empty (one cheap query) while nobody was erased; for a send, also readers readmitted since it was created
    def erased_markers(self, send_id: int | None = None) -> set[str]: ...
    def readmit(self, email: str) -> bool: ...  # the erase lifted on the reader's new request; False: not erased
    def is_erased(self, email: str) -> bool: ...
    def recorded_erased(self, send_id: int, markers: set[str]) -> list[str]: ...

    # events
    def record_events(self, events: Sequence[EventRecord]) -> list[tuple[str, bool]]: ...
    def record_reject(self, body: bytes, reason: str) -> None: ...
    def link_unsubscribe(self, *, email: str, list_name: str, issue: str) -> bool: ...
    def link_resubscribe(self, *, email: str,
                         reason_of: Callable[[Mapping[str, Any]], tuple[str, str] | None] | None = None,
                         ) -> tuple[bool, str | None]: ...
    def event_counts(self, send: Send, counted: dict[str, tuple[str, ...]]) -> EventCounts: ...
    def event_times(self, issue: str) -> list[tuple[int, str]]: ...

    # moving a store's contents to another (`newsletter db copy`)
    def dump(self, table: str) -> Iterator[tuple[list[str], list[tuple[object, ...]]]]: ...
    def load(self, table: str, columns: list[str], rows: list[tuple[object, ...]]) -> None: ...
    def table_counts(self) -> dict[str, int]: ...

    # editions
    def edition_counts(self, send_id: int) -> dict[str, dict[str, int]]: ...
    # stopping a send: the batch id, paused / cancelled, the webhook's rates (issue 12)
    def schedule(self, send_id: int) -> Schedule: ...
    def set_batch_id(self, send_id: int, batch_id: str | None) -> None: ...
    def set_schedule_state(self, send_id: int, state: str | None) -> None: ...
    def held_counts(self, send_id: int, *, stopped_at: int, margin: int) -> tuple[int, int, int]: ...
    def reopen_cancelled(self, send_id: int, *, stopped_at: int, margin: int) -> None: ...
    def outcomes(self, send: Send, *, after_event: int = 0) -> Outcomes: ...
    def previous_send(self, send: Send) -> Send | None: ...


# --- stopping a send (issue 12) ---------------------------------------------------------------------------

# Signed webhook bodies we could not read are kept for a look, the newest this many (each up to 5 MiB, and they
# may hold readers' addresses and IPs): SendGrid retries a refused post, so a bug would fill the disk.
MAX_REJECTS = 100
SCHEDULE_STATES = ("paused", "cancelled")  # what SendGrid's scheduled-sends API holds for a send's batch id


@dataclass(frozen=True, kw_only=True, slots=True)
class Schedule:
    """A send's SendGrid batch id and what was asked of it: `state` paused / cancelled / None, and when."""

    batch_id: str | None
    state: str | None
    changed_at: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcomes:
    """Webhook events of one send counted so far (`last_event` is where the next count goes on from)."""

    delivered: int = 0
    bounced: int = 0
    complaints: int = 0
    last_event: int = 0

    def plus(self, other: Outcomes) -> Outcomes:
        return Outcomes(delivered=self.delivered + other.delivered, bounced=self.bounced + other.bounced,
                        complaints=self.complaints + other.complaints,
                        last_event=max(self.last_event, other.last_event))



# --- the send lock ----------------------------------------------------------------------------------------


class SendLockHandle(Protocol):
    """What `Store.lock` gives: held from `with` (or `__enter__`) to its end. `held()` is asked by the send
    loop before every claim: a PostgreSQL lock ends with its connection, which can die while the process
    lives; SQLite's file lock cannot be lost while the process lives. Cheap enough to ask per batch."""

    def __enter__(self) -> Self: ...
    def __exit__(self, *_: object) -> None: ...
    def held(self) -> bool: ...
