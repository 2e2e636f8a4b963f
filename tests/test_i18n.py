"""The theme speaks the issue's language: catalogues, dates and numbers, and `check` on missing strings."""

from __future__ import annotations

import datetime as dt
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import run_cli

from pipeline.build.i18n import catalogue_path, format_day, format_number, missing_messages, translations
from pipeline.build.issue import load_issue
from pipeline.build.render import render_email
from pipeline.config import load_config
from pipeline.web.archive import Archive

SAMPLE = "issues/027-2022-04-01"
ENGLISH_FIXED = ("View this issue in your browser", "Contact us", "This newsletter", "View in browser",
                 "All past issues", ">Unsubscribe<", "No. 27", "You receive", "E-mail:", "Phone:")


def visible_text(html: str) -> str:
    body = html.split("<body", 1)[1]
    return re.sub(r"<[^>]+>", " ", re.sub(r"<(style|script)\b.*?</\1>", " ", body, flags=re.S))


def test_a_korean_issue_has_korean_fixed_strings_in_the_html_and_the_text(sample_root: Path) -> None:
    folder = sample_root / SAMPLE
    (folder / "issue.yaml").write_text(
        "number: 27\ndate: 2022-04-01\nlanguage: ko\n" + (folder / "issue.ko.yaml").read_text("utf-8"), "utf-8")
    (folder / "issue.ko.yaml").unlink()
    for article in (folder / "articles" / "ko").iterdir():
        article.replace(folder / "articles" / article.name)
    config = load_config(sample_root)
    issue = load_issue(folder, config)
    assert issue.language == "ko" and issue.editions == ()
    email = render_email(issue, config)
    assert '<html lang="ko"' in email.html
    shown = visible_text(email.html)
    for korean in ("제27호", "2022년 4월 1일", "웹 브라우저에서 이번 호 보기", "문의", "이 뉴스레터", "웹에서 보기",
                   "지난 호 전체", "수신 거부", "이메일:", "전화:", "2022년 3월 29일 · 국토교통부"):
        assert korean in shown, korean
    for english in ENGLISH_FIXED:
        assert english not in email.html, english
    assert email.text.startswith("Smart City Korea Newsletter, 제27호 (2022년 4월 1일)\n")
    for line in ("웹 브라우저에서 이번 호 보기: ", "\n문의\n", "수신 거부: %%unsubscribe_url%%",
                 "[이미지: K-City Network"):
        assert line in email.text, line
    for english in ("View this issue", "Contact us", "Unsubscribe:", "No. 27", "[Image:", "You receive"):
        assert english not in email.text, english


def test_the_english_edition_reads_as_it_always_did(sample_root: Path) -> None:
    config = load_config(sample_root)
    email = render_email(load_issue(sample_root / SAMPLE, config), config)
    assert "No. 27" in email.html and "2022.04.01." in email.html and "Contact us" in email.html
    assert email.text.startswith("Smart City Korea Newsletter, No. 27 (2022.04.01.)\n")
    assert "제27호" not in email.html


def test_dates_and_numbers_follow_the_language() -> None:
    day = dt.date(2022, 4, 1)
    assert format_day(day, "y년 M월 d일", "ko") == "2022년 4월 1일"
    assert format_day(day, "yyyy.MM.dd.", "en") == "2022.04.01."
    assert format_day(day, "d MMMM y", "en") == "1 April 2022"
    assert format_day(day, "y년 M월 d일 EEEE", "ko-KR") == "2022년 4월 1일 금요일"
    assert format_day(None, "yyyy", "ko") == ""
    assert format_number(1234567, "ko") == "1,234,567" and format_number(1234567, "de") == "1.234.567"
    assert format_day(day, "d MMMM y", "not a language") == "1 April 2022"  # falls back to English names


