"""`newsletter report ISSUE_DIR [--html FILE]` as a real process; the HTML opened in Chromium."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli
from loop_support import event
from storekit import seed_send, site_store

from pipeline.web.webhook import process_events


def _seed(site: Path) -> None:
    store = site_store(site)
    sid = str(seed_send(store))
    process_events(store, [
        event("delivered", send_id=sid), event("delivered", "grace@example.org", send_id=sid),
        event("open", send_id=sid, timestamp=1_768_500_100),
        event("click", send_id=sid, timestamp=1_768_503_000, url="https://example.org/hello"),
        event("click", "grace@example.org", send_id=sid, timestamp=1_768_504_000, url="https://example.org/b"),
        event("click", "grace@example.org", send_id=sid, timestamp=1_768_505_000, url="https://example.org/b"),
        event("open", "grace@example.org", send_id=sid, timestamp=1_768_510_000),
    ])
    store.close()


def test_report_text_and_html(site: Path, tmp_path: Path) -> None:
    _seed(site)
    html_file = tmp_path / "report.html"
    result = run_cli(site / "issues", "report", "001-hello", "--html", str(html_file), env={"TZ": "Asia/Seoul"})
    assert result.returncode == 0, result.stderr
    assert "list sample" in result.stdout
    opens = [line.split() for line in result.stdout.splitlines() if "Unique opens" in line]
    assert [words[2:] for words in opens] == [["2", "100.0", "%", "of", "delivered"]]
    links = [line.split()[-1] for line in result.stdout.splitlines() if "https://" in line]
    assert links == ["https://example.org/b", "https://example.org/hello"]  # the most clicked first

    from playwright.sync_api import sync_playwright

    from pipeline.build.preview import launch_chromium

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            refused: list[str] = []
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                       else (refused.append(route.request.url), route.abort()))
            page.goto(html_file.as_uri())
            box = page.locator("svg polyline.opens").bounding_box()
            assert box is not None and box["width"] > 100
            counts = page.locator("#counts").inner_text()
            assert counts.count("Unique opens") == 1 and "100.0 %" in counts
            assert page.locator("svg text.ytick").count() >= 3 and page.locator("svg line.grid").count() >= 6
            xticks = page.locator("svg text.xtick").all_text_contents()
            assert len(xticks) >= 2 and all(":00" in text for text in xticks)
            assert "KST, UTC+09:00" in (page.locator("svg text.axis-title").text_content() or "")
            assert refused == []  # one self-contained file
        finally:
            browser.close()


def test_report_json(site: Path) -> None:
    _seed(site)
    result = run_cli(site, "report", "issues/001-hello", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["issue"] == "001-hello" and [item["list"] for item in data["lists"]] == ["sample"]
    item = data["lists"][0]
    assert item["counts"]["delivered"] == 2 and item["rates"]["unique_clicks"] == 1.0
    assert item["links"][0] == {"url": "https://example.org/b", "clicks": 2, "clickers": 1}
    assert sum(bucket["opens"] for bucket in data["timeline"]) == 2


def test_report_of_an_unsent_issue(site: Path) -> None:
    result = run_cli(site, "report", "issues/001-hello")
    assert result.returncode == 2 and "no send log" in result.stderr
    site_store(site).close()  # an empty send log
    result = run_cli(site, "report", "issues/001-hello")
    assert result.returncode == 1 and "no real send" in result.stderr
