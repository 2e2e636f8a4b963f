"""Helpers for the send tests: lists, environments, a send run in-process or as a real subprocess."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.config import load_config
from pipeline.send.job import SendJob
from pipeline.send.plan import SendOptions, Summary
from pipeline.store import Send, Store

REPO = Path(__file__).resolve().parent.parent
KEY = "SG.test-key-4f9a1c7e-never-print-me"
SECRET = "test-secret-9b2d0e5c-never-print-me"
ISSUE = "issues/001-hello"


def write_list(site: Path, name: str, count: int, *, start: int = 0, extra: str = "") -> list[str]:
    """subscribers/NAME.csv with `count` valid rows (plus raw `extra` text); returns the addresses."""
    addresses = [f"person{i:05d}@example.org" for i in range(start, start + count)]
    path = site / "subscribers" / f"{name}.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "name", "city"])
        for i, address in enumerate(addresses, start=start):
            writer.writerow([address, f"Person {i}", f"City {i % 7}"])
        f.write(extra)
    return addresses


def environ(url: str | None, **extra: str) -> dict[str, str]:
    """A clean environment for a send: only 127.0.0.1, never a real SendGrid host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDGRID_", "NEWSLETTER_"))}
    env["SENDGRID_API_HOST"] = url or "http://127.0.0.1:9"
    env["SENDGRID_API_KEY"] = KEY
    env["NEWSLETTER_SECRET"] = SECRET
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


class Quiet:
    """A Progress that remembers what it was told."""

    def __init__(self) -> None:
        self.total = self.sent = 0
        self.notes: list[str] = []

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, sent: int) -> None:
        self.sent += sent

    def note(self, message: str) -> None:
        self.notes.append(message)


class Sleeps(list[float]):
    """A sleep() that only records how long it was asked to wait: tests never wait on a clock."""

    now = 0.0  # a clock that only these sleeps move: `clock=sleeps.clock`

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def send(site: Path, env: Mapping[str, str], *, sleep: Sleeps | None = None, list_name: str = "sample",
         issue: str = ISSUE, **options: Any) -> Summary:
    """prepare() + run() in this process, as the CLI does after the confirmation."""
    sleeps = sleep if sleep is not None else Sleeps()
    with SendJob(site / issue, load_config(site), SendOptions(list_name=list_name, **options), environ=env,
                 sleep=sleeps, clock=sleeps.clock) as job:
        job.prepare()
        return job.run(Quiet())


def cli(site: Path, *args: str, env: Mapping[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline ARGS` in the site folder, as a user runs it (no terminal: stdin is closed)."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=site, env=dict(env), text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)


def recorded_send(store: Store, n: int = 5) -> Send:
    """A send of issue 001 to list `sample` with n recipients r0..r{n-1}@example.org, recorded and pending."""
    send = store.create_send(issue="001", list_name="sample", transport="sendgrid",
                               content_hash="h1", subject="Hello")
    store.add_recipients(send.id, [(f"r{i}@example.org", f"R {i}", None) for i in range(n)])
    return send
