"""`newsletter archive --out DIR` as a real process; the static files checked in Chromium."""

from __future__ import annotations

import functools
import shutil
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from conftest import run_cli
from storekit import seed_send, site_store

FIXTURES = Path(__file__).parent / "fixtures"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def static_host(folder: Path) -> Iterator[str]:
    """Any static host: here the stdlib's, on 127.0.0.1, publishing `folder` as /archive/."""
    root = folder.parent / "webroot"
    root.mkdir()
    (root / "archive").symlink_to(folder)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_static_archive_of_sent_issues_in_chromium(site: Path, tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "extra-issues" / "002-second", site / "issues" / "002-second")
    store = site_store(site)
    seed_send(store, issue="001-hello")
    seed_send(store, issue="002-second", message_id="msg-2")
    store.close()
    out = tmp_path / "out"
    result = run_cli(site, "archive", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "(2 issue(s))" in result.stdout
    assert not (out / "002-second/NOTES.txt").exists()
    ET.parse(out / "feed.xml")

    from playwright.sync_api import sync_playwright

    from pipeline.build.preview import launch_chromium

    with static_host(out) as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
            page.goto(f"{url}/archive/")
            titles = page.eval_on_selector_all("ol.issues a", "els => els.map(e => e.textContent)")
            assert titles == ["Test Weekly No. 2: second steps", "Test Weekly No. 1: hello"]
            with page.expect_navigation():  # until the new page's load event: its image has loaded by then
                page.click("text=Test Weekly No. 2: second steps")
            page.wait_for_selector("text=Second steps & more")
            assert "%%" not in page.content()
            assert page.eval_on_selector("img", "img => img.complete && img.naturalWidth") > 0
        finally:
            browser.close()


def test_nothing_sent_means_an_empty_archive_unless_all_issues(site: Path, tmp_path: Path) -> None:
    result = run_cli(site, "archive", "--out", str(tmp_path / "a"))
    assert result.returncode == 0 and "(0 issue(s))" in result.stdout and "--all-issues" in result.stderr
    assert not (site / ".newsletter").exists()  # reading the selection never creates a send log
    result = run_cli(site, "archive", "--out", str(tmp_path / "b"), "--all-issues")
    assert result.returncode == 0 and "(1 issue(s))" in result.stdout
    assert (tmp_path / "b/001-hello/images/square.png").is_file()


def test_an_issue_in_two_editions_counts_once(sample_root: Path, tmp_path: Path) -> None:
    result = run_cli(sample_root, "archive", "--out", str(tmp_path / "a"), "--all-issues")
    assert result.returncode == 0 and "(1 issue(s))" in result.stdout, result.stdout + result.stderr
    issue = tmp_path / "a" / "027-2022-04-01"
    assert (issue / "index.html").is_file() and (issue / "ko" / "index.html").is_file()
