"""Build speed: a cold `newsletter build` of the sample issue against the MJML reference CLI, and a warm rebuild.

Run by hand from the repository root: `.venv/bin/python benchmarks/build_speed.py [--runs N]`.
The MJML CLI (npm package `mjml`, 5.4.1 as in the README's figures) is installed into benchmarks/.node on
first use (npm and the network needed). Both cold commands run alternately in one process of this script,
so a busy machine slows both alike. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ISSUE = ROOT / "issues" / "027-2022-04-01"
NODE_DIR = Path(__file__).resolve().parent / ".node"
MJML_CLI = NODE_DIR / "node_modules" / ".bin" / "mjml"


def ensure_mjml_cli() -> None:
    if not MJML_CLI.exists():
        NODE_DIR.mkdir(exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "mjml@5.4.1"],
                       check=True, stdout=subprocess.DEVNULL)


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def warm_rebuilds(runs: int) -> list[float]:
    """Time Preview.refresh() after an edit: what the preview loop pays per saved file."""
    sys.path.insert(0, str(ROOT))
    from pipeline.build.preview import Preview
    from pipeline.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        issue = Path(tmp) / ISSUE.name
        shutil.copytree(ISSUE, issue)
        preview = Preview(issue, load_config(ROOT), base_url="http://127.0.0.1:8025")
        preview.refresh()
        article = sorted((issue / "articles").glob("*.md"))[0]
        times = []
        for n in range(runs):
            article.write_text(article.read_text("utf-8") + f"\nEdit {n}.\n", "utf-8")
            os.utime(article, (time.time() + n + 1, time.time() + n + 1))
            start = time.perf_counter()
            assert preview.refresh() and preview.error is None, preview.error
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    runs = parser.parse_args().runs
    ensure_mjml_cli()
    newsletter = str(Path(sys.executable).parent / "newsletter")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "build"
        wall([newsletter, "build", str(ISSUE), "--out", str(out)])  # warm the OS file cache for both
        mjml_files = sorted(out.rglob("email.mjml"))  # one per edition: the reference compiles each too
        ours, theirs = [], []
        for _ in range(runs):
            ours.append(wall([newsletter, "build", str(ISSUE), "--out", str(out)]))
            theirs.append(sum(wall([str(MJML_CLI), str(f), "-o", str(Path(tmp) / "mjml.html")]) for f in mjml_files))
        lines = sum(f.read_text("utf-8").count("\n") for f in mjml_files)
    ours_ms, theirs_ms = statistics.median(ours) * 1000, statistics.median(theirs) * 1000
    warm = warm_rebuilds(max(runs, 20))
    best_ratio = min(ours) / min(theirs)
    print(f"sample issue: {ISSUE.name}, {len(mjml_files)} edition(s), email.mjml {lines} lines, "
          f"{runs} alternating runs (median / fastest)")
    print(f"cold `newsletter build` (process start to exit): {ours_ms:5.0f} / {min(ours) * 1000:5.0f} ms")
    print(f"cold MJML CLI on the same email.mjml:             {theirs_ms:5.0f} / {min(theirs) * 1000:5.0f} ms")
    print(f"ratio: {ours_ms / theirs_ms:.2f} median, {best_ratio:.2f} fastest (goal: at most 0.50)")
    print(f"warm rebuild in the preview loop: median {statistics.median(warm) * 1000:.1f} ms, "
          f"max {max(warm) * 1000:.1f} ms over {len(warm)} edits (goal: under 50 ms)")


if __name__ == "__main__":
    main()
