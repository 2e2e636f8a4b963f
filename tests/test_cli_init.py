"""`newsletter init DIR` and `newsletter new` as real processes: a newsletter of one's own that works at once."""

from __future__ import annotations

import datetime as dt
import filecmp
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import REPO, run_cli


def _first_issue(root: Path) -> str:
    (folder,) = (root / "issues").iterdir()
    return f"issues/{folder.name}"


def test_init_then_check_build_send_outbox_and_preview(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "init", "mynews", "--name", "Smart City Weekly")
    assert done.returncode == 0, done.stderr
    root = tmp_path / "mynews"
    issue = _first_issue(root)
    assert issue == f"issues/001-{dt.date.today().isoformat()}"
    assert f"newsletter check {issue}" in done.stdout
    assert "/subscribers/*.csv" in (root / ".gitignore").read_text("utf-8")
    theme = filecmp.dircmp(root / "templates" / "default", REPO / "templates" / "default")
    assert not (theme.left_only or theme.right_only or theme.diff_files)

    assert run_cli(root, "check", issue).returncode == 0
    built = run_cli(root, "build", issue)
    assert built.returncode == 0, built.stderr
    assert "Smart City Weekly" in (root / "build" / issue.split("/")[1] / "email.html").read_text("utf-8")
    sent = run_cli(root, "send", issue, "--list", "sample", "--outbox", "outbox")  # no --yes, no terminal
    assert sent.returncode == 0, sent.stderr
    assert len(list((root / "outbox").glob("*.eml"))) == 3

    preview = subprocess.Popen([sys.executable, "-m", "pipeline", "preview", issue, "--port", "0"], cwd=root,
                               env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert preview.stdout is not None
        line = preview.stdout.readline()
        assert line.startswith("serving "), line + preview.stderr.read() if preview.stderr else line
        url = line.split(" at ")[1].split("/ ")[0]
        with urllib.request.urlopen(f"{url}/email.html", timeout=30) as answer:
            assert "Welcome to Smart City Weekly" in answer.read().decode()
    finally:
        preview.terminate()
        preview.communicate(timeout=30)


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_init_writes_nothing_over_existing_files(tmp_path: Path) -> None:
    (tmp_path / "newsletter.yaml").write_text("name: mine\n", "utf-8")
    done = run_cli(tmp_path, "init", ".")
    assert done.returncode == 2 and "already has newsletter.yaml" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newsletter.yaml"]
    bad = run_cli(tmp_path, "init", "other", "--sender", "not-an-address")
    assert bad.returncode == 2 and "--sender" in bad.stderr and not (tmp_path / "other").exists()


def test_new_makes_the_next_issue_ready_to_edit(sample_root: Path) -> None:
    done = run_cli(sample_root / "issues", "new")
    assert done.returncode == 0, done.stderr
    folder = f"issues/028-{dt.date.today().isoformat()}"
    assert f"created {folder}" in done.stdout
    assert "number: 28" in (sample_root / folder / "issue.yaml").read_text("utf-8")
    checked = run_cli(sample_root, "check", folder)
    assert checked.returncode == 0, checked.stderr
    again = run_cli(sample_root, "new")
    assert again.returncode == 0 and f"issues/029-{dt.date.today().isoformat()}" in again.stdout


def test_the_default_theme_is_found_in_a_checkout_made_without_symbolic_links(tmp_path: Path) -> None:
    """There git writes the link `pipeline/themes/default` as a file holding its target's path."""
    from pipeline.scaffold import BUNDLED_THEME, bundled_theme

    (tmp_path / "templates" / "default").mkdir(parents=True)
    link = tmp_path / "pipeline" / "themes" / "default"
    link.parent.mkdir(parents=True)
    link.write_text("../../templates/default", "utf-8")
    assert bundled_theme(link) == (tmp_path / "templates" / "default").resolve()
    assert bundled_theme(BUNDLED_THEME) == BUNDLED_THEME and (BUNDLED_THEME / "pages" / "base.html.j2").is_file()

