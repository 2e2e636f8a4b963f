"""Issue 10, the rendering half: a hostile Korean issue (tests/fixtures/korean/901-hostile) laid out by real
mjml-python, premailer and headless Chromium; its text part; its MIME message; the font warning."""

from __future__ import annotations

import re
import shutil
from email.headerregistry import Address
from pathlib import Path
from typing import Any

import pytest

from pipeline.build.checks import check_issue, message_size, sample_values
from pipeline.build.fonts import font_warning
from pipeline.build.issue import load_issue
from pipeline.build.message import mime_message
from pipeline.build.preview import PreviewServer, chromium_pages, screenshots
from pipeline.build.render import Email, markdown_to_html, render_email
from pipeline.build.textpart import width
from pipeline.config import Config, load_config
from pipeline.errors import IssueError

REPO = Path(__file__).parents[1]
HOSTILE = "issues/901-hostile"

# Measured in Chromium: page width, every element past the right edge, Korean text that may break inside a
# word, and each image's shown width against its pixels.
PROBE = """() => {
  const vw = document.documentElement.clientWidth;
  const out = {vw, scrollWidth: document.documentElement.scrollWidth, breakable: [], korean: 0};
  out.tooWide = [...document.body.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().right > vw + 0.5).map(e => e.outerHTML.slice(0, 80));
  out.images = [...document.images].map(i => [i.src.split('/').pop(), i.clientWidth, i.naturalWidth]);
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node; (node = walker.nextNode());) {
    const el = node.parentElement, style = getComputedStyle(el);
    if (!/[\\uac00-\\ud7a3]/.test(node.textContent) || !el.getClientRects().length) continue;
    if (parseFloat(style.maxHeight) === 0) continue;  // the hidden preheader
    out.korean += 1;
    if (style.wordBreak !== 'keep-all') out.breakable.push(node.textContent.trim().slice(0, 30));
  }
  out.tables = [...document.querySelectorAll('table.nl-table')].map(t => {
    const th = getComputedStyle(t.querySelector('th'));
    return {right: t.getBoundingClientRect().right, border: th.borderTopWidth, padding: th.paddingLeft,
            headerBackground: th.backgroundColor, marginBottom: getComputedStyle(t).marginBottom};
  });
  return out;
}"""


