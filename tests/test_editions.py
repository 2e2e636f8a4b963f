"""One issue in several languages: loading, negotiation, build, check, preview and the archive."""

from __future__ import annotations

import json
import re
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import run_cli

from pipeline.build.builder import build_issue
from pipeline.build.editions import load_editions, pick_language
from pipeline.build.preview import PreviewServer, chromium_pages
from pipeline.config import load_config
from pipeline.errors import IssueError
from pipeline.web.archive import Archive

SAMPLE = "issues/027-2022-04-01"
ATOM = "{http://www.w3.org/2005/Atom}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
BASE = "https://newsletter.example.org/archive/027-2022-04-01/"


def test_the_sample_issue_has_an_english_and_a_korean_edition(sample_root: Path) -> None:
    editions = load_editions(sample_root / SAMPLE, load_config(sample_root))
    assert editions.languages == ("en", "ko") and editions.default.language == "en"
    english, korean = editions.all
    assert korean.subject.startswith("스마트시티 코리아 제27호") and korean.number == english.number == 27
    assert [a.file.relative_to(sample_root / SAMPLE).as_posix() for a in korean.sections[0].articles] == [
        "articles/ko/k-city-network-2022.md"]
    assert [i.path for i in korean.images] == [i.path for i in english.images]  # one file, alt text per language
    assert korean.edition_path == "ko/" and english.edition_path == ""
    assert korean.editions == english.editions == (("en", ""), ("ko", "ko/"))


@pytest.mark.parametrize(("tag", "expected"), [
    ("ko", "ko"), ("ko-KR", "ko"), ("KO_kr", "ko"), ("en-US", "en"), ("en", "en"),
    ("fr", "en"), ("", "en"), (None, "en"), ("<script>", "en"), ("x" * 500, "en"), ("ko-KR-x-" + "a" * 40, "en"),
    ("ko.UTF-8", "en"), ("ko@euro", "en"), ("ko_KR.UTF-8", "en"),  # POSIX locale names, not language tags
])
def test_pick_gives_the_edition_for_a_language_tag_else_the_default(sample_root: Path, tag: str | None,
                                                                    expected: str) -> None:
    editions = load_editions(sample_root / SAMPLE, load_config(sample_root))
    assert editions.pick(tag).language == expected


def test_pick_language_matches_a_regional_edition_by_its_language() -> None:
    assert pick_language("ko", ("en", "ko-KR")) == "ko-KR"
    assert pick_language("pt-BR", ("pt-PT", "pt-BR")) == "pt-BR"
    assert pick_language("de", ("en", "ko")) is None


def test_an_article_missing_from_an_edition_is_an_error_unless_it_leaves_it_out(sample_root: Path) -> None:
    korean = sample_root / SAMPLE / "issue.ko.yaml"
    text = korean.read_text("utf-8")
    korean.write_text(text.replace("      - chuncheon-challenge.md\n", ""), "utf-8")
    config = load_config(sample_root)
    with pytest.raises(IssueError) as caught:
        load_editions(sample_root / SAMPLE, config)
    [problem] = caught.value.problems
    assert problem.file == korean and "article chuncheon-challenge.md of the 'en' edition is missing from the " \
        "'ko' edition" in problem.message and "leaves_out" in problem.fix
    korean.write_text(text.replace("      - chuncheon-challenge.md\n", "") + "leaves_out: [chuncheon-challenge.md]\n",
                      "utf-8")
    editions = load_editions(sample_root / SAMPLE, config)
    assert len([a for s in editions.get("ko").sections for a in s.articles]) == 9  # type: ignore[union-attr]


def test_check_covers_every_edition(sample_root: Path) -> None:
    article = sample_root / SAMPLE / "articles/ko/andong-smart-city.md"
    article.write_text("front matter forgotten\n", "utf-8")
    (sample_root / SAMPLE / "articles/ko/daegu-ai-transport.md").unlink()
    edition = sample_root / SAMPLE / "issue.ko.yaml"
    edition.write_text(edition.read_text("utf-8") + "number: 28\n", "utf-8")
    result = run_cli(sample_root, "check", SAMPLE)
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert "issue.ko.yaml" in result.stderr and "unknown field 'number'" in result.stderr
    edition.write_text(edition.read_text("utf-8").replace("number: 28\n", ""), "utf-8")
    result = run_cli(sample_root, "check", SAMPLE)
    assert result.returncode == 3
    assert f"{article}:1: error: no front matter" in result.stderr
    assert "article articles/ko/daegu-ai-transport.md does not exist" in result.stderr


@pytest.mark.parametrize("name", ["korean", "ko.UTF-8", "ko@euro"])  # the last two: POSIX locale names
def test_an_edition_file_must_be_named_with_a_language(sample_root: Path, name: str) -> None:
    (sample_root / SAMPLE / "issue.ko.yaml").rename(sample_root / SAMPLE / f"issue.{name}.yaml")
    result = run_cli(sample_root, "check", SAMPLE)
    assert result.returncode == 3
    assert f"issue.{name}.yaml: error: '{name}' in the file name is not a language tag" in result.stderr


