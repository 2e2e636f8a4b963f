"""Send benchmark: 100,000 and 1,000,000 subscribers to the stand-in on 127.0.0.1 in --fast mode.

    PYTHONPATH=. python benchmarks/send_1m.py [--sizes 100000 1000000] [--keep DIR]

For each size: a fresh copy of the test newsletter (tests/fixtures/site, batch_size 1000), a generated
list, the stand-in as its own process (--fast: no schema checks, recipients found by a byte scan, so the
figures are the sender's), then `newsletter send ... --yes` as a subprocess. Prints wall time and peak RSS
of the send process (from wait4's rusage) and checks that the stand-in got every address exactly once.
Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "tests" / "fixtures" / "site"
GOAL_SECONDS, GOAL_MB = 10.0, 256.0


def make_site(root: Path, size: int) -> Path:
    site = root / f"site-{size}"
    shutil.copytree(SITE, site)
    config = site / "newsletter.yaml"
    text = config.read_text("utf-8")
    for old, new in (("batch_size: 2", "batch_size: 1000"),
                     ("requests_per_second: 1000", "requests_per_second: 10000"),
                     ("timeout_seconds: 5", "timeout_seconds: 60"),
                     ("retry_budget_seconds: 5", "retry_budget_seconds: 60")):
        text = text.replace(old, new)
    config.write_text(text, "utf-8")
    with (site / "subscribers" / "big.csv").open("w", encoding="utf-8") as f:
        f.write("email,name\n")
        step = 100_000
        for start in range(0, size, step):
            f.write("".join(f"reader{i:07d}@example.org,Reader {i}\n" for i in range(start, min(size, start + step))))
    return site


def start_standin(record: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "standin.py"), "--port", "0", "--fast",
                             "--api-key", "SG.bench", "--record", str(record)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"the stand-in did not start: {url!r}")
    return proc, url


def run(size: int, root: Path) -> dict[str, float]:
    site = make_site(root, size)
    record = root / f"record-{size}.jsonl"
    standin, url = start_standin(record)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SENDGRID_API_KEY": "SG.bench", "SENDGRID_API_HOST": url,
           "NEWSLETTER_SECRET": "benchmark-secret-0123456789abcdef"}
    try:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "send", "issues/001-hello", "--list", "big",
                                 "--yes"], cwd=site, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"send failed:\n{out.decode()}\n{err.decode()}")
    finally:
        standin.kill()
        standin.wait()
    seen: set[str] = set()
    total = 0
    with record.open(encoding="utf-8") as f:
        for line in f:
            emails = json.loads(line)["recipients"]
            total += len(emails)
            seen.update(emails)
    if total != size or len(seen) != size:
        raise SystemExit(f"{size}: the stand-in got {total} recipients, {len(seen)} distinct; expected {size}")
    for line in (out + err).decode().splitlines():
        if "recorded in" in line or " request(s), " in line:
            print(f"    {line.strip()}")
    return {"size": size, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--keep", type=Path, help="keep the generated folders here")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="send-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for size in args.sizes:
            result = run(size, root)
            results.append(result)
            print(f"{size:>9,} recipients: {result['wall_s']:6.2f} s wall, {result['cpu_s']:6.2f} s CPU, "
                  f"peak RSS {result['peak_rss_mb']:6.1f} MB (every address exactly once)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if len(results) >= 2:
        small, large = results[0], results[-1]
        ratio = (large["wall_s"] / small["wall_s"]) / (large["size"] / small["size"])
        print(f"time per recipient grows {ratio:.2f}x from {small['size']:,} to {large['size']:,} (1.00 = linear)")
    for result in results:
        if result["size"] >= 1_000_000:
            ok = result["wall_s"] <= GOAL_SECONDS and result["peak_rss_mb"] <= GOAL_MB
            print(f"goal at 1M (<= {GOAL_SECONDS:g} s, <= {GOAL_MB:g} MB): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
