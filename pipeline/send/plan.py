"""What a send is asked to do, what it will do, and what it did: plain values, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pipeline.errors import Problem


@dataclass(frozen=True, kw_only=True, slots=True)
class SendOptions:
    list_name: str
    outbox: Path | None = None
    test_address: str | None = None
    at: str | None = None
    resend_in_doubt: bool = False
    skip_invalid: bool = False
    allow_changed_content: bool = False
    language: str | None = None  # a test copy's edition (else the list's first row's)
    resend_cancelled: bool = False  # send again what a cancelled scheduled send had (a new batch id)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What the send will do; the confirmation shows it."""

    issue: str
    subject: str
    list_name: str
    sender: str
    transport: str  # sendgrid | outbox
    test_address: str | None
    listed: int  # valid, unsuppressed recipients in the list now
    to_send: int  # what this run will send
    accepted: int  # sent by earlier runs
    in_doubt: int
    resumed: bool
    send_at: int | None
    content_hash: str
    problems: tuple[Problem, ...] = ()  # warnings: build warnings, skipped rows
    editions: tuple[str, ...] = ()  # the issue's editions (languages), the default first; a test copy: its one


@dataclass(kw_only=True)
class Summary:
    accepted: int = 0
    in_doubt: int = 0
    failed: int = 0
    requests: int = 0
    finished: bool = False
    seconds: float = 0.0
    remaining: dict[str, int] = field(default_factory=dict)
    #: Per edition (language), the send log's deliveries after the run: accepted, pending, in_doubt, failed.
    editions: dict[str, dict[str, int]] = field(default_factory=dict)


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, sent: int) -> None: ...
    def note(self, message: str) -> None: ...
