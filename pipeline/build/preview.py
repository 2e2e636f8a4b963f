"""Preview: the email served on 127.0.0.1, rebuilt in memory when the issue, theme or config changes.

Images are served from the issue folder under the same /archive/<slug>/ path they get when published,
so the preview shows exactly the HTML a subscriber gets, with sample values for the per-recipient tags.
The default edition is at `/`, every edition at `/<lang>/`; the live page has links to switch between them.
"""

from __future__ import annotations

import html
import mimetypes
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pipeline.build.builder import render_checked
from pipeline.build.checks import sample_values
from pipeline.build.editions import load_editions
from pipeline.build.message import substitute
from pipeline.config import Config, load_config
from pipeline.errors import IssueError, PipelineError

CHROMIUM = os.environ.get("NEWSLETTER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WIDTHS = (375, 600)
_RELOAD_SCRIPT = """<script>
(function poll(v) {
  fetch('/__version').then(r => r.text())
    .then(n => { if (v && n !== v) location.reload(); else setTimeout(() => poll(n), 400); })
    .catch(() => setTimeout(poll, 1000, v));
})('');
</script>"""


def _newest_mtime(paths: list[Path]) -> float:
    newest = 0.0
    for root in paths:
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            try:
                newest = max(newest, path.stat().st_mtime)
            except FileNotFoundError:
                continue
    return newest


class Preview:
    """The current rendering of one issue; `refresh()` rebuilds it when a watched file changed."""

    def __init__(self, folder: Path, config: Config, *, base_url: str) -> None:
        self.folder = folder.resolve()
        self.config = config
        self.base_url = base_url
        self.version = 0
        self.html = ""
        self.text = ""
        self.editions: dict[str, tuple[str, str]] = {}  # language -> (html, text)
        self.error: str | None = None
        self._seen = -1.0
        self._lock = threading.Lock()

    @property
    def watched(self) -> list[Path]:
        return [self.folder, self.config.templates_dir, self.config.config_file]

    def refresh(self) -> bool:
        """Rebuild if anything watched changed; True when a new version exists."""
        mtime = _newest_mtime(self.watched)
        if mtime == self._seen:
            return False
        self._seen = mtime
        try:
            config = load_config(self.config.root)
            editions = load_editions(self.folder, config)
            rendered = {}
            for issue in editions.all:
                email, _, _ = render_checked(issue, config, asset_base=self.base_url)
                values = sample_values(email, config)
                values["unsubscribe_url"] = f"{self.base_url}/unsubscribe-preview"
                rendered[issue.language] = (substitute(email.html, values), substitute(email.text, values))
            with self._lock:
                self.config = config
                self.editions = rendered
                self.html, self.text = rendered[editions.default.language]
                self.error = None
        except PipelineError as exc:
            with self._lock:
                self.error = str(exc)
        with self._lock:
            self.version += 1
        return True

    def _switcher(self, current: str | None) -> str:
        """Links to every edition, fixed at the top of the live page (only when there are several)."""
        if len(self.editions) < 2:
            return ""
        links = " ".join(f'<a href="/{html.escape(lang)}/" hreflang="{html.escape(lang)}"'
                         + (' aria-current="page"' if lang == current else "")
                         + f">{html.escape(lang)}</a>" for lang in self.editions)
        return ('<nav id="nl-preview-editions" style="position:fixed;top:0;right:0;background:#fff;padding:4px 8px;'
                f'font:13px sans-serif;border:1px solid #999">{links}</nav>')

    def page(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request path."""
        with self._lock:
            if path == "/__version":
                return 200, "text/plain", str(self.version).encode()
            language, _, rest = path[1:].partition("/")
            if language in self.editions:
                current: str | None = language
                html_part, text_part, path = *self.editions[language], "/" + rest
            else:
                current, html_part, text_part = None, self.html, self.text
            if self.error is not None and path in ("/", "/email.html", "/email.txt"):
                body = f"<!DOCTYPE html><title>Build failed</title><pre>{html.escape(self.error)}</pre>"
                return 500, "text/html; charset=utf-8", (body + _RELOAD_SCRIPT).encode()
            if path in ("/", "/email.html"):
                live = html_part
                if path == "/":
                    live = live.replace("</body>", self._switcher(current) + _RELOAD_SCRIPT + "</body>")
                return 200, "text/html; charset=utf-8", live.encode()
            if path == "/email.txt":
                return 200, "text/plain; charset=utf-8", text_part.encode()
        prefix = f"/archive/{self.folder.name}/"
        if path.startswith(prefix):
            file = (self.folder / path[len(prefix):]).resolve()
            if file.is_relative_to(self.folder) and file.is_file():
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                return 200, kind, file.read_bytes()
        return 404, "text/plain", b"not found"


class _Handler(BaseHTTPRequestHandler):
    preview: Preview

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        status, kind, body = self.server.preview.page(self.path.split("?")[0])  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the terminal shows rebuilds and errors, not every request."""


class PreviewServer:
    """A threaded HTTP server on 127.0.0.1 plus a thread that polls for changes (no inotify dependency)."""

    def __init__(self, folder: Path, config: Config, *, port: int = 0, poll_seconds: float = 0.3,
                 on_rebuild: Callable[[Preview], None] | None = None) -> None:
        if not folder.is_dir():
            raise IssueError(f"{folder} is not a folder — pass the path of an issue folder, e.g. issues/027")
        try:
            self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise PipelineError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}) — use --port to pick "
                                "another port") from None
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.preview = Preview(folder, config, base_url=self.url)
        self._httpd.preview = self.preview  # type: ignore[attr-defined]
        self._poll = poll_seconds
        self._on_rebuild = on_rebuild
        self._stop = threading.Event()
        self.preview.refresh()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            if self.preview.refresh() and self._on_rebuild:
                self._on_rebuild(self.preview)

    def __enter__(self) -> PreviewServer:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def serve(folder: Path, config: Config, *, port: int, echo: Callable[[str], None]) -> None:
    def report(preview: Preview) -> None:
        stamp = time.strftime("%H:%M:%S")
        echo(f"{stamp} build failed:\n{preview.error}" if preview.error else f"{stamp} rebuilt")

    with PreviewServer(folder, config, port=port, on_rebuild=report) as server:
        if server.preview.error:
            echo(server.preview.error)
        echo(f"serving {folder.name} at {server.url}/ (text part: {server.url}/email.txt); Ctrl-C stops")
        threading.Event().wait()


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless and without background traffic (the machine has no network)."""
    if not Path(CHROMIUM).exists():
        raise PipelineError(f"Chromium not found at {CHROMIUM} — install it (Debian: apt-get install chromium) "
                            "or set NEWSLETTER_CHROMIUM to its path")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def chromium_pages(url: str, widths: tuple[int, ...] = WIDTHS) -> Iterator[tuple[int, Any]]:
    """(width, page) for each width, the page loaded at url; used by --screenshot and the tests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            for width in widths:
                page = browser.new_page(viewport={"width": width, "height": 800})
                page.goto(url, wait_until="load")
                yield width, page
                page.close()
        finally:
            browser.close()


def screenshots(folder: Path, config: Config, out: Path,
                warn: Callable[[str], None] | None = None) -> list[Path]:
    """PNGs at each width; `warn` hears about characters no installed font covers (empty boxes)."""
    from pipeline.build.fonts import font_warning

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with PreviewServer(folder, config) as server:
        if server.preview.error:
            raise IssueError(server.preview.error)
        for width, page in chromium_pages(f"{server.url}/email.html"):
            path = out / f"{folder.resolve().name}-{width}.png"
            page.screenshot(path=str(path), full_page=True)
            written.append(path)
            if warn is not None and not written[1:] and (message := font_warning(page.inner_text("body"))):
                warn(message)
    return written
