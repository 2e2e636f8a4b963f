"""The sample issue No. 27 rendered with the default theme: real Jinja2, mjml-python, premailer and files."""

from __future__ import annotations

import re
import shutil
from email.headerregistry import Address
from html.parser import HTMLParser
from pathlib import Path

import mjml
import pytest

from pipeline.build.issue import load_issue
from pipeline.build.message import encoded_size
from pipeline.build.render import UNSUBSCRIBE, Email, render_email
from pipeline.config import Config, load_config
from pipeline.errors import IssueError

SAMPLE = "issues/027-2022-04-01"
SECTION_TITLES = [
    "Smart City Issue",
    "Smart City Special",
    "Smart City Policy Project",
    "Global Smart City",
    "Smart City Policy Trend",
    "Smart City Literature",
]
TEXT_TAGS = {"h1", "h2", "h3", "p", "li"}


class Parsed(HTMLParser):
    """What the tests look at in the HTML part: links, headings, date/source lines, images, tables, styles."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.headings: list[tuple[str, str]] = []  # (tag, text)
        self.meta_lines: list[str] = []  # the date · source lines (class nl-meta)
        self.hidden_texts: list[str] = []  # text of elements hidden with display:none
        self.style_blocks: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.tables: list[dict[str, str | None]] = []
        self.text_styles: list[tuple[str, str]] = []  # (tag, inline style) of every text element
        self.html_attrs: dict[str, str | None] = {}
        self._open: tuple[str, str, list[str]] | None = None  # (tag, kind, text parts) being collected
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        style = (a.get("style") or "").replace(" ", "")
        if tag == "html":
            self.html_attrs = a
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        elif tag == "img":
            self.images.append(a)
        elif tag == "table":
            self.tables.append(a)
        if tag in TEXT_TAGS:
            self.text_styles.append((tag, style))
        if self._open is not None:
            return
        if tag in ("h1", "h2", "h3"):
            self._open = (tag, "heading", [])
        elif tag == "p" and "nl-meta" in (a.get("class") or "").split():
            self._open = (tag, "meta", [])
        elif tag == "div" and "display:none" in style:
            self._open = (tag, "hidden", [])
        elif tag == "style":
            self._open = (tag, "style", [])

    def handle_endtag(self, tag: str) -> None:
        if self._open is None or self._open[0] != tag:
            return
        _, kind, parts = self._open
        self._open = None
        text = "".join(parts) if kind == "style" else " ".join("".join(parts).split())
        if kind == "heading":
            self.headings.append((tag, text))
        elif kind == "meta":
            self.meta_lines.append(text)
        elif kind == "hidden":
            self.hidden_texts.append(text)
        else:
            self.style_blocks.append(text)

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[2].append(data)

    def texts(self, tag: str) -> list[str]:
        return [text for t, text in self.headings if t == tag]


def render(root: Path, issue: str = SAMPLE) -> tuple[Email, Config]:
    config = load_config(root)
    return render_email(load_issue(root / issue, config), config), config


def use_theme(root: Path, theme: str) -> None:
    """Point newsletter.yaml at another theme folder, as an editor would."""
    config_file = root / "newsletter.yaml"
    text, count = re.subn(r"(?m)^theme: .*$", f"theme: {theme}", config_file.read_text("utf-8"))
    assert count == 1
    config_file.write_text(text, "utf-8")


def text_links(text: str) -> set[str]:
    """Every URL, substitution tag and e-mail address (as mailto:) written in a text part."""
    urls = {u.rstrip(".,;:)>") for u in re.findall(r"https?://\S+|%%[A-Za-z0-9_]+%%", text)}
    return urls | {f"mailto:{a}" for a in re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", text)}


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def sample_root(tmp_path: Path) -> Path:
    """Like conftest's sample_root, but without subscribers/: rendering needs no list (and the repository
    has none until the sample list lands)."""
    repo = Path(__file__).parents[1]
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(repo / "newsletter.yaml", root)
    for folder in ("templates", "issues"):
        shutil.copytree(repo / folder, root / folder)
    return root


@pytest.fixture
def sample(sample_root: Path) -> tuple[Email, Config, Parsed]:
    email, config = render(sample_root)
    return email, config, Parsed(email.html)


def test_sample_renders_with_the_default_theme(sample: tuple[Email, Config, Parsed]) -> None:
    email, config, page = sample
    assert config.theme == "default"
    assert email.subject.startswith("Smart City Korea No. 27")
    assert page.texts("h1") == ["Check out the latest smart city policy information!"]
    assert "No. 27" in email.html and "2022.04.01." in email.html
    assert email.text.startswith("Smart City Korea Newsletter, No. 27 (2022.04.01.)")


def test_doctype_comes_first(sample: tuple[Email, Config, Parsed]) -> None:
    email, _, _ = sample
    assert email.html.lower().startswith("<!doctype html>")
    assert email.html.lower().count("<!doctype") == 1


def test_inlining_keeps_every_outlook_conditional_comment(sample: tuple[Email, Config, Parsed]) -> None:
    email, _, _ = sample
    compiled = mjml.mjml2html(email.mjml, fonts={})
    assert compiled.count("<!--[if mso") > 10
    assert email.html.count("<!--[if mso") == compiled.count("<!--[if mso")
    assert email.html.count("<![endif]-->") == compiled.count("<![endif]-->")


def test_html_language_comes_from_the_issue(sample: tuple[Email, Config, Parsed], sample_root: Path) -> None:
    _, _, page = sample
    assert page.html_attrs.get("lang") == "en"
    issue_file = sample_root / SAMPLE / "issue.yaml"
    issue_file.write_text(issue_file.read_text("utf-8").replace("language: en", "language: ko"), "utf-8")
    (sample_root / SAMPLE / "issue.ko.yaml").unlink()  # the main edition is the Korean one now
    korean, _ = render(sample_root)
    assert Parsed(korean.html).html_attrs.get("lang") == "ko"


def test_every_layout_table_is_presentational(sample: tuple[Email, Config, Parsed]) -> None:
    _, _, page = sample
    assert len(page.tables) > 10
    assert [t for t in page.tables if t.get("role") != "presentation"] == []


def test_every_image_has_alt_text(sample: tuple[Email, Config, Parsed]) -> None:
    _, _, page = sample
    assert page.images, "the sample issue has a chart"
    assert all((img.get("alt") or "").strip() for img in page.images)
    chart = page.images[0]
    assert chart["src"] == "https://newsletter.example.org/archive/027-2022-04-01/images/k-city-applications.png"
    assert "80 in 2020 and 111 in 2021" in (chart["alt"] or "")


def test_preheader_is_in_a_hidden_element(sample: tuple[Email, Config, Parsed]) -> None:
    email, _, page = sample
    assert email.preheader.startswith("K-City Network invites 2022 projects")
    assert flat(email.preheader) in page.hidden_texts


def test_dark_mode_styles_survive_inlining(sample: tuple[Email, Config, Parsed]) -> None:
    _, _, page = sample
    dark = [s for s in page.style_blocks if "prefers-color-scheme: dark" in s]
    assert len(dark) == 1
    assert re.search(r"\.nl-card p[^{]*\{ color: #e6ebf0 !important", dark[0])
    assert any("[data-ogsc] .nl-card" in s for s in page.style_blocks)


def test_text_elements_keep_korean_words_whole(sample: tuple[Email, Config, Parsed]) -> None:
    _, _, page = sample
    tags = {tag for tag, _ in page.text_styles}
    assert tags == TEXT_TAGS
    assert [(tag, style) for tag, style in page.text_styles if "word-break:keep-all" not in style] == []


def test_unsubscribe_link_in_both_parts(sample: tuple[Email, Config, Parsed]) -> None:
    email, _, page = sample
    assert UNSUBSCRIBE in page.links
    assert f"Unsubscribe: {UNSUBSCRIBE}" in email.text
    assert "unsubscribe_url" in email.placeholders


def test_text_part_has_every_headline_date_line_and_link_of_the_html(sample: tuple[Email, Config, Parsed]) -> None:
    email, _, page = sample
    text = flat(email.text)
    headlines = [heading for _, heading in page.headings]
    assert len(headlines) == 1 + 6 + 10 + 3  # masthead, sections, articles, literature
    assert [h for h in headlines if h not in text] == []
    assert len(page.meta_lines) == 10 + 6  # one per article, authors + details per literature entry
    assert [m for m in page.meta_lines if m not in text] == []
    assert len(set(page.links)) == 5  # web version, Korean edition, archive, contact address, unsubscribe
    assert set(page.links) - text_links(email.text) == set()


def test_every_section_and_entry_of_the_seed_is_there(sample: tuple[Email, Config, Parsed]) -> None:
    _, _, page = sample
    assert page.texts("h2") == SECTION_TITLES
    h3 = page.texts("h3")
    assert [h for h in h3 if h[:3] in ("1. ", "2. ", "3. ")] == [
        "1. 240 smart solutions that changed citizens' daily lives",
        "2. Smarter smart cities become a stepping stone for innovative companies",
        "3. From developing to developed countries: “Please share your experience and know-how”",
    ]
    for start in ("MOLIT: roads in every region", "Daegu expands", "Andong, a city of traditional culture",
                  "Chuncheon selected", "Smart City Services Catalogue", "A discourse analysis of Busan",
                  "Carbon-neutral architectural"):
        assert sum(h.startswith(start) for h in h3) == 1, start
    email = sample[0]
    for kicker in ("[Feature series] Four years of smart cities", "[Major achievements of the smart city regulatory"):
        assert kicker in email.html and kicker in email.text


def test_no_translation_artifacts_left(sample_root: Path) -> None:
    sources = [p.read_text("utf-8") for p in (sample_root / SAMPLE).rglob("*") if p.suffix in (".md", ".yaml")]
    assert len(sources) == 22  # issue.yaml and 10 articles, in English and in Korean
    for source in sources:
        assert "XNUMX" not in source
        assert not re.search(r"December 20\d\d\.", source)


def test_encoded_size_is_under_the_warning(sample: tuple[Email, Config, Parsed]) -> None:
    email, config, _ = sample
    values = {"unsubscribe_url": "https://newsletter.example.org/unsubscribe/" + "x" * 120, "name": "Ada"}
    size = encoded_size(email, sender=Address(config.sender_name, addr_spec=config.sender_email),
                        sample_values=values)
    assert size < config.size_warning_kb * 1000
    assert size < 60_000  # the theme's own target, leaving room for longer issues


def test_rendering_twice_gives_identical_bytes(sample_root: Path) -> None:
    first, _ = render(sample_root)
    second, _ = render(sample_root)
    assert first.html.encode() == second.html.encode()
    assert first.text.encode() == second.text.encode()
    assert first.content_hash == second.content_hash


def test_a_second_theme_needs_only_a_folder_and_the_config(sample_root: Path) -> None:
    shutil.copytree(Path(__file__).parent / "fixtures/site/templates/plain", sample_root / "templates/letter")
    use_theme(sample_root, "letter")
    email, config = render(sample_root)
    assert config.theme == "letter"
    page = Parsed(email.html)
    assert page.texts("h1") == ["Smart City Korea Newsletter No. 27"]
    assert page.texts("h2") == SECTION_TITLES
    assert "Hi %%name%%" in email.text
    assert "K-City Network: 2022 international call opens on March 29" in email.text
    assert 'class="title"' in email.html and "nl-card" not in email.html


def test_default_theme_renders_another_newsletter(site: Path) -> None:
    """The fixture newsletter: an article with a link, a linked literature entry, a contact without phone."""
    shutil.copytree(Path(__file__).parents[1] / "templates/default", site / "templates/default")
    use_theme(site, "default")
    email, _ = render(site, "issues/001-hello")
    page = Parsed(email.html)
    assert page.texts("h3") == ["Hello, readers", "A Useful Paper"]
    for link in ("https://example.org/hello", "https://example.org/announce", "https://example.org/paper"):
        assert link in page.links
    assert set(page.links) - text_links(email.text) == set()
    assert "Read more: https://example.org/hello" in email.text
    assert "Phone:" not in email.text and "Phone:" not in email.html


def test_an_undefined_variable_names_the_template_and_line(sample_root: Path) -> None:
    partial = sample_root / "templates/default/partials/article.mjml.j2"
    lines = partial.read_text("utf-8").splitlines(keepends=True)
    number = next(i for i, line in enumerate(lines) if "{{ article.title }}</h3>" in line)
    lines[number] = lines[number].replace("article.title", "article.headline")
    partial.write_text("".join(lines), "utf-8")
    with pytest.raises(IssueError) as caught:
        render(sample_root)
    (problem,) = caught.value.problems
    assert problem.file == partial
    assert problem.line == number + 1
    assert "headline" in problem.message


def test_a_jinja_syntax_error_names_the_template_and_line(sample_root: Path) -> None:
    partial = sample_root / "templates/default/partials/footer.mjml.j2"
    text = partial.read_text("utf-8")
    partial.write_text(text.replace("{%- endif %}", "{%- endiff %}", 1), "utf-8")
    with pytest.raises(IssueError) as caught:
        render(sample_root)
    (problem,) = caught.value.problems
    assert problem.file == partial
    assert problem.line == text[: text.index("{%- endif %}")].count("\n") + 1
    assert "endiff" in problem.message


def test_broken_mjml_reports_line_and_column(sample_root: Path) -> None:
    masthead = sample_root / "templates/default/partials/masthead.mjml.j2"
    text = masthead.read_text("utf-8")
    masthead.write_text(text.replace("</h1>\n        </mj-text>", "</h1>\n", 1), "utf-8")
    with pytest.raises(IssueError) as caught:
        render(sample_root)
    (problem,) = caught.value.problems
    assert problem.file is not None and "email.mjml" in problem.file.name
    assert problem.line is not None and problem.line > 10
    assert problem.column == 9  # the indented <mj-text> that is never closed
    assert "<mj-text" in problem.message


@pytest.mark.parametrize("css", ["@import url(https://fonts.example.org/a.css);\n",
                                 ".masthead { background: url('https://cdn.example.org/bg.png'); }\n"])
def test_inline_css_that_would_fetch_is_refused(sample_root: Path, css: str) -> None:
    path = sample_root / "templates/default/inline.css"
    path.write_text(css + path.read_text("utf-8"), "utf-8")
    with pytest.raises(IssueError, match="may not use @import or remote url"):
        render(sample_root)


def test_premailer_cannot_fetch_anything() -> None:
    """Even a <link> stylesheet in the HTML cannot make premailer reach the network: its requests is a refusal."""
    from pipeline.build.render import _premailer

    page = '<html><head><link rel="stylesheet" href="https://cdn.example.org/x.css"></head><body></body></html>'
    with pytest.raises(IssueError, match="premailer tried to fetch"):
        _premailer()(page, allow_network=True).transform()
