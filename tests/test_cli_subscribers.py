"""`newsletter subscribers check|import`, run as an operator would, inside a copied newsletter folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from storekit import site_store

from pipeline.cli.main import main

LISTS = Path(__file__).parent / "fixtures" / "lists"
REPO = Path(__file__).parent.parent


def run(site: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    monkeypatch.chdir(site / "issues")  # any folder below newsletter.yaml will do
    return CliRunner().invoke(main, ["subscribers", *args])


def test_check_counts_a_valid_list(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(site, monkeypatch, "check", "sample")
    assert result.exit_code == 0, result.output
    assert "sample.csv: 3 recipient(s) from 3 row(s); 0 invalid, 0 duplicate(s)" in result.stdout


def test_check_fails_on_invalid_rows_unless_told_to_skip(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(LISTS / "mixed.csv", site / "subscribers" / "mixed.csv")
    failed = run(site, monkeypatch, "check", "mixed")
    assert failed.exit_code == 4
    assert "mixed.csv:3: error: invalid address 'not-an-address'" in failed.stderr
    assert "mixed.csv:1: warning: column 'favourite colour'" in failed.stderr
    assert "3 invalid row(s)" in failed.stderr and "--skip-invalid" in failed.stderr
    assert "4 recipient(s) from 8 row(s); 3 invalid, 1 duplicate(s)" in failed.stdout
    skipped = run(site, monkeypatch, "check", "mixed", "--skip-invalid")
    assert skipped.exit_code == 0 and "mixed.csv:3: error" in skipped.stderr


def test_check_of_a_missing_list_names_the_others(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(site, monkeypatch, "check", "weekly")
    assert result.exit_code == 4 and "available lists: sample" in result.stderr


def test_check_of_an_unreadable_list_says_why(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(LISTS / "latin1.csv", site / "subscribers" / "old.csv")
    result = run(site, monkeypatch, "check", "old")
    assert result.exit_code == 4 and "old.csv:2: the file is not UTF-8" in result.stderr


def test_import_creates_the_list_then_adds_nothing_twice(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = str(LISTS / "mailchimp_subscribed.csv")
    first = run(site, monkeypatch, "import", export, "--list", "weekly")
    assert first.exit_code == 0, first.output
    assert ("mailchimp_subscribed.csv (mailchimp) -> weekly.csv: 3 added, 1 already present, 1 invalid, "
            "0 unsubscribed or bounced") in first.stdout
    assert "mailchimp_subscribed.csv:5: error: invalid address 'alan@example'" in first.stderr
    second = run(site, monkeypatch, "import", export, "--list", "weekly")
    assert "0 added, 4 already present" in second.stdout
    assert (site / "subscribers" / "weekly.csv").read_text().count("\n") == 4


def test_import_suppresses_unsubscribed_addresses(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(site, monkeypatch, "import", str(LISTS / "mailchimp_unsubscribed.csv"), "--list", "sample")
    assert result.exit_code == 0
    assert "0 added, 0 already present, 0 invalid, 2 unsubscribed or bounced in the export " \
           "(2 newly suppressed for every list)" in result.stdout
    store = site_store(site)
    stored = store.list_suppressions()
    store.close()
    assert [(s.reason, s.source) for s in stored] == [("unsubscribed", "import mailchimp_unsubscribed.csv")] * 2
    again = run(site, monkeypatch, "import", str(LISTS / "mailchimp_unsubscribed.csv"), "--list", "sample")
    assert "(0 newly suppressed for every list)" in again.stdout


def test_import_refuses_a_list_name_with_a_folder(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(site, monkeypatch, "import", str(LISTS / "substack.csv"), "--list", "../outside")
    assert result.exit_code == 4 and "invalid list name" in result.stderr
    assert not (site / "outside.csv").exists()


def test_module_entry_point_runs_check(site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pipeline", "subscribers", "check", "sample"], cwd=site,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "3 recipient(s)" in done.stdout


def test_check_json(site: Path) -> None:
    import json

    from conftest import run_cli

    (site / "subscribers" / "mixed.csv").write_text("email,name\nada@example.org,Ada\nnot-an-address,X\n"
                                                    "ADA@example.org,Ada again\n", "utf-8")
    done = run_cli(site, "subscribers", "check", "mixed", "--json")
    assert done.returncode == 4
    data = json.loads(done.stdout)
    assert (data["list"], data["rows"], data["valid"], data["invalid"], data["duplicates"]) == ("mixed", 3, 1, 1, 1)
    assert data["problems"][0]["line"] == 3 and data["problems"][0]["severity"] == "error"


def test_import_does_not_add_rows_the_list_check_would_refuse(site: Path, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    export.write_text("Email Address,First Name,City\n"
                      "ok@example.org,Ok,Seoul\n"
                      "esc@example.org,Evil\x1b[31m,Seoul\n"
                      f"big@example.org,Big,{'Ω' * 6000}\n", "utf-8")
    imported = run(site, monkeypatch, "import", str(export), "--list", "weekly")
    assert imported.exit_code == 0, imported.output
    assert "1 added, 0 already present, 2 invalid" in imported.stdout
    assert "export.csv:3: error: the name holds a control character" in imported.stderr
    assert "export.csv:4: error: the name and merge fields of this row" in imported.stderr
    checked = run(site, monkeypatch, "check", "weekly")
    assert checked.exit_code == 0, checked.output
