"""Shared fixtures: small real newsletter folders copied to a temporary place for each test."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A copy of tests/fixtures/site: newsletter.yaml, the `plain` theme, issue 001-hello, a 3-row list."""
    root = tmp_path / "site"
    shutil.copytree(FIXTURES / "site", root)
    return root


@pytest.fixture
def sample_root(tmp_path: Path) -> Path:
    """A copy of the repository's own newsletter (config, templates, sample issue No. 27, sample list)."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "newsletter.yaml", root)
    for folder in ("templates", "issues", "subscribers"):
        shutil.copytree(REPO / folder, root / folder)
    return root


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess, as a user runs it (python -m pipeline == newsletter)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    """A new send log (pipeline.sendlog) in the test's own folder."""
    from pipeline import sendlog

    return sendlog.open_sendlog(tmp_path / "state" / "sendlog.sqlite3")
