"""Store benchmark: what the send loop asks of the store per request, timed alone, on either engine.

    PYTHONPATH=. python benchmarks/store_claims.py [--engine sqlite|postgres] [--recipients 200000]

A send of N recipients recorded in a fresh store (a new SQLite file, or a new database on
NEWSLETTER_BENCH_PG_URL, default the dev server), then the loop's store calls without any request:
peek the next 1000 rows, claim them together with the previous batch's answer (`claim_peeked` with
`finished`), until none are left. Prints the milliseconds per claim (median, 90th percentile) and per
peek: a claim is on the send's critical path, one after another, so 1000 of them bound a 1M send.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from pipeline.store import Finish
from pipeline.store._postgres import PostgresStore
from pipeline.store._sqlite import SQLiteStore

DEFAULT_PG = "postgresql://postgres@127.0.0.1:55432/postgres"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    admin = os.environ.get("NEWSLETTER_BENCH_PG_URL", DEFAULT_PG)
    name = f"bench_claims_{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="claims-bench-"))
    if args.engine == "postgres":
        import psycopg

        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    try:
        store = (PostgresStore(admin.rsplit("/", 1)[0] + "/" + name, migrate=True) if args.engine == "postgres"
                 else SQLiteStore(tmp / "send.db"))
        run(store, args.recipients, args.batch)
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.engine == "postgres":
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run(store: SQLiteStore | PostgresStore, n: int, size: int) -> None:
    send = store.create_send(issue="001", list_name="big", transport="sendgrid", content_hash="h", subject="Hi")
    started = time.perf_counter()
    store.add_recipients(send.id, ((f"reader{i:08d}@example.org", f"Reader {i}", None) for i in range(n)))
    print(f"{store.engine}: {n:,} recipients recorded in {time.perf_counter() - started:.1f} s")
    claims: list[float] = []
    peeks: list[float] = []
    finished: list[Finish] = []
    after = 0
    with store.sending():
        while True:
            t0 = time.perf_counter()
            peeked = store.peek_batch(send.id, size=size, after=after)
            t1 = time.perf_counter()
            claim = store.claim_peeked(send.id, peeked, request_id=uuid.uuid4().hex, finished=finished)
            t2 = time.perf_counter()
            if claim is None:
                break
            peeks.append(t1 - t0)
            claims.append(t2 - t1)
            finished = [Finish(claim=claim, state="accepted", attempts=1, http_status=202, message_id="m")]
            after = claim.last
        store.record(finished)
    if isinstance(store, PostgresStore):  # how many row updates were HOT (no index entries written)
        store.conn.execute("SELECT pg_stat_force_next_flush()")
        store.conn.commit()
        time.sleep(1)
        row = store.conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                 "WHERE relname = 'deliveries'").fetchone()
        store.conn.commit()
        print(f"deliveries: {row[0] if row else '?'} row updates, {row[1] if row else '?'} of them HOT")
    ms = sorted(c * 1000 for c in claims)
    print(f"{len(claims)} claims of {size}: {statistics.median(ms):.1f} ms median, {ms[int(len(ms) * 0.9)]:.1f} ms "
          f"90th percentile (each with the previous batch's answer); peeks {statistics.median(peeks) * 1000:.1f} ms "
          f"median; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
