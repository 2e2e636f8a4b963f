"""check_issue: template-level mistakes and the Gmail clipping budget, counted after encoding."""

from __future__ import annotations

from pathlib import Path

from pipeline.build.checks import check_issue
from pipeline.config import load_config


def set_config(site: Path, old: str, new: str) -> None:
    path = site / "newsletter.yaml"
    path.write_text(path.read_text("utf-8").replace(old, new), "utf-8")


def test_clean_fixture_has_no_problem(site: Path) -> None:
    assert check_issue(site / "issues" / "001-hello", load_config(site)) == []


def test_missing_unsubscribe_link_is_blocking_per_part(site: Path) -> None:
    for name in ("email.mjml.j2", "email.txt.j2"):
        path = site / "templates/plain" / name
        path.write_text(path.read_text("utf-8").replace("{{ unsubscribe_url }}", "https://example.org"), "utf-8")
    problems = check_issue(site / "issues" / "001-hello", load_config(site))
    assert [p.file.name for p in problems if p.file] == ["email.mjml.j2", "email.txt.j2"]
    assert all(p.blocking and "unsubscribe" in p.message for p in problems)


def test_template_image_without_alt_and_bad_link_are_found(site: Path) -> None:
    path = site / "templates/plain/email.mjml.j2"
    text = path.read_text("utf-8").replace(
        '<mj-section><mj-column>\n      <mj-text><h1',
        '<mj-section><mj-column>\n      <mj-image src="https://news.example.org/logo.png" />\n'
        '      <mj-text><a href="ftp://example.org/x">ftp</a><h1')
    path.write_text(text, "utf-8")
    messages = [p.message for p in check_issue(site / "issues" / "001-hello", load_config(site))]
    assert messages == ["image https://news.example.org/logo.png has no alt text in the HTML",
                        "link 'ftp://example.org/x' is not an http(s) or mailto link"]


def test_size_warns_before_the_budget_and_blocks_above_it(site: Path) -> None:
    article = site / "issues/001-hello/articles/hello.md"
    # Korean costs 9 bytes per character once quoted-printable encoded: 3,000 characters ~ 27 KB.
    article.write_text(article.read_text("utf-8") + "\n" + "스마트시티 " * 600 + "\n", "utf-8")
    set_config(site, "size_budget_kb: 100\nsize_warning_kb: 80", "size_budget_kb: 100\nsize_warning_kb: 30")
    (warning,) = check_issue(site / "issues" / "001-hello", load_config(site))
    assert not warning.blocking and "above the 30 KB warning" in warning.message
    set_config(site, "size_budget_kb: 100\nsize_warning_kb: 30", "size_budget_kb: 35\nsize_warning_kb: 30")
    (error,) = check_issue(site / "issues" / "001-hello", load_config(site))
    assert error.blocking and "over the 35 KB budget" in error.message


def test_issue_problems_come_back_as_a_list_not_an_exception(site: Path) -> None:
    (site / "issues/001-hello/images/square.png").unlink()
    (problem,) = check_issue(site / "issues" / "001-hello", load_config(site))
    assert problem.blocking and "images/square.png does not exist" in problem.message


def test_symlinked_or_outside_images_are_warned_about_and_not_published(site: Path) -> None:
    """The archive copies only regular files inside the issue folder; check says so before the send."""
    from conftest import run_cli

    from pipeline.build.issue import load_issue
    from pipeline.web.archive import issue_files

    folder = site / "issues" / "001-hello"
    article = folder / "articles/hello.md"
    (folder / "images/linked.png").symlink_to(folder / "images/square.png")
    (site / "outside.png").write_bytes((folder / "images/square.png").read_bytes())
    article.write_text(article.read_text("utf-8").replace("image: images/square.png", "image: images/linked.png")
                       + "\n![chart](../../outside.png)\n![ok](images/square.png)\n", "utf-8")
    problems = check_issue(folder, load_config(site))
    assert [(p.blocking, p.file, p.message) for p in problems] == [
        (False, article, "image images/linked.png is a symlink, so it is not published and shows as a broken image"),
        (False, article, "image ../../outside.png lies outside the issue folder, so it is not published and shows "
                         "as a broken image")]
    assert set(issue_files(load_issue(folder, load_config(site)))) == {"images/square.png"}
    result = run_cli(site, "check", str(folder))
    assert result.returncode == 0 and "warning: image images/linked.png is a symlink" in result.stdout + result.stderr
