"""`newsletter report ISSUE_DIR [--html FILE]` as a real process; the HTML opened in Chromium."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli
from loop_support import event
from storekit import seed_send, site_store

from pipeline.webhook import process_events


def test_report_text_and_html(site: Path, tmp_path: Path) -> None:
    store = site_store(site)
    sid = str(seed_send(store))
    process_events(store, [
        event("delivered", send_id=sid), event("open", send_id=sid, timestamp=1_768_500_100),
        event("click", send_id=sid, timestamp=1_768_503_000, url="https://example.org/hello"),
        event("open", "grace@example.org", send_id=sid, timestamp=1_768_510_000),
    ])
    store.close()
    html_file = tmp_path / "report.html"
    result = run_cli(site / "issues", "report", "001-hello", "--html", str(html_file))
    assert result.returncode == 0, result.stderr
    assert "list sample" in result.stdout
    assert [line.split()[-1] for line in result.stdout.splitlines() if "Unique opens" in line] == ["2"]
    assert "https://example.org/hello" in result.stdout

    from playwright.sync_api import sync_playwright

    from pipeline.preview import launch_chromium

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                       else route.abort())
            page.goto(html_file.as_uri())
            box = page.locator("svg polyline.opens").bounding_box()
            assert box is not None and box["width"] > 100
            assert page.locator("#counts").inner_text().count("Unique opens") == 1
        finally:
            browser.close()


def test_report_of_an_unsent_issue(site: Path) -> None:
    result = run_cli(site, "report", "issues/001-hello")
    assert result.returncode == 2 and "no send log" in result.stderr
    site_store(site).close()  # an empty send log
    result = run_cli(site, "report", "issues/001-hello")
    assert result.returncode == 1 and "no real send" in result.stderr
