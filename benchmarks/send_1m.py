"""Send benchmark: a generated list sent to the stand-in on 127.0.0.1, timed, its process tree's memory measured.

    PYTHONPATH=. python benchmarks/send_1m.py [--sizes 100000 1000000] [--engine sqlite|postgres]
        [--concurrency 4] [--delay 0.25] [--repeat 3] [--keep DIR]

For each size (and each repeat): a fresh copy of the test newsletter (tests/fixtures/site, batch_size 1000,
`sending.concurrency` as given), a generated list, the stand-in as its own process in --parse mode (every
body parsed as JSON, every address tallied; --delay makes each answer that late), a fresh database (a new
SQLite file, or with --engine postgres a new database on NEWSLETTER_BENCH_PG_URL, default the dev server,
migrated with `newsletter db migrate` before the clock starts), then `newsletter send ... --yes` as a
subprocess. Memory is the send's whole process tree (the sender and the helpers it forks): each process's
peak RSS (VmHWM, the kernel's own peak, read every 100 ms, and wait4's figure for the sender) summed, which
over-counts pages the forked helper shares with the sender, and the largest sum of PSS seen at once (read
once a second), which counts them once.
The load average before each run is printed with it: the machine is shared. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "tests" / "fixtures" / "site"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:55432/postgres"
GOAL_MB = 256.0
KEY = "SG.bench"


def make_list(root: Path, size: int) -> Path:
    """The list of `size` readers, written once per size and shared by the runs."""
    path = root / f"big-{size}.csv"
    if not path.exists():
        with path.open("w", encoding="utf-8") as f:
            f.write("email,name\n")
            step = 100_000
            for start in range(0, size, step):
                rows = range(start, min(size, start + step))
                f.write("".join(f"reader{i:08d}@example.org,Reader {i}\n" for i in rows))
    return path


def make_site(root: Path, size: int, concurrency: int, timeout: float) -> Path:
    site = root / f"site-{size}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(SITE, site)
    config = site / "newsletter.yaml"
    text = config.read_text("utf-8")
    for old, new in (("batch_size: 2", "batch_size: 1000"),
                     ("requests_per_second: 1000", "requests_per_second: 10000"),
                     ("timeout_seconds: 5", f"timeout_seconds: {timeout:g}"),
                     ("retry_budget_seconds: 5", "retry_budget_seconds: 60")):
        text = text.replace(old, new)
    text = re.sub(r"concurrency: \d+.*", f"concurrency: {concurrency}", text)
    config.write_text(text, "utf-8")
    os.link(make_list(root, size), site / "subscribers" / "big.csv")
    return site


def start_standin(delay: float) -> tuple[subprocess.Popen[str], str]:
    """The stand-in in --parse mode as its own process (answering `delay` seconds late); (process, its URL)."""
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "standin.py"), "--port", "0", "--parse",
                             "--delay", str(delay), "--api-key", KEY], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"the stand-in did not start: {url!r}")
    return proc, url


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (fields 14 and 15 of its stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class TreeMemory:
    """Samples the process tree under `pid` from /proc until stopped."""

    pid: int
    peaks_kb: dict[int, int] = field(default_factory=dict)  # pid -> VmHWM
    names: dict[int, str] = field(default_factory=dict)  # pid -> its command line, as first seen
    max_pss_kb: int = 0
    max_processes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> TreeMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    todo += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                pass
        return found

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.1):
            pids = self._tree()
            self.max_processes = max(self.max_processes, len(pids))
            pss = 0
            for pid in pids:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    if tick % 10 == 0:  # smaps_rollup walks the page tables: once a second is enough
                        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                        pss += int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1))  # type: ignore[union-attr]
                except (OSError, AttributeError):
                    continue
                hwm = re.search(r"^VmHWM:\s+(\d+)", status, re.M)
                if pid not in self.names:
                    with contextlib.suppress(OSError):
                        self.names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
                if hwm:
                    self.peaks_kb[pid] = max(self.peaks_kb.get(pid, 0), int(hwm.group(1)))
            self.max_pss_kb = max(self.max_pss_kb, pss)
            tick += 1


def fresh_database(engine: str) -> tuple[str | None, str | None]:
    """(NEWSLETTER_DATABASE_URL, the database's name) for a new, empty PostgreSQL database; SQLite: (None, None)."""
    if engine == "sqlite":
        return None, None
    import psycopg

    admin = os.environ.get("NEWSLETTER_BENCH_PG_URL", DEFAULT_PG)
    name = f"bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin.rsplit("/", 1)[0] + "/" + name, name


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(os.environ.get("NEWSLETTER_BENCH_PG_URL", DEFAULT_PG), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run(size: int, root: Path, args: argparse.Namespace) -> dict[str, float]:
    site = make_site(root, size, args.concurrency, timeout=max(60.0, 4 * args.delay))
    url_db, db_name = fresh_database(args.engine)
    standin, url = start_standin(args.delay)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SENDGRID_API_KEY": KEY, "SENDGRID_API_HOST": url,
           "NEWSLETTER_SECRET": "benchmark-secret-0123456789abcdef"}
    env.pop("NEWSLETTER_DATABASE_URL", None)
    if url_db:
        env["NEWSLETTER_DATABASE_URL"] = url_db
        subprocess.run([sys.executable, "-m", "pipeline", "db", "migrate"], cwd=site, env=env, check=True,
                       capture_output=True)
    load = os.getloadavg()[0]
    try:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "send", "issues/001-hello", "--list", "big",
                                 "--yes"], cwd=site, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        memory = TreeMemory(proc.pid).start()
        out_chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        err = proc.stderr.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        memory.stop()
        reader.join()
        out = b"".join(out_chunks)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"send failed:\n{out.decode()}\n{err.decode()}")
        with urllib.request.urlopen(url + "/standin/tally", timeout=30) as answer:
            tally = json.loads(answer.read())
        standin_cpu = cpu_seconds(standin.pid)
    finally:
        standin.kill()
        standin.wait()
        if db_name:
            drop_database(db_name)
        if not args.keep:
            shutil.rmtree(site, ignore_errors=True)
    if tally["recipients"] != size or tally["distinct"] != size or tally["duplicates"]:
        raise SystemExit(f"{size}: the stand-in got {tally['recipients']} recipients, {tally['distinct']} distinct, "
                         f"{tally['duplicates']} duplicates (e.g. {tally['duplicate_examples']}); expected {size}")
    for line in (out + err).decode().splitlines():
        if "recorded in" in line or " request(s), " in line:
            print(f"    {line.strip()}")
    peaks = dict(memory.peaks_kb)
    peaks[proc.pid] = max(peaks.get(proc.pid, 0), usage.ru_maxrss)
    for pid, kb in sorted(peaks.items()):
        print(f"    pid {pid}: peak RSS {kb / 1024:.1f} MB: {memory.names.get(pid, '?')}")
    return {"size": size, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "load": load,
            "standin_cpu_s": standin_cpu,
            "sender_mb": peaks[proc.pid] / 1024, "tree_mb": sum(peaks.values()) / 1024,
            "pss_mb": memory.max_pss_kb / 1024, "processes": memory.max_processes,
            "requests": tally["requests"], "overlap": tally["max_in_flight"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--concurrency", type=int, default=4, help="sending.concurrency (default 4, the product's)")
    parser.add_argument("--delay", type=float, default=0.0, help="the stand-in answers each request this late")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size")
    parser.add_argument("--goal", type=float, help="seconds allowed at the largest size (printed as met/MISSED)")
    parser.add_argument("--keep", type=Path, help="keep the generated folders here")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="send-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"engine {args.engine}, concurrency {args.concurrency}, answers delayed {args.delay:g} s, "
          f"{os.cpu_count()} cores", flush=True)
    results = []
    try:
        for size in args.sizes:
            for _ in range(args.repeat):
                r = run(size, root, args)
                results.append(r)
                print(f"{size:>10,} recipients: {r['wall_s']:6.2f} s wall, {r['cpu_s']:6.2f} s CPU (the stand-in "
                      f"{r['standin_cpu_s']:.2f} s), memory: sender "
                      f"{r['sender_mb']:5.1f} MB, tree {r['tree_mb']:5.1f} MB ({r['processes']:.0f} processes, sum of "
                      f"peak RSS), {r['pss_mb']:5.1f} MB PSS; load {r['load']:.2f} before; "
                      f"{r['requests']:.0f} requests (at most {r['overlap']:.0f} at once), every address exactly once",
                      flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    small, large = results[0], results[-1]
    if large["size"] > small["size"]:
        ratio = (large["wall_s"] / small["wall_s"]) / (large["size"] / small["size"])
        print(f"time per recipient grows {ratio:.2f}x from {small['size']:,} to {large['size']:,} (1.00 = linear)")
    if args.goal:
        top = [r for r in results if r["size"] == large["size"]]
        ok = all(r["wall_s"] <= args.goal and r["tree_mb"] <= GOAL_MB for r in top)
        print(f"goal at {large['size']:,} (<= {args.goal:g} s, <= {GOAL_MB:g} MB tree): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
