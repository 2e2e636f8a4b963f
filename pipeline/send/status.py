"""What `newsletter status` reports: per list, the delivery counts, send times and build hash of an issue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.store import database_url, open_store

COUNTED = ("accepted", "pending", "in_doubt", "failed")


def issue_status(config: Config, issue_dir: Path) -> dict[str, Any]:
    """`{"issue", "lists": {name: {accepted, pending, in_doubt, failed, ...}}, "outbox": {...}}`.

    `pending` includes deliveries in flight (a send is running); real sends are under `lists`, outbox
    runs (files, not mail) under `outbox`. In-doubt addresses are listed: this is for the operator.
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
            schedule = store.schedule(send.id)  # issue 12: the batch id, paused / cancelled and when
            entry.update(batch_id=schedule.batch_id, schedule_state=schedule.state,
                         schedule_changed_at=schedule.changed_at)
            report["outbox" if send.transport == "outbox" else "lists"][send.list_name] = entry
    finally:
        store.close()
    return report
