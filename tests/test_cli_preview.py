"""`newsletter preview --screenshot`: PNGs from real headless Chromium."""

from __future__ import annotations

import struct
from pathlib import Path

from conftest import run_cli


def png_width(path: Path) -> int:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int(struct.unpack(">I", header[16:20])[0])


def test_cli_screenshot_writes_375_and_600_px_pngs(site: Path, tmp_path: Path) -> None:
    result = run_cli(site, "preview", "issues/001-hello", "--screenshot", str(tmp_path / "shots"))
    assert result.returncode == 0, result.stderr
    assert sorted(png_width(p) for p in (tmp_path / "shots").glob("*.png")) == [375, 600]


def test_cli_preview_of_a_missing_folder_fails_cleanly(site: Path) -> None:
    result = run_cli(site, "preview", "issues/none", "--screenshot", "shots")
    assert result.returncode == 3 and "is not a folder" in result.stderr and "Traceback" not in result.stderr


def test_screenshot_without_playwright_says_how_to_add_it(site: Path, tmp_path: Path) -> None:
    """Playwright is the optional `screenshots` extra; an environment without it is simulated by blocking
    its import (sys.modules[name] = None is how Python marks a module that cannot be imported)."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    code = ("import sys; sys.modules['playwright'] = None; sys.argv = ['newsletter', 'preview', 'issues/001-hello', "
            f"'--screenshot', {str(tmp_path / 'shots')!r}]; from pipeline.cli.main import run; run()")
    done = subprocess.run([sys.executable, "-c", code], cwd=site, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "pip install 'newsletter-pipeline[screenshots]'" in done.stderr
    assert not (tmp_path / "shots").exists()
