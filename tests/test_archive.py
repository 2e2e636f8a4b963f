"""The archive's pages without a server: selection, order, web version, images, feed, static files."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from pipeline.config import Config, load_config
from pipeline.web.archive import Archive, discover, issue_files, issue_page

FIXTURES = Path(__file__).parent / "fixtures"
ATOM = "{http://www.w3.org/2005/Atom}"


def with_second_issue(site: Path) -> Config:
    shutil.copytree(FIXTURES / "extra-issues" / "002-second", site / "issues" / "002-second")
    return load_config(site)


def test_newest_first_and_only_the_selected(site: Path) -> None:
    config = with_second_issue(site)
    issues, problems = discover(config)
    assert [i.slug for i in issues] == ["002-second", "001-hello"] and problems == []
    assert [i.slug for i in discover(config, slugs={"001-hello"})[0]] == ["001-hello"]


def test_a_broken_issue_is_left_out_with_a_warning(site: Path) -> None:
    config = with_second_issue(site)
    (site / "issues/002-second/issue.yaml").write_text("number: [\n", "utf-8")
    issues, problems = discover(config)
    assert [i.slug for i in issues] == ["001-hello"]
    assert len(problems) == 1 and not problems[0].blocking and "002-second" in problems[0].message


def test_web_version_has_no_personal_tags_and_relative_links(site: Path) -> None:
    config = load_config(site)
    issue = discover(config)[0][0]
    page = issue_page(issue, config)
    assert "%%" not in page and "Hi </p>" in page  # the greeting's name left empty
    assert 'href="../unsubscribe/"' in page and 'href="./"' in page  # neutral unsubscribe, view-in-browser
    assert 'src="images/square.png"' in page
    assert "archive-base.invalid" not in page and "Hello, readers" in page


def test_only_referenced_images_are_published(site: Path) -> None:
    config = with_second_issue(site)
    second = next(i for i in discover(config)[0] if i.slug == "002-second")
    assert list(issue_files(second)) == ["images/dot.png"]  # not NOTES.txt, not issue.yaml
    archive = Archive(config)
    assert archive.get("002-second/NOTES.txt") is None
    assert archive.get("002-second/issue.yaml") is None
    assert archive.get("002-second/../../newsletter.yaml") is None
    image = archive.get("002-second/images/dot.png")
    assert image is not None and image.media_type == "image/png"


def test_feed_is_atom_with_absolute_links(site: Path) -> None:
    config = with_second_issue(site)
    page = Archive(config).get("feed.xml")
    assert page is not None
    root = ET.fromstring(page.body)
    assert root.tag == f"{ATOM}feed"
    entries = root.findall(f"{ATOM}entry")
    assert [e.findtext(f"{ATOM}id") for e in entries] == ["https://news.example.org/archive/002-second/",
                                                          "https://news.example.org/archive/001-hello/"]
    assert entries[0].findtext(f"{ATOM}updated") == "2026-02-12T00:00:00Z"
    assert root.findtext(f"{ATOM}updated") == "2026-02-12T00:00:00Z"


def test_static_files_are_the_served_pages(site: Path, tmp_path: Path) -> None:
    config = with_second_issue(site)
    archive = Archive(config, published=lambda: {"001-hello"})
    written, problems = archive.write(tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        "001-hello/images/square.png", "001-hello/index.html", "feed.xml", "index.html", "unsubscribe/index.html"]
    for rel, path in (("", "index.html"), ("feed.xml", "feed.xml"), ("001-hello/", "001-hello/index.html"),
                      ("unsubscribe/", "unsubscribe/index.html")):
        page = archive.get(rel)
        assert page is not None and page.body == (out / path).read_bytes()
    assert archive.get("002-second/") is None


def test_a_rewrite_removes_what_is_no_longer_published_and_nothing_else(site: Path, tmp_path: Path) -> None:
    config = with_second_issue(site)
    out = tmp_path / "out"
    Archive(config, published=lambda: {"001-hello", "002-second"}).write(out)
    assert (out / "002-second/index.html").is_file()
    (out / "robots.txt").write_text("User-agent: *\n", "utf-8")  # the operator's own file
    written, _ = Archive(config, published=lambda: {"001-hello"}).write(out)
    assert not (out / "002-second").exists()
    assert (out / "001-hello/images/square.png").is_file() and (out / "robots.txt").is_file()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [".archive-files", "robots.txt", *(p.relative_to(out).as_posix() for p in written)])


def test_sample_issue_web_version_references_only_published_images(tmp_path: Path) -> None:
    """The repository's own newsletter (its default theme and sample issue), not only the test fixture."""
    import re

    repo = Path(__file__).parent.parent
    shutil.copy(repo / "newsletter.yaml", tmp_path)
    for folder in ("templates", "issues"):
        shutil.copytree(repo / folder, tmp_path / folder)
    config = load_config(tmp_path)
    archive = Archive(config)
    issues, problems = archive.issues()
    assert issues and problems == []
    for issue in issues:
        page = archive.get(f"{issue.slug}/")
        assert page is not None
        text = page.body.decode()
        assert "%%" not in text and "archive-base.invalid" not in text
        sources = re.findall(r'<img[^>]*\bsrc="([^"]+)"', text)
        assert sources
        for src in sources:
            assert not src.startswith(("http:", "https:", "/")), src  # relative: the archive's own copy
            assert archive.get(f"{issue.slug}/{src}") is not None, src
