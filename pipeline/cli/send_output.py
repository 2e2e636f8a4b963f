"""What `newsletter send` shows: the plan, the progress, the summary (text or JSON), and what Ctrl-C left.

Part of the command line (knows click); the send itself is pipeline.send.job. With `--json` everything but
the summary goes to stderr, the question too.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import click

from pipeline.config import Config
from pipeline.send.plan import Plan, Summary


class Progress:
    """A tqdm bar with counts and ETA on a terminal; plain log lines (every 10 %) otherwise."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.total = self.done = self.step = 0

    def start(self, total: int) -> None:
        self.total, self.step = total, max(1, total // 10)
        if sys.stderr.isatty() and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="rcpt", file=sys.stderr, dynamic_ncols=True)

    def advance(self, sent: int) -> None:
        before, self.done = self.done, self.done + sent
        if self.bar is not None:
            self.bar.update(sent)
        elif self.done // self.step != before // self.step or self.done == self.total:
            click.echo(f"sent {self.done}/{self.total}", err=True)

    def note(self, message: str) -> None:
        (self.bar.write if self.bar is not None else lambda m: click.echo(m, err=True))(f"warning: {message}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("pipeline")
    if not logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def show_plan(plan: Plan, outbox: Path | None, *, err: bool) -> None:
    target = f"outbox {outbox}" if outbox else "SendGrid"
    lines = [f"issue:      {plan.issue}", f"subject:    {plan.subject}", f"sender:     {plan.sender}"]
    if plan.test_address:
        lines.append(f"test copy:  to {plan.test_address} via {target} (not logged as a delivery)")
    else:
        lines += [f"list:       {plan.list_name} ({plan.listed} recipients)", f"via:        {target}"]
        if plan.resumed:
            lines.append(f"resuming:   {plan.accepted} already accepted, {plan.in_doubt} in doubt")
        lines.append(f"to send:    {plan.to_send}")
    if len(plan.editions) > 1:
        lines.append(f"editions:   {', '.join(plan.editions)} (each recipient's `language`; else {plan.editions[0]})")
    elif plan.test_address and plan.editions:
        lines.append(f"edition:    {plan.editions[0]}")
    if plan.send_at:
        lines.append(f"scheduled:  {dt.datetime.fromtimestamp(plan.send_at, dt.UTC).isoformat()}")
    click.echo("\n".join(lines), err=err)


def summary_json(plan: Plan, summary: Summary | None) -> dict[str, Any]:
    """The keys documented in the README (Machine-readable output)."""
    done = summary or Summary(remaining={"pending": 0, "failed": 0, "in_doubt": plan.in_doubt})
    return {"issue": plan.issue, "list": plan.list_name, "transport": plan.transport,
            "test_address": plan.test_address, "subject": plan.subject, "listed": plan.listed,
            "already_accepted": plan.accepted, "to_send": plan.to_send,
            "send_at": plan.send_at, "sent": done.accepted, "requests": done.requests,
            "seconds": round(done.seconds, 3), "remaining": done.remaining,
            "finished": done.finished if summary else not plan.in_doubt and plan.to_send == 0,
            "editions": done.editions}


def editions_line(editions: dict[str, dict[str, int]]) -> str:
    """Per edition: `ko: 3 accepted, 0 pending, ...; en: ...` (status and the send summary)."""
    from pipeline.send.status import COUNTED

    return "by edition: " + "; ".join(
        f"{language}: " + ", ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in COUNTED)
        for language, counts in editions.items())


def interrupted(config: Config, plan: Plan, issue_dir: Path, outbox: Path | None, this_run: int,
                by: str = "Ctrl-C") -> str:
    """What Ctrl-C (or SIGTERM) left behind, and that the same command resumes."""
    if plan.test_address:
        return f"interrupted ({by}): the test copy may or may not have gone out; run the same command again"
    if outbox is not None:
        return (f"interrupted ({by}): {this_run} .eml file(s) written to {outbox}. An outbox run always writes "
                "the whole list: run the same command again to write them all")
    from pipeline.send.status import issue_status

    entry = issue_status(config, issue_dir)["lists"].get(plan.list_name, {})
    text = (f"interrupted ({by}): {this_run} recipient(s) accepted by SendGrid in this run, "
            f"{entry.get('accepted', 0)} of {plan.listed} in all")
    if entry.get("in_doubt", 0):
        text += f", {entry['in_doubt']} in doubt (a request got no answer; never sent twice)"
    elif not entry.get("pending", 0) and not entry.get("failed", 0):  # the stop came with the last answer
        return text + ". Nothing is left to send"
    text += ". Run the same command again to resume: it sends only to recipients not accepted yet"
    if entry.get("pending", 0) and this_run < plan.to_send:
        text += (" (if a request was under way, its recipients are put in doubt then, never sent twice; "
                 f"`newsletter status {issue_dir}` lists them)")
    return text


SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
EXIT_CODES = {"Ctrl-C": 130, "SIGTERM": 143}


@contextmanager
def stop_on_signals(request_stop: Callable[[str], None]) -> Iterator[list[str]]:
    """While a send runs, the first Ctrl-C or SIGTERM asks it to stop cleanly (no new request; those under
    way are answered and recorded); a second one ends the process at once, leaving its requests in flight,
    which the next run counts as in doubt. Yields the names of the signals received."""
    received: list[str] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = SIGNAL_NAMES.get(signal.Signals(signum), "a signal")
        if received:
            os.write(2, f"\nstopped at once ({name} again): requests under way were left unanswered; the next run "
                        "counts their recipients as in doubt (`newsletter status` lists them)\n".encode())
            os._exit(EXIT_CODES.get(name, 130))
        received.append(name)
        os.write(2, f"\nstopping ({name}): no new request; waiting for those under way to be answered and "
                    f"recorded — {name} again stops at once\n".encode())
        request_stop(name)

    previous = {signum: signal.signal(signum, handler) for signum in SIGNAL_NAMES}
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
