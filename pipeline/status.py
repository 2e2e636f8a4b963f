"""What `newsletter status` reports: per list, the delivery counts, send times and build hash of an issue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import sendlog
from pipeline.config import Config

COUNTED = ("accepted", "pending", "in_doubt", "failed")


def issue_status(config: Config, issue_dir: Path) -> dict[str, Any]:
    """`{"issue", "lists": {name: {accepted, pending, in_doubt, failed, ...}}, "outbox": {...}}`.

    `pending` includes deliveries in flight (a send is running); real sends are under `lists`, outbox
    runs (files, not mail) under `outbox`. In-doubt addresses are listed: this is for the operator.
    """
    slug = issue_dir.resolve().name
    report: dict[str, Any] = {"issue": slug, "lists": {}, "outbox": {}}
    if not config.sendlog_path.exists():
        return report
    conn = sendlog.open_sendlog(config.sendlog_path)
    try:
        for send in sendlog.sends_of_issue(conn, slug):
            counts = sendlog.counts(conn, send.id)
            first, last = sendlog.send_times(conn, send.id)
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
                "in_doubt_recipients": sendlog.in_doubt_addresses(conn, send.id),
            }
            report["outbox" if send.transport == "outbox" else "lists"][send.list_name] = entry
    finally:
        conn.close()
    return report