def test_build_writes_every_edition_and_one_hash_over_all(sample_root: Path) -> None:
    config = load_config(sample_root)
    result = build_issue(sample_root / SAMPLE, config)
    out = result.out
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == {
        "manifest.json", *(f"{lang}/{name}" for lang in ("en", "ko")
                           for name in ("email.html", "email.txt", "email.mjml", "manifest.json"))}
    top = json.loads((out / "manifest.json").read_text("utf-8"))
    assert top["default_language"] == "en" and sorted(top["editions"]) == ["en", "ko"]
    korean = json.loads((out / "ko/manifest.json").read_text("utf-8"))
    assert korean["language"] == "ko" and top["editions"]["ko"]["content_hash"] == korean["content_hash"]
    assert '<html lang="ko"' in (out / "ko/email.html").read_text("utf-8")
    assert result.email.language == "en" and result.manifest == top
    assert korean["sizes"]["encoded_message_bytes"] < config.size_warning_kb * 1000  # Korean No. 27 fits
    article = sample_root / SAMPLE / "articles/ko/andong-smart-city.md"
    article.write_text(article.read_text("utf-8").replace("안동시가", "안동이"), "utf-8")
    again = build_issue(sample_root / SAMPLE, config)
    assert again.manifest["content_hash"] != top["content_hash"]
    assert again.manifest["editions"]["en"]["content_hash"] == top["editions"]["en"]["content_hash"]


def test_cli_build_names_every_edition(sample_root: Path) -> None:
    result = run_cli(sample_root, "build", SAMPLE)
    assert result.returncode == 0, result.stderr
    assert re.search(r"2 editions \(en [\d.]+ KB, ko [\d.]+ KB encoded\)", result.stdout)


def test_emails_link_to_the_other_editions(sample_root: Path) -> None:
    result = build_issue(sample_root / SAMPLE, load_config(sample_root))
    korean, english = result.editions["ko"][0], result.editions["en"][0]
    assert re.search(f'<a href="{BASE}" hreflang="en" lang="en"[^>]*>English</a>', korean.html)
    assert re.search(f'<a href="{BASE}ko/" hreflang="ko" lang="ko"[^>]*>한국어</a>', english.html)
    assert f"한국어: {BASE}ko/" in english.text and f"웹 브라우저에서 이번 호 보기: {BASE}ko/" in korean.text


def test_archive_publishes_each_edition_with_hreflang_and_a_feed_per_language(sample_root: Path,
                                                                            tmp_path: Path) -> None:
    archive = Archive(load_config(sample_root))
    korean = archive.get("027-2022-04-01/ko/")
    english = archive.get("027-2022-04-01/")
    assert korean is not None and english is not None
    for page in (korean.body.decode(), english.body.decode()):
        head = page.split("</head>")[0]
        assert f'<link rel="alternate" hreflang="en" href="{BASE}">' in head
        assert f'<link rel="alternate" hreflang="ko" href="{BASE}ko/">' in head
        assert f'<link rel="alternate" hreflang="x-default" href="{BASE}">' in head
    assert '<html lang="ko"' in korean.body.decode() and '<html lang="en"' in english.body.decode()
    assert 'src="../images/k-city-applications.png"' in korean.body.decode()  # the shared image
    assert 'unsubscribe' not in korean.body.decode()  # the web version has no unsubscribe link (issue 13)
    assert '<a href="../../">지난 호 전체</a>' in korean.body.decode()  # the archive, relative to the edition

    feeds = {name: ET.fromstring(page.body) for name in ("feed.xml", "feed.ko.xml")
             if (page := archive.get(name)) is not None}
    assert feeds["feed.xml"].get(XML_LANG) == "en" and feeds["feed.ko.xml"].get(XML_LANG) == "ko"
    [entry] = feeds["feed.ko.xml"].findall(f"{ATOM}entry")
    assert entry.get(XML_LANG) == "ko" and entry.findtext(f"{ATOM}id") == f"{BASE}ko/"
    assert entry.findtext(f"{ATOM}title", "").startswith("스마트시티 코리아 제27호")
    [entry] = feeds["feed.xml"].findall(f"{ATOM}entry")
    assert entry.get(XML_LANG) == "en" and entry.findtext(f"{ATOM}id") == BASE

    index = archive.get("")
    assert index is not None
    text = index.body.decode()
    assert '<a href="027-2022-04-01/ko/" hreflang="ko" lang="ko">한국어</a>' in text
    assert 'hreflang="ko" title="Smart City Korea Newsletter (한국어)" href="feed.ko.xml"' in text

    written, _ = archive.write(tmp_path / "out")
    names = {p.relative_to(tmp_path / "out").as_posix() for p in written}
    assert {"027-2022-04-01/ko/index.html", "027-2022-04-01/index.html", "feed.ko.xml", "feed.xml",
            "027-2022-04-01/images/k-city-applications.png"} <= names
    assert (tmp_path / "out/027-2022-04-01/ko/index.html").read_bytes() == korean.body


def test_preview_switches_between_editions_in_chromium(sample_root: Path) -> None:
    with PreviewServer(sample_root / SAMPLE, load_config(sample_root)) as server:
        with urllib.request.urlopen(f"{server.url}/ko/email.txt") as response:  # noqa: S310 - 127.0.0.1
            assert response.read().decode().startswith("Smart City Korea Newsletter, 제27호 (2022년 4월 1일)")
        for _, page in chromium_pages(f"{server.url}/", widths=(375,)):
            assert page.evaluate("document.documentElement.lang") == "en"
            page.click('#nl-preview-editions a[hreflang="ko"]')
            page.wait_for_load_state("load")
            assert page.url == f"{server.url}/ko/"
            assert page.evaluate("document.documentElement.lang") == "ko"
            assert "제27호" in page.inner_text("body") and "No. 27" not in page.inner_text("body")
            assert page.get_attribute('#nl-preview-editions a[hreflang="ko"]', "aria-current") == "page"
