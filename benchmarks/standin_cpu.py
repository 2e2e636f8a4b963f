"""The stand-in's own cost: CPU per Mail Send request of `tests/standin.py --parse`, measured from outside.

    PYTHONPATH=. python benchmarks/standin_cpu.py [--requests 300] [--threads 4] [--batch 1000] [--repeat 3]

Why: the send benchmark (send_1m.py) runs the real sender against this stand-in, which parses and checks
every body as SendGrid does; if the stand-in needs more than the sender to take a request, the benchmark
measures the stand-in. This starts it as its own process, builds real request bodies with the product's
`Personalizer` from the test newsletter (tests/fixtures/site, its issue rendered; addresses as send_1m.py's
list, `readerNNNNNNNN@example.org`, "Reader N"; a batch id made by the stand-in, as a real send has), sends
them with the product's SendGrid transport from a few threads, and reads the stand-in's CPU time
(utime + stime from /proc) before and after. CPU, not wall: the machine is shared.
Bodies are built before the clock starts; the tally at the end must show every address exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.build.issue import load_issue  # noqa: E402
from pipeline.build.render import render_email  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.send.batches import Batch, Mailing, Personalizer  # noqa: E402
from pipeline.send.schedule import SendGridBatches  # noqa: E402
from pipeline.send.transport import Outcome, SendGridTransport  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from send_1m import KEY, cpu_seconds, start_standin  # noqa: E402  (the send benchmark's own, shared)


def personalizer(url: str, site: Path) -> Personalizer:
    config = load_config(site)
    email = render_email(load_issue(site / "issues" / "001-hello", config), config)
    batch_id = SendGridBatches(api_key=KEY, host=url, timeout=30).create()
    mailing = Mailing.from_config(config, email=email, issue="001-hello", list_name="big", send_id=1,
                                  secret=b"benchmark-secret-0123456789abcdef", batch_id=batch_id)
    return Personalizer(mailing)


def run(args: argparse.Namespace, site: Path, first: int) -> tuple[float, int]:
    """(stand-in CPU seconds per request, body bytes per request) for one run."""
    proc, url = start_standin(0.0)
    try:
        p = personalizer(url, site)
        batches = []
        for r in range(args.requests):
            start = first + r * args.batch
            rows = [(i, f"reader{i:08d}@example.org", f"Reader {i}", None) for i in range(start, start + args.batch)]
            batch = Batch(id=r, request_id=f"r{r}", rows=rows)
            batches.append(Batch(id=r, request_id=f"r{r}", rows=rows, body=p.body(batch)))
        size = sum(len(b.body.encode()) for b in batches if b.body) // len(batches)
        transport = SendGridTransport(p, api_key=KEY, host=url, timeout=60)
        failures: list[str] = []
        todo = iter(batches)
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    batch = next(todo, None)
                if batch is None:
                    return
                result = transport.send(batch)
                if result.outcome is not Outcome.ACCEPTED:
                    failures.append(f"{result.status} {result.error}")

        time.sleep(0.2)  # let the stand-in settle after start-up
        before = cpu_seconds(proc.pid)
        threads = [threading.Thread(target=worker) for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        spent = cpu_seconds(proc.pid) - before
        with urllib.request.urlopen(url + "/standin/tally", timeout=30) as answer:
            tally = json.loads(answer.read())
    finally:
        proc.kill()
        proc.wait()
    expected = args.requests * args.batch
    if failures or tally["recipients"] != expected or tally["distinct"] != expected or tally["duplicates"]:
        raise SystemExit(f"failures {failures[:3]}, tally {tally}; expected {expected} addresses once each")
    return spent / args.requests, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--threads", type=int, default=4, help="sending threads (the product's concurrency is 4)")
    parser.add_argument("--batch", type=int, default=1000, help="recipients per request")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="standin-cpu-"))
    try:
        site = root / "site"
        shutil.copytree(REPO / "tests" / "fixtures" / "site", site)
        figures = []
        for n in range(args.repeat):
            per_request, size = run(args, site, first=n * args.requests * args.batch)
            figures.append(per_request)
            print(f"run {n + 1}: {per_request * 1000:6.2f} ms stand-in CPU per request ({args.requests} requests of "
                  f"{args.batch} recipients, {size / 1000:.0f} KB each, {args.threads} threads; load "
                  f"{os.getloadavg()[0]:.2f})", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"best {min(figures) * 1000:.2f} ms, median {sorted(figures)[len(figures) // 2] * 1000:.2f} ms per request")


if __name__ == "__main__":
    main()
