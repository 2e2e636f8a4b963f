"""`newsletter build`: real subprocesses, as an editor runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_cli


def test_build_from_a_subfolder_writes_build_of_the_root(site: Path) -> None:
    result = run_cli(site / "issues", "build", "001-hello")
    assert result.returncode == 0, result.stderr
    assert "KB encoded" in result.stdout
    manifest = json.loads((site / "build/001-hello/manifest.json").read_text("utf-8"))
    assert manifest["issue"] == "001-hello"


def test_build_out_option(site: Path, tmp_path: Path) -> None:
    result = run_cli(site, "build", "issues/001-hello", "--out", str(tmp_path / "elsewhere"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elsewhere/email.html").read_text("utf-8").startswith("<!DOCTYPE html>")


def test_bad_issue_gives_one_clear_message_and_exit_code_3(site: Path) -> None:
    path = site / "issues/001-hello/issue.yaml"
    path.write_text(path.read_text("utf-8").replace("date: 2026-01-15", "date: 2026-13-01"), "utf-8")
    result = run_cli(site, "build", "issues/001-hello")
    assert result.returncode == 3
    assert "issue.yaml: error: date '2026-13-01' is not a real date — write the date as YYYY-MM-DD" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (site / "build").exists()


def test_debug_shows_the_traceback(site: Path) -> None:
    (site / "issues/001-hello/issue.yaml").write_text("number: [\n", "utf-8")
    result = run_cli(site, "--debug", "build", "issues/001-hello")
    assert result.returncode != 0 and "Traceback" in result.stderr and "IssueError" in result.stderr


def test_outside_a_newsletter_exit_code_2(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "build", "issues/x")
    assert result.returncode == 2 and "no newsletter.yaml found" in result.stderr


def test_help_and_build_do_not_import_the_sending_stack(site: Path) -> None:
    probe = (
        "import sys\nfrom pipeline.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = {'sendgrid', 'starlette', 'uvicorn', 'playwright', 'premailer', 'mjml'}\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {"PYTHONPATH": str(REPO)}
    help_run = subprocess.run([sys.executable, "-c", probe, "--help"], cwd=site, env=env,
                              capture_output=True, text=True, check=True)
    assert help_run.stdout.strip().splitlines()[-1] == "[]"
    build_run = subprocess.run([sys.executable, "-c", probe, "build", "issues/001-hello"], cwd=site, env=env,
                               capture_output=True, text=True, check=True)
    assert build_run.stdout.strip().splitlines()[-1] == "['mjml', 'premailer']"
