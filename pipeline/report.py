"""`newsletter report`: what happened to one issue, per list, from the send log and the recorded events.

Counts are of distinct recipients (a message opened five times is one unique open); clicks per link are
given both as clicks and as distinct clickers. The HTML report is one self-contained page: the chart is an
SVG drawn here, so the file opens anywhere without a network.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass, field

from pipeline.errors import PipelineError
from pipeline.store import Store

# Report row -> the events that count for it (distinct recipients).
COUNTED = {"delivered": ("delivered",), "bounced": ("bounce",), "dropped": ("dropped",),
           "spam_reports": ("spamreport",), "unsubscribes": ("unsubscribe", "group_unsubscribe"),
           "unique_opens": ("open",)}
LABELS = {"recipients": "Recipients", "accepted": "Accepted by SendGrid", "delivered": "Delivered",
          "bounced": "Bounced", "dropped": "Dropped", "spam_reports": "Spam reports", "unsubscribes": "Unsubscribes",
          "unique_opens": "Unique opens", "opens": "Opens (all)", "unique_clicks": "Unique clickers"}


@dataclass
class ListReport:
    list_name: str
    counts: dict[str, int] = field(default_factory=dict)
    links: list[tuple[str, int, int]] = field(default_factory=list)  # (url, clicks, distinct clickers)


@dataclass
class Report:
    issue: str
    subject: str
    lists: list[ListReport]
    timeline: list[tuple[int, int, int]]  # (bucket start, unix seconds; opens; clicks) in that bucket


def build_report(store: Store, issue: str) -> Report:
    sends = [s for s in store.sends_of_issue(issue) if s.transport == "sendgrid"]
    if not sends:
        raise PipelineError(f"issue {issue} has no real send in the send log — run `newsletter send` first "
                            "(outbox runs have no events), or check the issue folder's name")
    lists = []
    for send in sends:
        report = ListReport(send.list_name)
        found = store.event_counts(send, COUNTED)
        report.counts["recipients"], report.counts["accepted"] = found.recipients, found.accepted
        report.counts.update(found.distinct)
        report.counts["opens"], report.counts["unique_clicks"] = found.opens, found.unique_clicks
        report.links = found.links
        lists.append(report)
    return Report(issue=issue, subject=sends[0].subject, lists=lists, timeline=_timeline(store, issue))


def _timeline(store: Store, issue: str) -> list[tuple[int, int, int]]:
    """Opens and clicks per hour (per day when the events span more than two weeks), gaps filled with 0."""
    rows = store.event_times(issue)
    if not rows:
        return []
    first, last = rows[0][0], rows[-1][0]
    step = 3600 if last - first <= 14 * 86400 else 86400
    start = first - first % step
    buckets = [[start + i * step, 0, 0] for i in range((last - start) // step + 1)]
    for at, kind in rows:
        buckets[(at - start) // step][1 if kind == "open" else 2] += 1
    return [(b[0], b[1], b[2]) for b in buckets]


def text_report(report: Report) -> str:
    lines = [f"{report.issue}: {report.subject}"]
    for item in report.lists:
        lines += ["", f"list {item.list_name}"]
        lines += [f"  {LABELS[name]:<22}{item.counts[name]:>8}" for name in LABELS]
        if item.links:
            lines.append("  clicks per link (clicks / distinct clickers):")
            lines += [f"    {n:>6} {u:>6}  {url}" for url, n, u in item.links]
    return "\n".join(lines) + "\n"


def _when(stamp: int) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def chart_svg(timeline: list[tuple[int, int, int]], *, width: int = 720, height: int = 260) -> str:
    """Cumulative opens and clicks over time, as an inline SVG with axes, labels and a legend."""
    if not timeline:
        return "<p>No opens or clicks recorded yet.</p>"
    left, right, top, bottom = 56, 16, 28, 44
    # Points at bucket ends, from 0 at the first bucket's start: the curves start at the origin.
    opens, clicks, total_o, total_c = [0], [0], 0, 0
    for _, o, c in timeline:
        total_o, total_c = total_o + o, total_c + c
        opens.append(total_o)
        clicks.append(total_c)
    peak = max(total_o, total_c, 1)
    span = len(timeline)
    step = timeline[1][0] - timeline[0][0] if len(timeline) > 1 else 3600

    def point(i: int, value: int) -> str:
        x = left + (width - left - right) * i / span
        y = top + (height - top - bottom) * (1 - value / peak)
        return f"{x:.1f},{y:.1f}"

    def line(values: list[int], colour: str, name: str) -> str:
        points = " ".join(point(i, v) for i, v in enumerate(values))
        return (f'<polyline class="{name}" fill="none" stroke="{colour}" stroke-width="2.5" points="{points}">'
                f"<title>{name}: {values[-1]}</title></polyline>")

    base_y, end_x = height - bottom, width - right
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="Cumulative opens and clicks over time" font-family="system-ui,sans-serif" '
        'font-size="12">',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base_y}" stroke="#888"/>',
        f'<line x1="{left}" y1="{base_y}" x2="{end_x}" y2="{base_y}" stroke="#888"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{base_y}" text-anchor="end">0</text>',
        f'<text x="{left}" y="{base_y + 18}">{_when(timeline[0][0])}</text>',
        f'<text x="{end_x}" y="{base_y + 18}" text-anchor="end">{_when(timeline[-1][0] + step)}</text>',
        line(opens, "#1f6feb", "opens"), line(clicks, "#d9480f", "clicks"),
        f'<rect x="{left + 10}" y="6" width="12" height="12" fill="#1f6feb"/>'
        f'<text x="{left + 28}" y="16">opens ({total_o})</text>',
        f'<rect x="{left + 130}" y="6" width="12" height="12" fill="#d9480f"/>'
        f'<text x="{left + 148}" y="16">clicks ({total_c})</text>',
        "</svg>",
    ])


def html_report(report: Report) -> str:
    names = list(LABELS)
    head = "".join(f"<th>{html.escape(r.list_name)}</th>" for r in report.lists)
    rows = "\n".join(f"<tr><th>{LABELS[n]}</th>" + "".join(f"<td>{r.counts[n]}</td>" for r in report.lists) + "</tr>"
                     for n in names)
    links = ""
    for item in report.lists:
        if item.links:
            body = "\n".join(f"<tr><td>{html.escape(url)}</td><td>{n}</td><td>{u}</td></tr>"
                             for url, n, u in item.links)
            links += (f"<h2>Clicks per link: {html.escape(item.list_name)}</h2>\n<table><tr><th>Link</th><th>Clicks"
                      f"</th><th>Distinct clickers</th></tr>\n{body}\n</table>\n")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>Report: {html.escape(report.issue)}'
            "</title><style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
            "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;"
            "text-align:right}td:first-child,th:first-child{text-align:left}</style></head>\n<body>\n"
            f"<h1>{html.escape(report.issue)}: {html.escape(report.subject)}</h1>\n"
            f"<h2>Opens and clicks over time (cumulative)</h2>\n{chart_svg(report.timeline)}\n"
            f"<h2>Per list</h2>\n<table id=\"counts\"><tr><th></th>{head}</tr>\n{rows}\n</table>\n{links}"
            "</body>\n</html>\n")
