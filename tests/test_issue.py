"""Issue folders: every problem is found at once, located, and comes with a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.build.issue import load_issue
from pipeline.config import load_config
from pipeline.errors import IssueError


def problems_of(site: Path) -> list[str]:
    with pytest.raises(IssueError) as caught:
        load_issue(site / "issues" / "001-hello", load_config(site))
    return [str(p) for p in caught.value.problems]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text("utf-8")
    assert old in text, f"fixture changed: {old!r} not in {path}"
    path.write_text(text.replace(old, new), "utf-8")


def test_valid_folder_loads_every_part(site: Path) -> None:
    issue = load_issue(site / "issues" / "001-hello", load_config(site))
    assert (issue.number, issue.date.isoformat(), issue.slug) == (1, "2026-01-15", "001-hello")
    assert [s.title for s in issue.sections] == ["First things", "Reading"]
    article = issue.sections[0].articles[0]
    assert article.title == "Hello, readers" and article.source == "The editors"
    assert article.image is not None and article.image.alt == "A blue square"
    assert "https://example.org/announce" in issue.links
    assert issue.sections[1].literature[0].authors == "A. Author"


def test_broken_yaml_names_file_and_line(site: Path) -> None:
    edit(site / "issues/001-hello/issue.yaml", "subject: ", "subject: [unclosed\n")
    (message,) = problems_of(site)
    assert "issue.yaml:3" in message or "issue.yaml:4" in message


def test_a_field_given_twice_is_named_with_both_lines(site: Path) -> None:
    path = site / "issues/001-hello/issue.yaml"
    path.write_text(path.read_text("utf-8") + "subject: Pasted again\n", "utf-8")
    (message,) = problems_of(site)
    last = len(path.read_text("utf-8").splitlines())
    assert f"issue.yaml:{last}" in message and "'subject' is given twice (first on line 3)" in message


def test_missing_unknown_and_wrong_fields_are_all_reported(site: Path) -> None:
    path = site / "issues/001-hello/issue.yaml"
    edit(path, "number: 1\n", "numbr: 1\n")
    edit(path, "preheader:", "preheadr:")
    found = problems_of(site)
    joined = "\n".join(found)
    assert '(top level): "number" is a required property — add the field' in joined
    assert "issue.yaml:1: error: unknown field 'numbr' — did you mean 'number'?" in joined
    assert "issue.yaml:4: error: unknown field 'preheadr' — did you mean 'preheader'?" in joined


def test_impossible_date_is_refused_with_the_format(site: Path) -> None:
    edit(site / "issues/001-hello/issue.yaml", "date: 2026-01-15", "date: 2026-02-30")
    (message,) = problems_of(site)
    assert "2026-02-30" in message and "YYYY-MM-DD" in message


def test_article_problems_are_collected_together(site: Path) -> None:
    article = site / "issues/001-hello/articles/hello.md"
    edit(article, "image: images/square.png\nimage_alt: A blue square\n", "image: images/missing.png\n")
    edit(article, "(https://example.org/announce)", "(ftp://example.org/file)")
    edit(article, "date: 2026-01-14", "date: 14.01.2026")
    found = "\n".join(problems_of(site))
    assert "images/missing.png does not exist" in found
    assert "has no image_alt" in found
    assert "ftp://example.org/file" in found and "https://" in found
    assert "hello.md:3" in found  # the date line inside the front matter


def test_missing_article_file_is_named(site: Path) -> None:
    edit(site / "issues/001-hello/issue.yaml", "[hello.md]", "[hello.md, nope.md]")
    (message,) = problems_of(site)
    assert "articles/nope.md does not exist" in message


def test_article_without_front_matter(site: Path) -> None:
    (site / "issues/001-hello/articles/hello.md").write_text("Just text\n", "utf-8")
    (message,) = problems_of(site)
    assert "hello.md:1" in message and "front matter" in message


def test_not_a_folder(site: Path) -> None:
    with pytest.raises(IssueError, match="is not a folder"):
        load_issue(site / "issues" / "nope", load_config(site))


def test_a_folder_where_issue_yaml_or_an_article_should_be_is_named(site: Path) -> None:
    folder = site / "issues" / "001-hello"
    (folder / "articles" / "hello.md").unlink()
    (folder / "articles" / "hello.md").mkdir()
    (message,) = problems_of(site)
    assert "articles/hello.md" in message and "not a file" in message
    (folder / "issue.yaml").unlink()
    (folder / "issue.yaml").mkdir()
    (message,) = problems_of(site)
    assert "issue.yaml" in message and "not a file" in message


@pytest.mark.parametrize("alt", ["", " 5", " [a, b]", " {text: x}"])
def test_an_image_alt_left_empty_or_not_text_is_a_problem_of_its_line(site: Path, alt: str) -> None:
    edit(site / "issues/001-hello/articles/hello.md", "image_alt: A blue square", f"image_alt:{alt}")
    found = "\n".join(problems_of(site))
    assert "hello.md:7: error: field image_alt" in found
