"""`newsletter report`: what happened to one issue, per list, from the send log and the recorded events.

Counts are of distinct recipients (a message opened five times is one unique open); clicks per link are
given both as clicks and as distinct clickers. The HTML report is one self-contained page: the chart is an
SVG drawn here, so the file opens anywhere without a network.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError
from pipeline.store import Store

# Report row -> the events that count for it (distinct recipients).
COUNTED = {"delivered": ("delivered",), "bounced": ("bounce",), "dropped": ("dropped",),
           "spam_reports": ("spamreport",), "unsubscribes": ("unsubscribe", "group_unsubscribe"),
           "unique_opens": ("open",)}
LABELS = {"recipients": "Recipients", "accepted": "Accepted by SendGrid", "delivered": "Delivered",
          "bounced": "Bounced", "dropped": "Dropped", "spam_reports": "Spam complaints",
          "unsubscribes": "Unsubscribes", "unique_opens": "Unique opens", "opens": "Opens (all)",
          "unique_clicks": "Unique clickers"}
# The footer's unsubscribe link, as SendGrid's click tracking reports it: its token holds the reader's address.
_UNSUBSCRIBE_TOKEN = re.compile(r"^(.*?/unsubscribe/)[^/?#]+")


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
        report.links = without_tokens(found.links)
        lists.append(report)
    return Report(issue=issue, subject=sends[0].subject, lists=lists, timeline=_timeline(store, issue))


def without_tokens(links: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The links with every unsubscribe token replaced by `[token]`, their counts added up (one token is one
    reader, so distinct clickers add up too), most clicked first."""
    merged: dict[str, tuple[int, int]] = {}
    for url, clicks, clickers in links:
        key = _UNSUBSCRIBE_TOKEN.sub(r"\1[token]", url)
        before = merged.get(key, (0, 0))
        merged[key] = (before[0] + clicks, before[1] + clickers)
    return sorted(((url, n, u) for url, (n, u) in merged.items()), key=lambda link: (-link[1], link[0]))


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


# Rate of a row -> the row it is a share of. Delivery outcomes are shares of what SendGrid accepted;
# what readers did is a share of what was delivered.
RATE_OF = {"delivered": "accepted", "bounced": "accepted", "dropped": "accepted", "unique_opens": "delivered",
           "unique_clicks": "delivered", "unsubscribes": "delivered", "spam_reports": "delivered"}


def rates(item: ListReport) -> dict[str, float | None]:
    """Each rate as a fraction (0.25 = 25 %); None when nothing was accepted or delivered yet."""
    return {name: (item.counts[name] / item.counts[base] if item.counts[base] else None)
            for name, base in RATE_OF.items()}


def _percent(rate: float | None) -> str:
    return "–" if rate is None else f"{rate * 100:.1f} %"


def text_report(report: Report) -> str:
    lines = [f"{report.issue}: {report.subject}"]
    for item in report.lists:
        lines += ["", f"list {item.list_name}"]
        shares = rates(item)
        for name in LABELS:
            rate = f"  {_percent(shares[name]):>7} of {RATE_OF[name]}" if name in RATE_OF else ""
            lines.append(f"  {LABELS[name]:<22}{item.counts[name]:>8}{rate}")
        if item.links:
            lines.append("  clicks per link (clicks / distinct clickers):")
            lines += [f"    {n:>6} {u:>6}  {url}" for url, n, u in item.links]
    return "\n".join(lines) + "\n"


def report_json(report: Report) -> dict[str, Any]:
    """The keys documented in the README (Machine-readable output)."""
    return {"issue": report.issue, "subject": report.subject,
            "lists": [{"list": item.list_name, "counts": item.counts,
                       "rates": {k: None if v is None else round(v, 4) for k, v in rates(item).items()},
                       "links": [{"url": url, "clicks": n, "clickers": u} for url, n, u in item.links]}
                      for item in report.lists],
            "timeline": [{"start": at, "opens": o, "clicks": c} for at, o, c in report.timeline]}


STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}"
         "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;"
         "text-align:right}td:first-child,th:first-child,td.url{text-align:left}td.rate{color:#555}"
         "td.url{word-break:break-all}svg{max-width:100%;height:auto}")


def html_report(report: Report, tz: dt.tzinfo | None = None) -> str:
    """One self-contained page: counts with rates per list, the chart (times in `tz`, default local), links."""
    from pipeline.report.chart import chart_svg

    head = "".join(f'<th colspan="2" scope="colgroup">{html.escape(r.list_name)}</th>' for r in report.lists)
    sub = "<th>Count</th><th>Rate</th>" * len(report.lists)
    shares = [rates(r) for r in report.lists]
    rows = "\n".join(
        f'<tr><th scope="row">{LABELS[n]}</th>' + "".join(
            f'<td>{r.counts[n]}</td><td class="rate">{_percent(s[n]) if n in RATE_OF else ""}</td>'
            for r, s in zip(report.lists, shares, strict=True)) + "</tr>" for n in LABELS)
    links = ""
    for item in report.lists:
        if item.links:
            body = "\n".join(f'<tr><td class="url">{html.escape(url)}</td><td>{n}</td><td>{u}</td></tr>'
                             for url, n, u in item.links)
            links += (f"<h2>Clicks per link: {html.escape(item.list_name)}</h2>\n<table class=\"links\"><tr>"
                      f"<th>Link</th><th>Clicks</th><th>Distinct clickers</th></tr>\n{body}\n</table>\n")
    bases = "Delivery rates are shares of what SendGrid accepted; opens, clicks, unsubscribes and spam reports " \
            "are shares of what was delivered. Opens are an upper bound (Apple Mail opens everything)."
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>Report: {html.escape(report.issue)}</title><style>{STYLE}</style></head>\n<body><main>\n"
            f"<h1>{html.escape(report.issue)}: {html.escape(report.subject)}</h1>\n"
            f'<h2>Per list</h2>\n<table id="counts"><tr><th></th>{head}</tr><tr><th></th>{sub}</tr>\n{rows}\n'
            f"</table>\n<p>{bases}</p>\n"
            f"<h2>Opens and clicks over time (cumulative)</h2>\n{chart_svg(report.timeline, tz)}\n{links}"
            "</main></body>\n</html>\n")
