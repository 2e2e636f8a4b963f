"""The README's first commands work exactly as printed: the tour after `make sample`, and a newsletter
of one's own. Each line of those code blocks runs in a real shell, with `newsletter` being the console
script that `make sample` puts into .venv/bin (here: a script in a stand-in .venv/bin that runs this
checkout's `python -m pipeline`, which is what the console script runs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import REPO

README = (REPO / "README.md").read_text("utf-8")


def _block(heading: str) -> list[str]:
    section = README.split(f"\n## {heading}\n", 1)[1]
    code = re.search(r"```sh\n(.*?)```", section, re.S)
    assert code is not None, heading
    return [line for line in code.group(1).splitlines() if line.strip()]


def _venv(root: Path) -> None:
    """.venv/bin/activate and .venv/bin/newsletter, as `make sample` leaves them (the names are checked)."""
    assert "VENV := .venv" in (REPO / "Makefile").read_text("utf-8")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["scripts"]
    assert scripts == {"newsletter": "pipeline.cli.main:run"}
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"; export PATH\n', "utf-8")
    script = bin_dir / "newsletter"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pipeline "$@"\n', "utf-8")
    script.chmod(0o755)


def _run(lines: list[str], cwd: Path) -> None:
    """All lines in one shell, as typed; `preview` (which serves until stopped) is stopped once it serves."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    script = []
    for line in lines:
        command = line.split("  #")[0].strip()
        if " preview " in f" {command} ":
            port = "--port 0"  # the README's 8025 may be taken on a test machine
            script.append(f"{command} {port} > preview.out 2>&1 & pid=$!; "
                          "while ! grep -q serving preview.out; do kill -0 $pid || exit 9; sleep 0.05; done; "
                          "kill $pid; wait $pid || true")  # a background job of sh ignores Ctrl-C's SIGINT
        else:
            script.append(command)
    done = subprocess.run(["sh", "-e", "-c", "\n".join(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_tour_after_make_sample(sample_root: Path) -> None:
    lines = _block("A tour in five commands")
    assert lines[0].startswith(". .venv/bin/activate ")  # the first command puts newsletter on the PATH
    assert all(line.startswith("newsletter ") for line in lines[1:])
    _venv(sample_root)
    _run(lines, sample_root)
    assert len(list((sample_root / "outbox").glob("*.eml"))) == 5


def test_a_newsletter_of_ones_own(tmp_path: Path) -> None:
    lines = _block("A newsletter of your own")
    _venv(tmp_path)
    _run([". .venv/bin/activate", *lines], tmp_path)
    issues = sorted(p.name for p in (tmp_path / "mynews" / "issues").iterdir())
    assert [name[:4] for name in issues] == ["001-", "002-"]
    assert len(list((tmp_path / "mynews" / "outbox").glob("*.eml"))) == 3
    shutil.rmtree(tmp_path / ".venv")
