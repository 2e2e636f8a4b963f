"""The report: counts per list from the send log and recorded events, text and one-page HTML with an SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from loop_support import event
from storekit import seed_send

from pipeline.errors import PipelineError
from pipeline.report.chart import chart_svg
from pipeline.report.stats import build_report, html_report, text_report
from pipeline.store import Store
from pipeline.web.webhook import process_events

T0 = 1_768_500_000


def seeded(store: Store) -> None:
    sample = str(seed_send(store))
    vip = str(seed_send(store, list_name="vip", recipients=("ada@example.org", "zed@example.org"),
                        message_id="msg-vip"))
    process_events(store, [
        event("delivered", "ada@example.org", send_id=sample),
        event("delivered", "grace@example.org", send_id=sample),
        event("bounce", "alan@example.org", send_id=sample, type="bounce"),
        event("open", "ada@example.org", send_id=sample, timestamp=T0 + 60),
        event("open", "ada@example.org", send_id=sample, timestamp=T0 + 4000),
        event("open", "grace@example.org", send_id=sample, timestamp=T0 + 7300),
        event("click", "ada@example.org", send_id=sample, timestamp=T0 + 90, url="https://example.org/a"),
        event("click", "ada@example.org", send_id=sample, timestamp=T0 + 95, url="https://example.org/a"),
        event("click", "grace@example.org", send_id=sample, timestamp=T0 + 7400, url="https://example.org/a"),
        event("click", "grace@example.org", send_id=sample, timestamp=T0 + 7500, url="https://example.org/b"),
        event("spamreport", "grace@example.org", send_id=sample),
        event("dropped", "zed@example.org", send_id=vip, list_name="vip", reason="Bounced Address"),
        event("delivered", "ada@example.org", send_id=vip, list_name="vip"),
        event("open", "ada@example.org", send_id=vip, list_name="vip", timestamp=T0 + 100),
        event("open", "ada@example.org", send_id="99", list_name="vip"),  # unknown send: not counted
    ])
    store.link_unsubscribe(email="ada@example.org", list_name="sample", issue="001-hello")


def test_counts_per_list(store: Store) -> None:
    seeded(store)
    report = build_report(store, "001-hello")
    sample, vip = report.lists
    assert (sample.list_name, vip.list_name) == ("sample", "vip")
    assert sample.counts == {"recipients": 3, "accepted": 3, "delivered": 2, "bounced": 1, "dropped": 0,
                             "spam_reports": 1, "unsubscribes": 1, "unique_opens": 2, "opens": 3, "unique_clicks": 2}
    assert sample.links == [("https://example.org/a", 3, 2), ("https://example.org/b", 1, 1)]
    assert vip.counts["dropped"] == 1 and vip.counts["unique_opens"] == 1 and vip.counts["opens"] == 1
    assert report.timeline[0] == (T0 - T0 % 3600, 2, 2)
    assert sum(o for _, o, _ in report.timeline) == 4 and sum(c for _, _, c in report.timeline) == 4
    text = text_report(report)
    assert "list sample" in text and "Unique opens" in text and "https://example.org/a" in text


def test_html_is_one_self_contained_page_with_a_chart(store: Store) -> None:
    seeded(store)
    page = html_report(build_report(store, "001-hello"))
    svg = page[page.index("<svg"):page.index("</svg>") + 6]
    tree = ET.fromstring(svg)
    lines = tree.findall("{http://www.w3.org/2000/svg}polyline")
    assert [line.get("class") for line in lines] == ["opens", "clicks"]
    assert len(lines[0].get("points", "").split()) == len(build_report(store, "001-hello").timeline) + 1
    assert "src=" not in page and "<script" not in page and "<link" not in page


def test_no_send_is_a_clear_error(store: Store) -> None:
    with pytest.raises(PipelineError, match="no real send"):
        build_report(store, "001-hello")


def test_empty_timeline() -> None:
    assert "No opens or clicks" in chart_svg([])


def test_clicks_on_unsubscribe_links_do_not_name_the_readers(store: Store) -> None:
    """SendGrid's click tracking reports the footer's unsubscribe link with its token, which holds the address
    (base64 JSON) and unsubscribes it: the report (text, JSON, HTML: made to be shared) shows one row for them."""
    import json

    from pipeline import tokens
    from pipeline.report.stats import report_json

    sample = str(seed_send(store))
    secret = b"s" * 32
    links = {who: tokens.unsubscribe_url("https://news.example.org", tokens.sign(
        secret, email=f"{who}@example.org", list_name="sample", issue="001-hello")) for who in ("ada", "grace")}
    process_events(store, [
        event("click", "ada@example.org", send_id=sample, timestamp=T0 + 90, url=links["ada"]),
        event("click", "ada@example.org", send_id=sample, timestamp=T0 + 95, url=links["ada"]),
        event("click", "grace@example.org", send_id=sample, timestamp=T0 + 99, url=links["grace"]),
        event("click", "grace@example.org", send_id=sample, timestamp=T0 + 99, url="https://example.org/a"),
    ])
    report = build_report(store, "001-hello")
    shown = text_report(report) + json.dumps(report_json(report)) + html_report(report)
    for url in links.values():
        token = url.rsplit("/", 1)[1]
        assert token not in shown and token.split(".")[0] not in shown
    assert report.lists[0].links == [("https://news.example.org/unsubscribe/[token]", 3, 2),
                                     ("https://example.org/a", 1, 1)]
