"""`newsletter check`: every problem printed, non-zero exit only for blocking ones."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli


def test_clean_issue_passes(site: Path) -> None:
    result = run_cli(site, "check", "issues/001-hello")
    assert result.returncode == 0, result.stderr
    assert "ok (0 warning(s))" in result.stdout


def test_all_problems_are_printed_at_once(site: Path) -> None:
    article = site / "issues/001-hello/articles/hello.md"
    text = article.read_text("utf-8").replace("image_alt: A blue square\n", "")
    article.write_text(text.replace("https://example.org/announce", "www.example.org"), "utf-8")
    (site / "issues/001-hello/images/square.png").unlink()
    result = run_cli(site, "check", "issues/001-hello")
    assert result.returncode == 3
    assert "images/square.png does not exist" in result.stderr
    assert "has no image_alt" in result.stderr
    assert "'www.example.org' is not an http(s) or mailto link — use a full https:// URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_warning_only_exits_zero(site: Path) -> None:
    config = site / "newsletter.yaml"
    config.write_text(config.read_text("utf-8").replace("size_warning_kb: 80", "size_warning_kb: 1"), "utf-8")
    result = run_cli(site, "check", "issues/001-hello")
    assert result.returncode == 0
    assert "warning: the encoded message is" in result.stderr and "ok (1 warning(s))" in result.stdout


def test_json_lists_every_problem_with_its_place(site: Path) -> None:
    import json

    clean = run_cli(site / "issues", "check", "001-hello", "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["ok"] is True  # nothing but JSON on stdout
    issue = site / "issues" / "001-hello"
    (issue / "articles" / "hello.md").unlink()
    result = run_cli(site, "check", "issues/001-hello", "--json")
    assert result.returncode == 3
    data = json.loads(result.stdout)
    assert data["issue"] == "001-hello" and data["ok"] is False and data["errors"] >= 1
    problem = data["problems"][0]
    assert set(problem) == {"file", "line", "column", "severity", "message", "fix"}
    assert problem["severity"] == "error" and "hello.md" in problem["message"] + (problem["file"] or "")
