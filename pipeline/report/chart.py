"""The report's chart: cumulative opens and clicks as an inline SVG that a person can read.

Drawn here rather than by a charting library so the HTML report stays one file that opens offline.
Both axes have ticks at round values with gridlines; times are the reader's local time, and the axis
title names the zone (`KST, UTC+09:00`), because an unlabelled hour is a guess.
"""

from __future__ import annotations

import datetime as dt
import math
from html import escape

OPENS, CLICKS = "#1f6feb", "#c2410c"  # blue and orange: told apart by most colour-blind readers, too
HOUR, DAY = 3600, 86400
TIME_STEPS = (HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY)


def value_ticks(peak: int, most: int = 6) -> list[int]:
    """0, step, 2 step, ... up to at least `peak`, the step 1, 2 or 5 times a power of ten."""
    raw = max(peak, 1) / (most - 1)
    power = 10 ** max(0, math.floor(math.log10(raw)))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return list(range(0, math.ceil(max(peak, 1) / step) * step + 1, step))


def _local(stamp: float, tz: dt.tzinfo | None) -> dt.datetime:
    return dt.datetime.fromtimestamp(stamp, tz) if tz is not None else dt.datetime.fromtimestamp(stamp).astimezone()


def time_ticks(first: int, last: int, tz: dt.tzinfo | None, most: int = 8) -> tuple[list[int], int]:
    """Round local times (whole hours, midnights) between first and last, at most `most` of them; the step."""
    step = next((s for s in TIME_STEPS if (last - first) / s <= most), TIME_STEPS[-1])
    start = _local(first, tz).replace(minute=0, second=0, microsecond=0)
    start = start.replace(hour=0 if step >= DAY else start.hour - start.hour % (step // HOUR))
    ticks, at = [], start.timestamp()
    while at <= last:
        if at >= first:
            ticks.append(int(at))
        at += step
    return ticks, step


def zone_name(stamp: int, tz: dt.tzinfo | None) -> str:
    local = _local(stamp, tz)
    offset = local.strftime("%z")
    utc = f"UTC{offset[:3]}:{offset[3:]}"
    name = local.tzname() or utc
    return utc if name == utc or name.startswith(("+", "-")) else f"{name}, {utc}"


def chart_svg(timeline: list[tuple[int, int, int]], tz: dt.tzinfo | None = None, *, width: int = 720,
              height: int = 300) -> str:
    """Cumulative opens and clicks over time: axes with ticks, gridlines, a legend, times in `tz` (local)."""
    if not timeline:
        return "<p>No opens or clicks recorded yet.</p>"
    left, right, top, bottom = 56, 20, 32, 64
    opens, clicks = [0], [0]  # points at bucket ends, from 0 at the first bucket's start
    for _, o, c in timeline:
        opens.append(opens[-1] + o)
        clicks.append(clicks[-1] + c)
    step = timeline[1][0] - timeline[0][0] if len(timeline) > 1 else HOUR
    first, last = timeline[0][0], timeline[-1][0] + step
    yticks = value_ticks(max(opens[-1], clicks[-1]))
    plot_w, plot_h, base_y = width - left - right, height - top - bottom, height - bottom

    def x_of(stamp: float) -> float:
        return left + plot_w * (stamp - first) / (last - first)

    def y_of(value: int) -> float:
        return top + plot_h * (1 - value / yticks[-1])

    def line(values: list[int], colour: str, name: str) -> str:
        points = " ".join(f"{x_of(first + i * step):.1f},{y_of(v):.1f}" for i, v in enumerate(values))
        return (f'<polyline class="{name}" fill="none" stroke="{colour}" stroke-width="2.5" points="{points}">'
                f"<title>{name}: {values[-1]}</title></polyline>")

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="Cumulative opens ({opens[-1]}) and clicks ({clicks[-1]}) '
             'over time" font-family="system-ui,sans-serif" font-size="12" fill="#1b1f24">']
    for value in yticks:
        y = y_of(value)
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                     f'stroke="{"#888" if value == 0 else "#e3e3e3"}"/>'
                     f'<text class="ytick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    previous_day = None
    xticks, tick_step = time_ticks(first, last, tz)
    for stamp in xticks:
        x, local = x_of(stamp), _local(stamp, tz)
        day = local.strftime("%b %d")
        label = day if tick_step >= DAY else local.strftime("%H:%M")
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{base_y + 4}" stroke="#e3e3e3"/>'
                     f'<text class="xtick" x="{x:.1f}" y="{base_y + 18}" text-anchor="middle">{label}')
        if label != day and day != previous_day:
            parts.append(f'<tspan x="{x:.1f}" dy="14">{day}</tspan>')
        parts.append("</text>")
        previous_day = day
    parts += [
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base_y}" stroke="#888"/>',
        f'<text class="axis-title" x="{left + plot_w / 2:.0f}" y="{height - 8}" text-anchor="middle">'
        f"Time ({escape(zone_name(first, tz))})</text>",
        line(opens, OPENS, "opens"), line(clicks, CLICKS, "clicks"),
        f'<rect x="{left + 10}" y="8" width="12" height="12" fill="{OPENS}"/>'
        f'<text x="{left + 28}" y="18">opens ({opens[-1]})</text>',
        f'<rect x="{left + 130}" y="8" width="12" height="12" fill="{CLICKS}"/>'
        f'<text x="{left + 148}" y="18">clicks ({clicks[-1]})</text>',
        "</svg>",
    ]
    return "\n".join(parts)
