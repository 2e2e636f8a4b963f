"""newsletter.yaml: found from any subfolder, validated like an issue, every problem reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import find_root, load_config
from pipeline.errors import ConfigError


def test_found_from_a_subfolder_as_git_does(site: Path) -> None:
    assert find_root(site / "issues" / "001-hello" / "articles") == site
    config = load_config(site / "issues")
    assert (config.name, config.theme, config.sending.batch_size) == ("Test Weekly", "plain", 2)
    assert config.sendlog_path == site / ".newsletter" / "sendlog.sqlite3"


def test_no_config_anywhere_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no newsletter.yaml found .* create newsletter.yaml"):
        find_root(tmp_path)


def test_every_problem_is_reported_with_its_line(site: Path) -> None:
    path = site / "newsletter.yaml"
    text = path.read_text("utf-8")
    text = text.replace("base_url: https://news.example.org", "base_url: news.example.org/")
    text = text.replace("  batch_size: 2", "  batch_size: 5000")
    text = text.replace("theme: plain", "theme: plain\ncolour: blue")
    path.write_text(text, "utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(site)
    found = [str(p) for p in caught.value.problems]
    assert len(found) == 3
    assert any("newsletter.yaml:7" in p and "base_url" in p for p in found)
    assert any("colour" in p for p in found)
    assert any("batch_size" in p and "1 to 1000" in p for p in found)


def test_a_key_given_twice_in_the_config_is_an_error(site: Path) -> None:
    path = site / "newsletter.yaml"
    path.write_text(path.read_text("utf-8").replace("  batch_size: 2", "  batch_size: 2\n  batch_size: 500"), "utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(site)
    (found,) = [str(p) for p in caught.value.problems]
    assert "'batch_size' is given twice" in found and "keep one of the two" in found


def test_unknown_theme_names_the_folder(site: Path) -> None:
    path = site / "newsletter.yaml"
    path.write_text(path.read_text("utf-8").replace("theme: plain", "theme: fancy"), "utf-8")
    with pytest.raises(ConfigError, match="'fancy' has no folder in templates/"):
        load_config(site)