def test_translations_by_tag_with_fallback_and_reloaded_when_the_catalogue_changes(sample_root: Path) -> None:
    theme = sample_root / "templates" / "default"
    assert translations(theme, "ko").gettext("Unsubscribe") == "수신 거부"
    assert translations(theme, "ko-KR").gettext("Unsubscribe") == "수신 거부"  # the language's catalogue
    assert translations(theme, "fr").gettext("Unsubscribe") == "Unsubscribe"  # no catalogue: as written
    assert translations(theme, "ko").gettext("No. %(number)s") % {"number": 27} == "제27호"
    po = catalogue_path(theme, "ko")
    po.write_text(po.read_text("utf-8").replace('msgstr "수신 거부"', 'msgstr "구독 해지"'), "utf-8")
    stat = po.stat()
    os.utime(po, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert translations(theme, "ko").gettext("Unsubscribe") == "구독 해지"


def test_the_shipped_catalogues_cover_every_string_of_the_theme_and_pages() -> None:
    theme = Path(__file__).parent.parent / "templates" / "default"
    assert missing_messages(theme, "ko") == []
    assert missing_messages(theme, "en") == []  # English is the language the messages are written in


def test_a_language_without_a_catalogue_is_one_warning(sample_root: Path) -> None:
    theme = sample_root / "templates" / "default"
    problems = missing_messages(theme, "ja")
    assert len(problems) == 1 and not problems[0].blocking
    assert problems[0].file == theme / "locale/ja/LC_MESSAGES/messages.po"
    assert "no catalogue for 'ja'" in problems[0].message


def test_check_reports_strings_missing_in_the_issue_language(sample_root: Path) -> None:
    theme = sample_root / "templates" / "default"
    footer = theme / "partials" / "footer.mjml.j2"
    footer.write_text(footer.read_text("utf-8").replace(
        '<p class="nl-foot-title">{{ _("Contact us") }}</p>',
        '<p class="nl-foot-title">{{ _("Contact us") }}</p><p>{{ _("Office hours: 9 to 6") }}</p>'), "utf-8")
    po = catalogue_path(theme, "ko")
    po.write_text(po.read_text("utf-8").replace('msgstr "이 뉴스레터"', 'msgstr ""'), "utf-8")
    result = run_cli(sample_root, "check", SAMPLE)
    assert result.returncode == 0, result.stderr  # a warning: the issue can still go out
    assert "string 'Office hours: 9 to 6' (footer.mjml.j2:" in result.stderr
    assert "is not in the catalogue, so it shows in English" in result.stderr
    assert "string 'This newsletter' (footer.mjml.j2:" in result.stderr and "is not translated" in result.stderr
    assert str(po) in result.stderr and "ok (2 warning(s))" in result.stdout


def test_archive_index_feed_and_unsubscribe_page_speak_the_newsletter_language(sample_root: Path) -> None:
    config_file = sample_root / "newsletter.yaml"
    config_file.write_text(config_file.read_text("utf-8").replace("language: en", "language: ko"), "utf-8")
    archive = Archive(load_config(sample_root))
    index = archive.get("")
    assert index is not None
    text = index.body.decode()
    assert '<html lang="ko">' in text and "Smart City Korea Newsletter: 지난 호" in text and "Atom 피드" in text
    assert 'href="027-2022-04-01/en/"' not in text  # the main (English) edition stays at the issue's URL
    assert 'href="027-2022-04-01/ko/">스마트시티 코리아 제27호' in text  # the default edition is Korean now
    unsubscribe = archive.get("unsubscribe/")
    assert unsubscribe is not None and "수신 거부" in unsubscribe.body.decode()
    feed = archive.get("feed.xml")
    assert feed is not None
    root = ET.fromstring(feed.body)
    assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == "ko"
    assert archive.get("feed.en.xml") is not None


def test_serve_unsubscribe_pages_speak_the_newsletter_language(sample_root: Path) -> None:
    from loop_support import SECRET, request, running

    from pipeline import tokens
    from pipeline.web.app import Settings, create_app

    config_file = sample_root / "newsletter.yaml"
    config_file.write_text(config_file.read_text("utf-8").replace("language: en", "language: ko"), "utf-8")
    config = load_config(sample_root)
    from pipeline.store._sqlite import SQLiteStore

    settings = Settings(config=config, secret=SECRET, webhook_key=None,
                        open_store=lambda: SQLiteStore(config.sendlog_path))
    token = tokens.sign(SECRET, email="a<b>@example.org", list_name="sample", issue="027-2022-04-01")
    with running(create_app(settings)) as url:
        status, _, body = request("GET", f"{url}/unsubscribe/{token}")
        page = body.decode()
        assert status == 200 and '<html lang="ko">' in page
        assert "Smart City Korea Newsletter 수신을 거부하시겠습니까?" in page
        assert "<strong>a&lt;b&gt;@example.org</strong> 주소로 Smart City Korea Newsletter 발송을 중단할까요?" in page
        assert ">수신 거부</button>" in page and "Unsubscribe" not in page
        status, _, body = request("POST", f"{url}/unsubscribe/{token}", data=b"action=unsubscribe",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200 and "수신 거부되었습니다" in body.decode() and ">다시 구독하기</button>" in body.decode()
        status, _, body = request("GET", f"{url}/unsubscribe/not-a-token")
        assert status == 400 and "올바르지 않은 링크" in body.decode() and "smartcity@auri.re.kr" in body.decode()


def test_a_translation_that_breaks_its_placeholders_shows_in_english_and_check_says_why(sample_root: Path) -> None:
    theme = sample_root / "templates" / "default"
    po = catalogue_path(theme, "ko")
    po.write_text(po.read_text("utf-8").replace('msgstr "제%(number)s호"', 'msgstr "제%(numero)s호 100%"'), "utf-8")
    assert translations(theme, "ko").gettext("No. %(number)s") == "No. %(number)s"
    assert translations(theme, "ko").gettext("Unsubscribe") == "수신 거부"  # the rest of the catalogue still works
    [problem] = missing_messages(theme, "ko")
    assert "the translation of 'No. %(number)s' does not fit its placeholders" in problem.message
    assert problem.file == po and not problem.blocking


def test_a_catalogue_that_is_not_utf8_is_named_by_check_and_build_without_a_traceback(sample_root: Path) -> None:
    po = catalogue_path(sample_root / "templates" / "default", "ko")
    po.write_bytes(po.read_bytes() + b'\nmsgid "x"\nmsgstr "\xff"\n')
    for command in ("check", "build"):
        done = run_cli(sample_root, command, SAMPLE)
        assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr
        assert "ko/LC_MESSAGES/messages.po" in done.stderr and "UTF-8" in done.stderr


def test_a_catalogue_with_a_broken_line_is_named_with_its_line(sample_root: Path) -> None:
    po = catalogue_path(sample_root / "templates" / "default", "ko")
    lines = po.read_text("utf-8").count("\n")
    po.write_text(po.read_text("utf-8") + '\nmsgid "x"\nmsgstrr "y"\n', "utf-8")  # a misspelt keyword
    done = run_cli(sample_root, "check", SAMPLE)
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr
    assert f"ko/LC_MESSAGES/messages.po:{lines + 3}" in done.stderr and "not valid .po syntax" in done.stderr


def test_serve_answers_with_a_catalogue_that_is_not_utf8(sample_root: Path) -> None:
    from loop_support import SECRET, request, running

    from pipeline import tokens
    from pipeline.store._sqlite import SQLiteStore
    from pipeline.web.app import Settings, create_app

    config = load_config(sample_root)
    po = catalogue_path(config.theme_dir, config.language)
    po.write_bytes(po.read_bytes() + b'\nmsgid "x"\nmsgstr "\xff"\n')
    settings = Settings(config=config, secret=SECRET, webhook_key=None,
                        open_store=lambda: SQLiteStore(config.sendlog_path))
    token = tokens.sign(SECRET, email="ada@example.org", list_name="sample", issue="027-2022-04-01")
    with running(create_app(settings)) as url:
        status, _, _ = request("GET", f"{url}/unsubscribe/{token}")
        assert status == 200
        status, _, body = request("POST", f"{url}/unsubscribe/{token}", data=b"List-Unsubscribe=One-Click",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200 and body == b"Unsubscribed.\n"
        status, _, _ = request("GET", f"{url}/archive/nope/")
        assert status == 404
