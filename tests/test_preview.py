"""Preview server and the email as real headless Chromium lays it out at phone and desktop widths."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline.build.preview import PreviewServer, chromium_pages
from pipeline.config import load_config

SAMPLE = "issues/027-2022-04-01"

# Measures, in the page, what the email must guarantee on a phone. Runs in Chromium.
LAYOUT_PROBE = """() => {
  const vw = document.documentElement.clientWidth;
  const out = {vw, scrollWidth: document.documentElement.scrollWidth, wideImages: [], unstacked: [],
               breakable: [], lowContrast: [], korean: 0};
  out.tooWide = [...document.body.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().right > vw + 0.5).map(e => e.outerHTML.slice(0, 80));
  for (const img of document.images) {
    const r = img.getBoundingClientRect();
    if (r.right > vw + 0.5) out.wideImages.push(img.src);
  }
  for (const col of document.querySelectorAll('[class*="mj-column-per-"]')) {
    const parent = col.closest('table, div[style*="max-width"]').getBoundingClientRect();
    if (vw <= 480 && col.getBoundingClientRect().width < 0.9 * Math.min(parent.width, vw - 40))
      out.unstacked.push(col.className);
  }
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = c => (c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = el => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node; (node = walker.nextNode());) {
    const el = node.parentElement, text = node.textContent.trim();
    if (!text || !el.getClientRects().length || getComputedStyle(el).display === 'none') continue;
    const style = getComputedStyle(el);
    if (parseFloat(style.maxHeight) === 0 || style.opacity === '0') continue;  // the hidden preheader
    if (/[\\uac00-\\ud7a3]/.test(text)) {
      out.korean += 1;
      if (style.wordBreak !== 'keep-all') out.breakable.push(text.slice(0, 30));
    }
    const [a, b] = [lum(rgb(style.color).slice(0, 3)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) out.lowContrast.push(`${text.slice(0, 30)} (${ratio.toFixed(2)})`);
  }
  return out;
}"""


def layout(url: str, *, scheme: str = "light") -> dict[int, dict[str, Any]]:
    found = {}
    for width, page in chromium_pages(url):
        page.emulate_media(color_scheme=scheme)
        found[width] = page.evaluate(LAYOUT_PROBE)
    return found


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_sample_issue_in_chromium(sample_root: Path, scheme: str) -> None:
    # The sample is an English translation: give it Korean text (a list item, a paragraph) to lay out.
    article = sorted((sample_root / SAMPLE / "articles").glob("*.md"))[0]
    korean = ("\n- 국토교통부는 스마트시티 국가시범도시 조성을 추진하고 있습니다.\n\n"
              + "세종과 부산의 국가시범도시는 시민 참여형 리빙랩을 운영합니다. " * 8 + "\n")
    article.write_text(article.read_text("utf-8") + korean, "utf-8")
    config = load_config(sample_root)
    with PreviewServer(sample_root / SAMPLE, config) as server:
        assert server.preview.error is None, server.preview.error
        measured = layout(f"{server.url}/email.html", scheme=scheme)
    for width, m in measured.items():
        assert m["scrollWidth"] <= m["vw"], f"horizontal scroll at {width}px"
        assert m["tooWide"] == [] and m["wideImages"] == [] and m["unstacked"] == []
        assert m["korean"] >= 2 and m["breakable"] == [], f"Korean text may break mid-word at {width}px"
        assert m["lowContrast"] == [], f"unreadable text in {scheme} mode at {width}px"


def test_fixture_theme_has_no_horizontal_scroll(site: Path) -> None:
    with PreviewServer(site / "issues/001-hello", load_config(site)) as server:
        measured = layout(f"{server.url}/email.html")
    assert measured[375]["scrollWidth"] <= 375 and measured[375]["wideImages"] == []


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for_version(server: PreviewServer, after: int) -> None:
    for _ in range(100):
        if server.preview.version > after:
            return
        time.sleep(0.05)
    raise AssertionError("the preview did not rebuild")


def test_serves_html_text_and_images_and_rebuilds_on_change(site: Path) -> None:
    article = site / "issues/001-hello/articles/hello.md"
    with PreviewServer(site / "issues/001-hello", load_config(site), poll_seconds=0.05) as server:
        status, page = get(f"{server.url}/")
        assert status == 200 and b"Hello, readers" in page and b"/__version" in page
        assert b"%%" not in page and b"Hi Sample Subscriber" in page
        status, image = get(f"{server.url}/archive/001-hello/images/square.png")
        assert status == 200 and image.startswith(b"\x89PNG")
        assert get(f"{server.url}/archive/001-hello/../../newsletter.yaml")[0] == 404
        assert b"Unsubscribe:" in get(f"{server.url}/email.txt")[1]

        version = server.preview.version
        article.write_text(article.read_text("utf-8").replace("Hello, readers", "Good morning"), "utf-8")
        wait_for_version(server, version)
        assert b"Good morning" in get(f"{server.url}/email.html")[1]

        version = server.preview.version
        article.write_text("no front matter", "utf-8")
        wait_for_version(server, version)
        status, page = get(f"{server.url}/")
        assert status == 500 and b"no front matter" in page