@pytest.fixture
def korean_root(tmp_path: Path) -> Path:
    """The repository's config and theme with the hostile Korean fixture issues as issues/."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "newsletter.yaml", root)
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(REPO / "tests/fixtures/korean", root / "issues")
    return root


def render(root: Path) -> tuple[Email, Config]:
    config = load_config(root)
    return render_email(load_issue(root / HOSTILE, config), config), config


def test_hostile_korean_issue_never_scrolls_sideways(korean_root: Path) -> None:
    with PreviewServer(korean_root / HOSTILE, load_config(korean_root)) as server:
        assert server.preview.error is None, server.preview.error
        measured: dict[int, Any] = {w: page.evaluate(PROBE)
                                    for w, page in chromium_pages(f"{server.url}/email.html", (320, 375, 600))}
    for width_px, m in measured.items():
        assert m["scrollWidth"] == m["vw"] == width_px, f"horizontal scroll at {width_px}px"
        assert m["tooWide"] == [], width_px
        assert m["korean"] > 40 and m["breakable"] == [], f"Korean may break mid-word at {width_px}px"
        assert len(m["tables"]) == 3 and all(t["right"] <= width_px for t in m["tables"])
        for name, shown, pixels in m["images"]:
            assert shown <= pixels / 2, f"{name} shown {shown}px wide from {pixels}px at {width_px}px"
    images = {name: shown for name, shown, _ in measured[600]["images"]}
    assert images == {"badge.png": 60, "banner-wide.png": 550, "photo-700.png": 350}  # 552 minus the border
    table = measured[375]["tables"][0]
    assert table["border"] == "1px" and table["padding"] == "6px" and table["marginBottom"] == "16px"
    assert table["headerBackground"] == "rgb(230, 238, 245)"


def test_korean_emphasis_and_angle_brackets(korean_root: Path) -> None:
    email, _ = render(korean_root)
    assert "<strong>「K-City Network」</strong>의" in email.html
    assert "<strong>'스마트시티 챌린지'</strong>는" in email.html
    assert "<em>「스마트 솔루션」</em>을" in email.html
    assert "&lt;K-City Network&gt;는" in email.html and "**" not in email.html
    assert "<K-City Network>는" in email.text and "**" not in email.text


@pytest.mark.parametrize(("source", "html"), [
    ("**「K-City Network」**의", "<strong>「K-City Network」</strong>의"),
    ("**'챌린지'**는", "<strong>'챌린지'</strong>는"),
    ("국토부는**「공모」**를", "국토부는<strong>「공모」</strong>를"),
    ("*(주)*에서", "<em>(주)</em>에서"),
    # spaced languages keep CommonMark's behaviour
    ("**\"quoted\"**text", "**&quot;quoted&quot;**text"),
    ("foo_bar_baz and a*b*c", "foo_bar_baz and a<em>b</em>c"),
    ("<b>not bold</b> <https://example.org>", '&lt;b&gt;not bold&lt;/b&gt; <a href="https://example.org">'),
])
def test_cjk_friendly_emphasis_rule(source: str, html: str) -> None:
    assert html in markdown_to_html(source)


def test_long_runs_get_break_opportunities() -> None:
    html = markdown_to_html("주소 https://example.org/a/very/long/path?x=1&y=2 와 " + "가" * 60)
    assert "https://<wbr>example<wbr>.org/<wbr>" in html and "<wbr>?x<wbr>=1<wbr>&amp;y" in html
    assert re.search("(가{10}<wbr>){5}가{10}", html)
    assert markdown_to_html("짧은 문장입니다.") == "<p>짧은 문장입니다.</p>\n"


def test_text_part_layout(korean_root: Path) -> None:
    email, _ = render(korean_root)
    text = email.text
    lines = text.splitlines()
    # an aligned table: every row's cells start where the header's do, in display columns
    header = lines.index("연도  신청 국가  신청 건수  지원 도시")
    assert lines[header + 1] == "----  ---------  ---------  ----------------"
    assert lines[header + 2] == "2020     23개국       80건  12개국 11개 도시"
    assert lines[header + 4] == "" and lines[header + 5].startswith("표 다음 문단은")  # a blank line after
    # too wide for 72 columns: one "header: value" line per cell, rows apart
    assert "연도: 2022\n신청 국가: 공모 중\n신청 건수: 접수 중\n지원 도시: 미정\n" in text
    assert "지원 규모: 총 42억 원\n\n연도: 2022" in text
    # nested lists, ordered numbers, block quotes
    assert "- 2020년: 23개국 80건 신청\n  - 12개국 11개 도시 지원\n  - 총 33억 원\n- 2021년" in text
    assert "1. 스마트시티 계획 수립 지원\n2. 스마트 솔루션 해외 실증\n\n> 올해 공모는" in text
    # one copy of each URL, never broken
    autolink = "https://example.org/press/k-city-network-2022/notice?id=2022-03-29&lang=ko"
    assert text.count(autolink) == 1 and text.count("dtl.jsp?id=95086745") == 1
    long_url = "https://www.molit.go.kr/USR/NEWS/m_71/dtl.jsp?lcmspage=1&id=95086745&search_section=all"
    assert long_url in text
    articles = text[text.index("스마트시티 이슈\n"): text.index("-" * 70)]
    over = [line for line in articles.splitlines()
            if width(line) > 72 and " " in line.strip() and not line.startswith("    ")]
    assert over == [], "only a single unbreakable word (a URL) or a code line may pass 72 columns"


def test_an_mjml_error_names_the_article_line(korean_root: Path) -> None:
    article = korean_root / HOSTILE / "articles/badge.md"
    text = article.read_text("utf-8")
    article.write_text(text + "\n둘째 문단에\x0b제어 문자가 있다.\n", "utf-8")
    with pytest.raises(IssueError) as caught:
        render(korean_root)
    (problem,) = caught.value.problems
    assert problem.file == article and problem.line == len(text.split("\n")) + 1
    assert "U+000B" in problem.message and "column 7" in problem.message


def test_images_warnings_and_weight(korean_root: Path) -> None:
    email, _ = render(korean_root)
    assert re.search(r'<img[^>]*badge\.png[^>]*width="60"', email.html)

    def image_warnings() -> list[tuple[str, str, bool]]:
        problems = check_issue(korean_root / HOSTILE, load_config(korean_root))
        return [(p.file.name if p.file else "", p.message, p.blocking) for p in problems if "image" in p.message]

    assert image_warnings() == [
        ("badge.md", "image images/badge.png is 120 px wide: it is shown 60 px wide, less than half the 552 px "
         "column", False),
        ("banner.md", "image images/banner-wide.png is 2400 px wide, more than twice the 552 px column", False),
    ]
    config_file = korean_root / "newsletter.yaml"
    config_file.write_text(config_file.read_text("utf-8") + "images:\n  max_kb: 0.1\n", "utf-8")
    heavy = [(file, message) for file, message, _ in image_warnings() if "weighs" in message]
    assert heavy == [("banner.md", "image images/banner-wide.png weighs 0 KB, over images.max_kb (0.1)"),
                     ("photo.md", "image images/photo-700.png weighs 0 KB, over images.max_kb (0.1)")]
    (korean_root / HOSTILE / "images/badge.png").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")  # WebP named .png
    assert [w for w in image_warnings() if "badge" in w[1]][0] == (
        "badge.md", "image images/badge.png is not a PNG, JPEG or GIF file (by its first bytes): some mail clients "
        "would show a broken image", False)


def test_sample_image_keeps_filling_the_column(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "newsletter.yaml", root)
    for folder in ("templates", "issues"):
        shutil.copytree(REPO / folder, root / folder)
    config = load_config(root)
    email = render_email(load_issue(root / "issues/027-2022-04-01", config), config)
    assert re.search(r'<img[^>]*k-city-applications\.png[^>]*width="550"', email.html)
    assert "mj-full-width-mobile" in email.html  # the 1104 px chart still fills a phone


def test_mime_lines_and_korean_size(korean_root: Path) -> None:
    email, config = render(korean_root)
    values = sample_values(email, config)
    message = mime_message(email, sender=Address("스마트시티 코리아", addr_spec=config.sender_email),
                           to=("홍길동", "hong@example.org"), values=values,
                           headers={"List-Unsubscribe": f"<{values['unsubscribe_url']}>, <mailto:u@example.org>"})
    raw = message.as_bytes()
    long_lines = [line for line in raw.split(b"\r\n") if len(line) > 76]
    assert [line[:27] for line in long_lines] == [b"List-Unsubscribe: <https://"]  # a URL is not folded
    words = re.findall(rb"=\?[^?]+\?[bBqQ]\?[^?]*\?=", raw)
    assert words and max(len(w) for w in words) <= 75
    assert b"=EC=B5=9C=EC=8B=A0" in raw  # Korean as quoted-printable: 9 bytes a syllable
    size = message_size(email, config)
    korean = len(re.findall("[\uac00-\ud7a3]", email.html + email.text))
    assert size > len(email.html.encode()) + len(email.text.encode()) + 3 * korean  # counted after encoding
    assert size < config.size_warning_kb * 1000


def test_font_warning() -> None:
    assert font_warning("한국어 English 「괄호」 😀 \u034f\u200c") is None
    warning = font_warning("상형 문자 \U00013000")
    assert warning is not None and "U+13000" in warning and "fonts-noto-cjk" in warning


def test_screenshot_warns_about_characters_without_a_font(korean_root: Path, tmp_path: Path) -> None:
    article = korean_root / HOSTILE / "articles/badge.md"
    article.write_text(article.read_text("utf-8") + "\n이집트 상형 문자 \U00013000 는 글꼴이 없다.\n", "utf-8")
    warnings: list[str] = []
    written = screenshots(korean_root / HOSTILE, load_config(korean_root), tmp_path / "shots", warn=warnings.append)
    assert [p.name for p in written] == ["901-hostile-375.png", "901-hostile-600.png"]
    assert len(warnings) == 1 and "U+13000" in warnings[0]
