"""Webhook benchmark: events per second that one `newsletter serve` ingests, on either engine.

    PYTHONPATH=. python benchmarks/webhook_ingest.py [--engine sqlite|postgres] [--events 200000]
        [--batch 1000] [--clients 4]

A fresh copy of the test newsletter with a send of 100,000 recipients recorded as accepted (a new SQLite
file, or a new database on NEWSLETTER_BENCH_PG_URL, default the dev server), then `newsletter serve` as a
process on 127.0.0.1 with a fresh P-256 key as its webhook key. Posts of `--batch` events each, signed as
SendGrid signs them (ECDSA over timestamp + body), go to /webhooks/sendgrid from `--clients` threads on
keep-alive connections: the events SendGrid sends after a send (processed, delivered, opens and clicks,
some bounces, unsubscribes and spam reports) for those recipients, each with its own sg_event_id. Prints
events per second over the whole run, from the first post to the last answer, and checks that every post
was answered 200 with every event applied. Bodies are signed before the clock starts.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "tests" / "fixtures" / "site"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:55432/postgres"
RECIPIENTS = 100_000
KINDS = [("processed", 30), ("delivered", 30), ("open", 25), ("click", 10), ("bounce", 2), ("deferred", 1),
         ("unsubscribe", 1), ("spamreport", 1)]


def record_send(site: Path, env: dict[str, str]) -> int:
    """A send of RECIPIENTS recipients, every one accepted, as a finished send leaves the store."""
    code = f"""
import sys
from pathlib import Path
from pipeline.config import load_config
from pipeline.store import Finish, open_store
store = open_store(load_config(Path({str(site)!r})))
send = store.create_send(issue="001-hello", list_name="big", transport="sendgrid", content_hash="h", subject="Hi")
store.add_recipients(send.id, ((f"reader{{i:08d}}@example.org", "", None) for i in range({RECIPIENTS})))
after = 0
while (claim := store.claim_batch(send.id, size=1000, after=after, request_id=f"r{{after}}")) is not None:
    store.record([Finish(claim=claim, state="accepted", attempts=1, http_status=202, message_id=f"m{{claim.id}}")])
    after = claim.last
store.finish_send(send.id)
print(send.id)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=site, env=env, check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def make_posts(send_id: int, events: int, batch: int, key: ec.EllipticCurvePrivateKey) -> list[tuple[bytes, str, str]]:
    rng = random.Random(1)
    kinds = [k for k, weight in KINDS for _ in range(weight)]
    stamp = str(int(time.time()))
    posts = []
    for start in range(0, events, batch):
        items = []
        for n in range(start, min(events, start + batch)):
            kind = rng.choice(kinds)
            item: dict[str, Any] = {
                "email": f"reader{rng.randrange(RECIPIENTS):08d}@example.org", "event": kind,
                "timestamp": 1_768_500_000 + n, "sg_event_id": uuid.uuid4().hex,
                "sg_message_id": f"m{n % 100}.filter0001.1.0", "nl_send_id": str(send_id), "nl_issue": "001-hello",
                "nl_list": "big", "category": ["test"], "smtp-id": f"<{uuid.uuid4().hex}@example.org>"}
            if kind == "click":
                item["url"] = "https://news.example.org/archive/001-hello/"
            if kind in ("open", "click"):
                item["useragent"] = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"
                item["ip"] = "192.0.2.1"
            if kind == "bounce":
                item.update(type="bounce", reason="550 5.1.1 no such user", status="5.1.1")
            items.append(item)
        body = json.dumps(items).encode()
        signature = base64.b64encode(key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
        posts.append((body, signature, stamp))
    return posts


def start_serve(site: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--port", str(port)], cwd=site, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="events per post")
    parser.add_argument("--clients", type=int, default=4, help="posts in flight at once")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    site = root / "site"
    shutil.copytree(SITE, site)
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    env = {**os.environ, "PYTHONPATH": str(REPO), "NEWSLETTER_SECRET": "benchmark-secret-0123456789abcdef",
           "SENDGRID_WEBHOOK_PUBLIC_KEY": public}
    env.pop("NEWSLETTER_DATABASE_URL", None)
    admin = os.environ.get("NEWSLETTER_BENCH_PG_URL", DEFAULT_PG)
    name = f"bench_hook_{uuid.uuid4().hex[:8]}"
    if args.engine == "postgres":
        import psycopg

        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        env["NEWSLETTER_DATABASE_URL"] = admin.rsplit("/", 1)[0] + "/" + name
        subprocess.run([sys.executable, "-m", "pipeline", "db", "migrate"], cwd=site, env=env, check=True,
                       capture_output=True)
    serve = None
    try:
        send_id = record_send(site, env)
        posts = make_posts(send_id, args.events, args.batch, key)
        serve, port = start_serve(site, env)
        answers: list[tuple[int, dict[str, Any]]] = []
        todo = list(reversed(posts))
        lock = threading.Lock()

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            while True:
                with lock:
                    if not todo:
                        return
                    body, signature, stamp = todo.pop()
                conn.request("POST", "/webhooks/sendgrid", body=body, headers={
                    "Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Signature": signature,
                    "X-Twilio-Email-Event-Webhook-Timestamp": stamp})
                response = conn.getresponse()
                answer = (response.status, json.loads(response.read() or b"{}"))
                with lock:
                    answers.append(answer)

        load = os.getloadavg()[0]
        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(timeout=30)
        if args.engine == "postgres":
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        shutil.rmtree(root, ignore_errors=True)
    bad = [a for a in answers if a[0] != 200]
    applied = sum(a[1].get("applied", 0) for a in answers)
    if bad or len(answers) != len(posts) or applied != args.events:
        raise SystemExit(f"{len(bad)} post(s) not answered 200 (e.g. {bad[:1]}); {applied} of {args.events} applied")
    print(f"{args.engine}: {args.events:,} events in {len(posts)} signed posts of {args.batch} from {args.clients} "
          f"clients: {wall:.1f} s, {args.events / wall:,.0f} events/s, every one applied; load {load:.2f} before")


if __name__ == "__main__":
    main()
