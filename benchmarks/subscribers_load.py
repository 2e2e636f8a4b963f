"""Stream a generated list of 1,000,000 subscribers through ListReader and print time and peak memory.

    PYTHONPATH=. python benchmarks/subscribers_load.py [--rows N] [--keep FILE]

Addresses are plain example.org ones (the fast path); 1 row in 1,000 is a duplicate and 1 in 10,000
is invalid, so those paths are exercised too. Prints figures only: timings belong here, not in tests.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from pipeline.lists.subscribers import ListReader


def generate(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write("email,name,city\n")
        for i in range(rows):
            if i % 10_000 == 9_999:
                out.write(f"not-an-address-{i},Broken Row,Nowhere\n")
            elif i % 1_000 == 999:
                out.write(f"Reader.{i - 1}@Example.org,Reader {i - 1},Again\n")
            else:
                out.write(f"reader.{i}@example.org,Reader {i},City {i % 97}\n")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="write the generated list here instead of a temp file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = args.keep or Path(folder) / "bench.csv"
        generate(path, args.rows)
        before = peak_mb()
        started, cpu = time.perf_counter(), time.process_time()
        reader = ListReader(path, suppressed=lambda email: False)
        sent = sum(1 for _ in reader)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"rows {reader.total:,}  recipients {sent:,}  invalid {reader.invalid:,}  "
              f"duplicates {reader.duplicates:,}  file {path.stat().st_size / 1e6:.0f} MB")
        print(f"time {elapsed:.2f} s wall, {cpu:.2f} s CPU ({cpu / max(reader.total, 1) * 1e6:.2f} µs a row); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"peak RSS {peak_mb():.0f} MB (before reading: {before:.0f} MB)")


if __name__ == "__main__":
    main()
