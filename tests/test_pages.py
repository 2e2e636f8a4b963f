"""Reader-facing pages are the theme's templates (pipeline.web.pages): in real Chromium at 375 and 1280 px they
look like the e-mail, never scroll sideways, have landmarks, labelled controls, a visible focus and readable
contrast, and speak the newsletter's language. The web version leaves out what only makes sense in a mailbox."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from loop_support import SECRET, request, running

from pipeline import tokens
from pipeline.build.editions import load_editions
from pipeline.build.render import render_email
from pipeline.config import Config, load_config
from pipeline.errors import IssueError
from pipeline.store._sqlite import SQLiteStore
from pipeline.web.app import Settings, create_app
from pipeline.web.archive import Archive, issue_page
from pipeline.web.pages import render_page

SAMPLE = "027-2022-04-01"
WIDTHS = (375, 1280)
HANGUL = re.compile(r"[\uac00-\ud7a3]")

# Contrast of each visible text against the nearest opaque background behind it (WCAG 2 relative luminance).
CONTRAST_JS = """() => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map(v => { v /= 255; return v <= 0.03928 ? v / 12.92
                                                   : Math.pow((v + 0.055) / 1.055, 2.4); })
                                      .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const back = el => { for (; el; el = el.parentElement) { const c = rgb(getComputedStyle(el).backgroundColor);
                         if (c.length === 3 || c[3] > 0.5) return c; } return [255, 255, 255]; };
  const out = [];
  for (const el of document.querySelectorAll('main *, header *, footer *, nav *, h1, p, a, li, button, time')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    const box = el.getBoundingClientRect();
    if (!own || box.width === 0 || getComputedStyle(el).visibility === 'hidden') continue;
    const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(back(el))];
    out.push([el.tagName + ' ' + el.textContent.trim().slice(0, 30),
              (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]);
  }
  return out;
}"""

# Every form control that a person operates, with the name assistive technology announces for it.
CONTROLS_JS = """() => [...document.querySelectorAll('button, select, textarea, input:not([type=hidden])')].map(el =>
  [el.tagName, (el.getAttribute('aria-label') || [...(el.labels || [])].map(l => l.textContent).join(' ')
                || (el.tagName === 'BUTTON' ? el.textContent : '') || el.title || '').trim()])"""

STYLE_JS = """sel => { const el = document.querySelector(sel); const s = getComputedStyle(el);
  return {color: s.color, background: s.backgroundColor, font: s.fontFamily}; }"""


def set_language(root: Path, language: str) -> Config:
    config_file = root / "newsletter.yaml"
    config_file.write_text(config_file.read_text("utf-8").replace("language: en", f"language: {language}"), "utf-8")
    return load_config(root)


@pytest.fixture
def served(sample_root: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, Config]]:
    """`serve` for the repository's own newsletter (default theme), every issue published."""
    config = set_language(sample_root, getattr(request, "param", "en"))
    settings = Settings(config=config, secret=SECRET, webhook_key=None, published=lambda: None,
                        open_store=lambda: SQLiteStore(config.sendlog_path))
    with running(create_app(settings)) as url:
        yield url, config


def browser_pages() -> Any:
    from playwright.sync_api import sync_playwright

    from pipeline.build.preview import launch_chromium

    manager = sync_playwright().start()
    return manager, launch_chromium(manager)


def local_only(page: Any) -> None:
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("http://127.0.0.1:")
               else route.abort())


def email_look(page: Any, url: str) -> dict[str, dict[str, str]]:
    """The e-mail's own colours and type, measured on its web version: the pages must match these."""
    page.goto(url)
    return {"band": page.evaluate(STYLE_JS, ".nl-head > table"),
            "text": page.evaluate(STYLE_JS, ".nl-card p:not([class])"),
            "link": page.evaluate(STYLE_JS, ".nl-foot a"), "body": page.evaluate(STYLE_JS, "body")}


