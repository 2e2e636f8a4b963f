"""What `newsletter status` reports: per list, the delivery counts (in all and per edition), send times and
build hash of an issue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.store import database_url, open_store

COUNTED = ("accepted", "pending", "in_doubt", "failed")


def by_edition(found: dict[str, dict[str, int]], default: str) -> dict[str, dict[str, int]]:
    """`Store.edition_counts` as reported: per edition, the COUNTED states (`pending` includes in flight);
    rows recorded before editions ('') are the default edition's."""
    report: dict[str, dict[str, int]] = {}
    for edition, counts in found.items():
        entry = report.setdefault(edition or default, dict.fromkeys(COUNTED, 0))
        for state in COUNTED:
            entry[state] += counts[state] + (counts["in_flight"] if state == "pending" else 0)
    return dict(sorted(report.items()))


def default_language(config: Config, issue_dir: Path) -> str:
    """The issue's default edition, or the newsletter's language if the issue cannot be read now."""
    from pipeline.build.editions import load_editions

    try:
        return load_editions(issue_dir, config).default.language
    except PipelineError:
        return config.language


def issue_status(config: Config, issue_dir: Path) -> dict[str, Any]:
    """`{"issue", "lists": {name: {accepted, pending, in_doubt, failed, ...}}, "outbox": {...}}`.

    `pending` includes deliveries in flight (a send is running); real sends are under `lists`, outbox
    runs (files, not mail) under `outbox`. In-doubt addresses are listed: this is for the operator.
    `editions` counts the same per edition: who got (or is to get) which language.
    """
    slug = issue_dir.resolve().name
    report: dict[str, Any] = {"issue": slug, "lists": {}, "outbox": {}}
    if not database_url() and not config.sendlog_path.exists():
        return report
    store = open_store(config)
    try:
        for send in store.sends_of_issue(slug):
            counts = store.counts(send.id)
            first, last = store.send_times(send.id)
            entry: dict[str, Any] = {
                "accepted": counts["accepted"],
                "pending": counts["pending"] + counts["in_flight"],
                "in_doubt": counts["in_doubt"],
                "failed": counts["failed"],
                "suppressed": counts["suppressed"],
                "removed": counts["removed"],
                "first_sent_at": first,
                "last_sent_at": last,
                "content_hash": send.content_hash,
                "subject": send.subject,
                "started_at": send.created_at,
                "finished_at": send.finished_at,
                "send_at": int(send.send_at) if send.send_at else None,
                "send_id": send.id,
                "in_doubt_recipients": store.in_doubt_addresses(send.id),
            }
            found = store.edition_counts(send.id)
            entry["editions"] = by_edition(found, default_language(config, issue_dir) if "" in found else "")
            schedule = store.schedule(send.id)  # issue 12: the batch id, paused / cancelled and when
            entry.update(batch_id=schedule.batch_id, schedule_state=schedule.state,
                         schedule_changed_at=schedule.changed_at)
            report["outbox" if send.transport == "outbox" else "lists"][send.list_name] = entry
    finally:
        store.close()
    return report
