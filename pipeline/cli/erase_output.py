"""What `newsletter subscribers erase` prints: what was found, what was erased, and its `--json`.

The output echoes the addresses the operator typed (on their own terminal); nothing of them is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from pipeline.lists.erasure import Traces
from pipeline.store import Erased

SENDGRID_NOTE = ("SendGrid keeps its own copies (its suppression lists, its activity): erase the address there too "
                 "(Suppressions and Activity in its UI, or its API)")


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def store_line(erased: Erased) -> str:
    sends = ", ".join(f"{issue} to {name}{' (outbox)' if transport == 'outbox' else ''}"
                      for issue, name, transport in erased.sends)
    parts = (f"{_plural(erased.deliveries, 'delivery', 'deliveries')} in {_plural(len(erased.sends), 'send')}"
             + (f" ({sends})" if sends else ""), _plural(erased.events, "event"),
             _plural(erased.suppressions, "suppression"),
             _plural(erased.rejects, "kept webhook body", "kept webhook bodies") + " holding it",
             _plural(erased.batch_errors, "request error") + " quoting it")
    return "send log: " + ", ".join(parts)


def _list_lines(traces: Traces) -> list[str]:
    return [f"{found.path}:{line}{' (tracked by git)' if found.tracked else ''}"
            for found in traces.lists for line in found.lines]


def show_found(found: Sequence[Traces], *, err: bool) -> None:
    """Per address, every place that holds it, before the question."""
    for traces in found:
        click.echo(f"{traces.address}", err=err)
        click.echo(f"  {store_line(traces.store)}", err=err)
        rows = _list_lines(traces)
        click.echo(f"  subscriber lists: {_plural(len(rows), 'row')}", err=err)
        for row in rows:
            click.echo(f"    {row}", err=err)
        for mail in traces.outbox:
            click.echo(f"  outbox: {mail}", err=err)
        if traces.store.marked:
            click.echo("  erased before: its marker is kept already", err=err)
        elif not traces.store.total and not rows and not traces.outbox:
            click.echo("  found nowhere; erasing keeps its marker, so that no list mails it", err=err)


def show_erased(done: Sequence[Traces], *, err: bool) -> None:
    """What was erased, then what this command cannot erase."""
    for traces in done:
        rows = traces.list_rows
        click.echo(f"erased {traces.address}: {store_line(traces.store)}; {_plural(rows, 'list row')} "
                   f"({', '.join(_list_lines(traces)) or 'none'}); {_plural(len(traces.outbox), 'outbox file')}; "
                   "its marker is kept: no list mails it again", err=err)
        for found in traces.lists:
            if found.tracked:
                click.secho(f"warning: {found.path} is tracked by git: its history still holds the erased row(s) — "
                            f"rewriting history is your call, e.g. `git filter-repo --replace-text FILE` with a "
                            f"line '{traces.address}==>erased@example.invalid' in FILE, then a force-push and new "
                            f"clones everywhere", fg="yellow", err=True)
    click.echo(SENDGRID_NOTE, err=err)


def erased_json(done: Sequence[Traces]) -> dict[str, Any]:
    return {"erased": [{
        "address": t.address, "deliveries": t.store.deliveries,
        "sends": [{"issue": i, "list": n, "transport": tr} for i, n, tr in t.store.sends],
        "events": t.store.events, "suppressions": t.store.suppressions, "webhook_rejects": t.store.rejects,
        "request_errors": t.store.batch_errors, "erased_before": t.store.marked,
        "list_rows": [{"file": str(f.path), "line": line, "tracked_by_git": f.tracked}
                      for f in t.lists for line in f.lines],
        "outbox_files": [str(p) for p in t.outbox]} for t in done]}