def check_page(page: Any, *, language: str, look: dict[str, dict[str, str]], shot: Path) -> str:
    """Every rule a reader-facing page keeps; returns the visible text."""
    page.screenshot(path=str(shot), full_page=True)
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{shot.name}: scrolls sideways ({width})"
    assert page.evaluate("() => document.documentElement.lang") == language
    for landmark in ("main", "header", "footer"):
        assert page.locator(landmark).count() == 1, f"{shot.name}: no <{landmark}>"
    assert page.locator("h1").count() == 1
    for tag, name in page.evaluate(CONTROLS_JS):
        assert name, f"{shot.name}: a {tag} without a label"
    low = [(what, round(ratio, 2)) for what, ratio in page.evaluate(CONTRAST_JS) if ratio < 4.5]
    assert low == [], f"{shot.name}: contrast under 4.5:1: {low}"
    # The e-mail's navy band, background, text colour, link colour and fonts.
    assert page.evaluate(STYLE_JS, "header")["background"] == look["band"]["background"]
    assert page.evaluate(STYLE_JS, "body")["background"] == look["body"]["background"]
    assert page.evaluate(STYLE_JS, "main > p:not([class])")["color"] == look["text"]["color"]
    assert page.evaluate(STYLE_JS, "footer a")["color"] == look["link"]["color"]
    assert page.evaluate(STYLE_JS, "main > p:not([class])")["font"] == look["text"]["font"]
    # Keyboard: the first Tab shows the skip link, with an outline of at least 2px.
    page.keyboard.press("Tab")
    focus = page.evaluate("() => { const s = getComputedStyle(document.activeElement); "
                          "return [document.activeElement.className, s.outlineStyle, parseFloat(s.outlineWidth), "
                          "document.activeElement.getBoundingClientRect().top]; }")
    assert focus[0] == "nl-skip" and focus[1] != "none" and focus[2] >= 2 and focus[3] >= 0, focus
    text: str = page.inner_text("body")
    if language == "ko":
        assert HANGUL.search(page.inner_text("h1")), f"{shot.name}: the title is not Korean"
        for english in ("Unsubscribe", "archive", "Skip to content", "E-mail", "All past issues", "Re-subscribe"):
            assert english not in text, f"{shot.name}: {english!r} in a Korean page"
    return text


@pytest.mark.parametrize("served", ["en", "ko"], indirect=True)
def test_pages_in_chromium_look_like_the_email_and_are_accessible(served: tuple[str, Config],
                                                                    tmp_path: Path) -> None:
    url, config = served
    language = config.language
    token = tokens.sign(SECRET, email="reader.with.a.rather.long.address@example.org", list_name="sample",
                        issue=SAMPLE)
    manager, browser = browser_pages()
    try:
        for width in WIDTHS:
            page = browser.new_page(viewport={"width": width, "height": 800})
            local_only(page)
            look = email_look(page, f"{url}/archive/{SAMPLE}/")
            assert page.locator("main").count() == 1 and page.locator("nav").count() == 1  # the web version too
            assert page.evaluate("() => document.documentElement.scrollWidth") <= width

            def shot(name: str, width: int = width) -> Path:
                return tmp_path / f"{language}-{width}-{name}.png"

            page.goto(f"{url}/archive/")
            text = check_page(page, language=language, look=look, shot=shot("index"))
            assert page.locator("ol.issues a.nl-subject").count() == 1 and "2022" in text
            page.goto(f"{url}/unsubscribe/{token}")
            text = check_page(page, language=language, look=look, shot=shot("ask"))
            assert "reader.with.a.rather.long.address@example.org" in text
            page.click("button#unsubscribe")
            page.wait_for_selector("button#resubscribe")
            check_page(page, language=language, look=look, shot=shot("unsubscribed"))
            page.click("button#resubscribe")
            page.wait_for_selector("button#unsubscribe")
            check_page(page, language=language, look=look, shot=shot("resubscribed"))
            page.goto(f"{url}/unsubscribe/not-a-token")
            check_page(page, language=language, look=look, shot=shot("invalid"))
            page.goto(f"{url}/archive/no-such-issue/")
            check_page(page, language=language, look=look, shot=shot("not-found"))
            page.close()
    finally:
        browser.close()
        manager.stop()
    assert len(list(tmp_path.glob("*.png"))) == 6 * len(WIDTHS)


def test_the_web_version_leaves_out_what_only_makes_sense_in_a_mailbox(sample_root: Path) -> None:
    config = load_config(sample_root)
    editions = load_editions(sample_root / "issues" / SAMPLE, config)
    for lang in ("en", "ko"):
        issue = editions.get(lang)
        assert issue is not None
        page = issue_page(issue, config)
        assert f'<html lang="{lang}"' in page
        for mailbox_only in ("View this issue in your browser", "View in browser", "You receive", "unsubscribe",
                             "웹 브라우저에서 이번 호 보기", "웹에서 보기", "구독자 명단", "수신 거부", "%%"):
            assert mailbox_only not in page, (lang, mailbox_only)
        nav = page.split('<nav class="nl-webnav"', 1)[1].split("</nav>", 1)[0]
        other = {"en": "ko", "ko": "en"}[lang]
        assert f'hreflang="{other}" lang="{other}"' in nav and "<main" in page  # the other edition, linked once
        email = render_email(issue, config)  # the e-mail itself keeps them
        assert "%%unsubscribe_url%%" in email.html and ("View this issue in your browser" in email.html
                                                          or "웹 브라우저에서 이번 호 보기" in email.html)


def test_a_theme_brands_its_pages_and_its_page_errors_name_the_template(sample_root: Path) -> None:
    config = load_config(sample_root)
    base = config.theme_dir / "pages" / "base.html.j2"
    base.write_text(base.read_text("utf-8").replace("<header", '<header data-brand="ours"'), "utf-8")
    assert 'data-brand="ours"' in render_page(config, "message.html.j2", kind="not_found")
    index = config.theme_dir / "pages" / "index.html.j2"
    index.write_text(index.read_text("utf-8").replace("{%- block content %}",
                                                      "{%- block content %}{{ config.root }}"), "utf-8")
    with pytest.raises(IssueError) as failed:
        Archive(config).get("")
    [problem] = failed.value.problems
    assert problem.file == index and problem.line is not None and "sandbox" in problem.message


def test_a_page_that_runs_on_is_stopped_in_serve_s_worker_thread_and_unsubscribing_still_works(
        sample_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loops in loops that write nothing (10^10 turns) in the theme's pages: each request's render stops after
    PAGE_SECONDS in the worker thread that runs it, the archive answers its error page and the unsubscribe
    page falls back to the default theme's."""
    from pipeline.web import pages

    monkeypatch.setattr(pages, "PAGE_SECONDS", 0.3)
    config = load_config(sample_root)
    loops = "{%- block content %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    for name in ("index.html.j2", "unsubscribe.html.j2"):
        page = config.theme_dir / "pages" / name
        page.write_text(page.read_text("utf-8").replace("{%- block content %}", loops), "utf-8")
    with _default_unsubscribe_page(config) as (url, _):
        started = time.monotonic()
        status, _, body = request("GET", f"{url}/archive/")
        assert status == 500 and b"cannot be shown" in body and time.monotonic() - started < 10
    with pytest.raises(IssueError) as failed:
        Archive(config).get("")
    [problem] = failed.value.problems
    assert problem.file == config.theme_dir / "pages" / "index.html.j2" and problem.line is not None
    assert "ran for more than 0.3 s" in problem.message


@contextmanager
def _default_unsubscribe_page(config: Config) -> Iterator[tuple[str, str]]:
    """`serve` of `config`, whose theme's unsubscribe page is broken: a reader's link still shows the default
    theme's page. Yields (its URL, the reader's token)."""
    settings = Settings(config=config, secret=SECRET, webhook_key=None,
                        open_store=lambda: SQLiteStore(config.sendlog_path))
    token = tokens.sign(SECRET, email="ada@example.org", list_name="sample", issue=SAMPLE)
    with running(create_app(settings)) as url:
        status, _, body = request("GET", f"{url}/unsubscribe/{token}")
        assert status == 200 and b'<button type="submit" id="unsubscribe">' in body  # the default theme's page
        yield url, token


def test_a_broken_unsubscribe_page_of_the_theme_still_lets_readers_unsubscribe(sample_root: Path) -> None:
    config = load_config(sample_root)
    page = config.theme_dir / "pages" / "unsubscribe.html.j2"
    page.write_text("{% extends 'pages/base.html.j2' %}{% block content %}{{ nonsense.field }}{% endblock %}",
                    "utf-8")
    with _default_unsubscribe_page(config) as (url, token):
        status, _, body = request("POST", f"{url}/unsubscribe/{token}", data=b"action=unsubscribe",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200 and b"You are unsubscribed" in body


def test_an_unsubscribe_page_of_the_theme_that_raises_falls_back_to_the_default_one(sample_root: Path) -> None:
    config = load_config(sample_root)
    page = config.theme_dir / "pages" / "unsubscribe.html.j2"
    text = page.read_text("utf-8")
    assert "{%- block content %}" in text
    page.write_text(text.replace("{%- block content %}", "{%- block content %}{{ 1 / 0 }}"), "utf-8")
    with _default_unsubscribe_page(config):
        pass
