"""A SendGrid v3 stand-in: a real HTTP server on 127.0.0.1 that the real `sendgrid` client talks to.

Why: the send stack must be tested against the failures that matter for "exactly once" (429, 5xx, a
connection dropped before or after the mail went out, a slow answer) and against SendGrid's request
limits, without ever reaching the network. It enforces `sendgrid_mail_send.schema.json` (written from
SendGrid's published spec) plus the limits a schema cannot express (both in mailsend_rules.py), and records
what it accepted. This module holds its state and its checks; standin_http.py its HTTP side.

In a test (pytest puts tests/ on sys.path, so `from standin import StandIn`)::

    with StandIn(api_key="SG.test") as sg:
        client = SendGridAPIClient("SG.test", host=sg.url)
        client.client.mail.send.post(request_body=body)
        assert sg.recipients()["ada@example.org"] == 1

As a process (kill -9 tests, benchmarks)::

    python tests/standin.py --port 0 [--parse] [--delay 0.25] [--fault-rate 0.3 --seed 1] [--record FILE]

prints its URL on the first stdout line and appends one JSON line per accepted request to FILE.

`--parse` (benchmarks) does what SendGrid must do with every body before it answers: it parses the
whole body as JSON, checks it against the Mail Send schema (with the compiled validator, as a server
would, not the tests' Python one) and SendGrid's limits, checks its batch id, and reads every address of
every personalization; it keeps no bodies. It tallies
addresses instead of keeping them (a set of their hashes, a few dozen bytes an address), so that it can
say how many arrived more than once; `GET /standin/tally` answers that as JSON. `--delay` answers every
request that many seconds late, each in its own thread, as a distant server would: requests that
overlap wait together.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import json
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import jsonschema
import jsonschema_rs
from mailsend_rules import (  # tests/ is on sys.path: pytest puts it there, and a script's own folder is
    MAX_RECIPIENTS,
    SCHEMA_PATH,
    Error,
    _limits,
    _schema_field,
    limit_errors,
)
from standin_http import SUPPRESSION_PATHS, _Handler, _Server

MAX_ERRORS = 50
MAX_EXAMPLES = 10  # duplicated addresses named in the tally
#: Every fault `script()` accepts. "ok" processes the request normally; "slow" processes (and records)
#: it at once but answers only after `slow_seconds`, so a client timeout leaves a mail that did go out;
#: "drop_after" processes it, records it if valid, then closes without answering. "502" and "504" are a
#: gateway's answers after SendGrid behind it processed the request (and recorded it if valid): the
#: gateway says nothing about whether the mail went out.
FAULTS = ("ok", "slow", "429", "500", "503", "drop_before", "drop_after", "502", "504", "400", "401", "403", "413")
MAX_HELD = 10  # batches paused or cancelled at once ("You can't pause or cancel more than 10 different batches")


@dataclass(frozen=True, slots=True)
class Accepted:
    """One accepted mail send. `body` is None in parse mode, which keeps only the recipient count."""

    message_id: str
    received: float
    recipients: int
    body: dict[str, Any] | None


class StandIn:
    """The stand-in server; all state is guarded by one lock, so tests may send from many threads."""

    def __init__(self, api_key: str = "SG.test", *, port: int = 0, validate: bool = True,
                 fault_rate: float = 0.0, seed: int | None = None, slow_seconds: float = 2.0,
                 retry_after: int = 1, record: Path | None = None, delay: float = 0.0) -> None:
        self.api_key = api_key
        #: False: parse mode (no schema, no bodies kept, addresses tallied by hash; see the module's doc).
        self.validate = validate
        #: Every answer waits this many seconds (in its own thread; other connections go on meanwhile).
        self.delay = delay
        self.fault_rate = fault_rate
        #: Faults drawn when `fault_rate` strikes.
        self.random_faults: tuple[str, ...] = ("429", "500", "503", "drop_before", "drop_after")
        #: When set, every request not covered by the script gets this fault (e.g. "403").
        self.always: str | None = None
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after
        self.accepted: list[Accepted] = []
        #: One entry per answered request, in answer order: the status, or "drop".
        self.statuses: list[int | str] = []
        self._count = 0
        #: Requests being handled right now, and the most there ever were at once (what a sender overlaps).
        self.in_flight = 0
        self.max_in_flight = 0
        #: time.monotonic() at each request's arrival, and at each 429 answer (the pause a sender owes us).
        self.arrivals: list[float] = []
        self.answered_429: list[float] = []
        #: Answers wait until this many requests were in flight together once (or `gate_seconds` passed):
        #: a sender that overlaps requests is seen to, however fast the machine. 0: no gate.
        self.gate = 0
        self.gate_seconds = 30.0
        #: A 429 is answered before any other answer, and the others wait out its Retry-After too: a sender
        #: then has no free slot to start a request in before the pause ends, unless it ignores the pause.
        self.hold_after_429 = False
        #: Cleared, every answer waits until it is set again (bounded by `gate_seconds`): a test acts while a
        #: request is out, then lets it go.
        self.answers_open = threading.Event()
        self.answers_open.set()
        self._gate_open = threading.Event()
        self._held_until = 0.0
        self.suppressions: dict[str, list[dict[str, Any]]] = {k: [] for k in SUPPRESSION_PATHS.values()}
        self._recipients: Counter[str] = Counter()
        self._seen: set[int] = set()  # parse mode: hash() of every address accepted
        self._tally = {"requests": 0, "recipients": 0, "duplicates": 0}
        self._examples: list[str] = []
        self._script: deque[str] = deque()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        #: Held while a body is parsed and checked: one at a time, as the GIL allows anyway, but without
        #: threads taking the GIL from each other halfway through 500 KB (which costs CPU, not only time).
        self._busy = threading.Lock()
        self._stopping = threading.Event()
        self._record: IO[str] | None = record.open("a", encoding="utf-8") if record else None
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
        self._validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
        # Formats too (the schema's one is "email"), as the Python validator checks them: its own email check is
        # stricter than jsonschema's ("@" in it), and a body it refuses goes to the Python one, which decides.
        self._compiled = jsonschema_rs.validator_for(schema, validate_formats=True)
        #: Batch ids created by POST /v3/mail/batch: -> {"status": None | "pause" | "cancel", "send_at": int | None}
        #: (the earliest send_at of the mail sent with it). Tests may add entries, e.g. other sends already held.
        self.batches: dict[str, dict[str, Any]] = {}
        #: (method, path) of every batch and scheduled-sends request, which never take a scripted fault.
        self.control_requests: list[tuple[str, str]] = []
        #: How many batches SendGrid lets be paused or cancelled at once.
        self.max_held = MAX_HELD
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.standin = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="sendgrid-standin", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> StandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        if self._record:
            self._record.close()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- what tests drive and read -----------------------------------------------------------------

    def script(self, faults: Iterable[str]) -> None:
        """Queue faults for the next requests, one each, before any random fault."""
        faults = list(faults)
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
        with self._lock:
            self._script.extend(faults)

    def recipients(self) -> Counter[str]:
        """How often each address was in an accepted request (to, cc and bcc); parse mode: see `tally`."""
        if not self.validate:
            raise RuntimeError("a stand-in in parse mode keeps no addresses; read tally() instead")
        with self._lock:
            return Counter(self._recipients)

    def tally(self) -> dict[str, Any]:
        """Accepted requests and addresses, how many of those addresses had come before, and a few of them
        by name. In parse mode an address is known by its hash: a duplicate could (about once in 10^13
        pairs) be two addresses that collide, never a duplicate missed."""
        with self._lock:
            distinct = len(self._seen) if not self.validate else len(self._recipients)
            return {**self._tally, "distinct": distinct, "duplicate_examples": list(self._examples),
                    "max_in_flight": self.max_in_flight}

    @property
    def request_count(self) -> int:
        """Requests received, whatever was answered."""
        with self._lock:
            return self._count

    def clear(self) -> None:
        with self._lock:
            self.accepted.clear()
            self.statuses.clear()
            self._count = 0
            self._recipients.clear()
            self._seen.clear()
            self._tally = dict.fromkeys(self._tally, 0)
            self._examples.clear()
            self._script.clear()
            self.arrivals.clear()
            self.answered_429.clear()
            self.max_in_flight = self.in_flight

    # --- used by the handler -----------------------------------------------------------------------

    def _arrived(self) -> None:
        with self._lock:
            self.arrivals.append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.in_flight >= self.gate:
                self._gate_open.set()

    def _left(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _hold(self, status: int | str) -> None:
        """Before an answer: the gate; with `hold_after_429`, a 429 is answered first and every other answer
        waits until its Retry-After has passed (both bounded by `gate_seconds`: a test fails, never hangs)."""
        if self.gate and not self._gate_open.is_set():
            self._gate_open.wait(self.gate_seconds)
        if not self.answers_open.is_set():
            self.answers_open.wait(self.gate_seconds)
        if status == 429:
            with self._lock:
                self.answered_429.append(time.monotonic())
                self._held_until = max(self._held_until, time.monotonic() + self.retry_after)
            return
        if not self.hold_after_429:
            return
        deadline = time.monotonic() + self.gate_seconds
        while not self.answered_429 and time.monotonic() < deadline and not self._stopping.is_set():
            self._stopping.wait(0.01)
        while (left := self._held_until - time.monotonic()) > 0 and not self._stopping.is_set():
            self._stopping.wait(left)

    def _next_fault(self) -> str:
        with self._lock:
            self._count += 1
            if self._script:
                return self._script.popleft()
            if self.always:
                return self.always
            if self.fault_rate and self._rng.random() < self.fault_rate:
                return self._rng.choice(self.random_faults)
            return "ok"

    def _note(self, status: int | str) -> None:
        with self._lock:
            self.statuses.append(status)

    def _accept(self, body: dict[str, Any] | None, emails: list[str]) -> str:
        message_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        record = Accepted(message_id, time.time(), len(emails), body)
        with self._lock:
            self.accepted.append(record)
            self._count_in(emails)
            if self._record:
                self._record.write(json.dumps({"message_id": message_id, "recipients": emails}) + "\n")
                self._record.flush()
        return message_id

    def _batch_errors(self, body: dict[str, Any]) -> list[Error]:
        """A mail send's batch_id must be one this account created; it remembers the earliest send_at."""
        batch_id = body.get("batch_id")
        if batch_id is None:
            return []
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return [("batch_id", "invalid batch id")]
            if "send_at" in body:
                batch["send_at"] = min(batch["send_at"] or body["send_at"], body["send_at"])
        return []

    def held(self) -> dict[str, str]:
        """Batch id -> "pause" / "cancel", for the batches that have a status."""
        with self._lock:
            return {k: v["status"] for k, v in self.batches.items() if v["status"]}

    def _count_in(self, emails: list[str]) -> None:
        """Under the lock: the tally, and the addresses themselves (schema mode) or their hashes (parse mode)."""
        repeated: list[str] = []
        if self.validate:
            for e in emails:
                if self._recipients[e]:
                    repeated.append(e)
                self._recipients[e] += 1
        else:
            hashes = {hash(e) for e in emails}
            if len(hashes) == len(emails) and self._seen.isdisjoint(hashes):
                self._seen |= hashes
            else:  # one by one, to name them
                for e in emails:
                    if hash(e) in self._seen:
                        repeated.append(e)
                    self._seen.add(hash(e))
        self._tally["requests"] += 1
        self._tally["recipients"] += len(emails)
        self._tally["duplicates"] += len(repeated)
        self._examples += repeated[:MAX_EXAMPLES - len(self._examples)]

    def _check_compiled(self, body: Any) -> tuple[list[Error], list[str]]:
        """Parse mode: the same schema and limits as `_check`, the schema through the compiled validator (0.3 ms
        a 460 KB body against 176 ms in Python), as a server would; the Python one only names what failed."""
        if not self._compiled.is_valid(body):
            return self._check(body)
        emails: list[str] = []
        errors = _limits(body, time.time(), emails)
        if errors:
            return errors[:MAX_ERRORS], []
        if not emails:  # parsed_recipients' answer; the schema lets a personalization have no address
            return parsed_recipients(body)
        return [], emails

    def _check(self, body: Any) -> tuple[list[Error], list[str]]:
        """Errors for a parsed body, and its recipient addresses."""
        errors = [(_schema_field(e), e.message[:300]) for e in self._validator.iter_errors(body)]
        if not errors:
            errors = limit_errors(body, time.time())
        if errors:
            return errors[:MAX_ERRORS], []
        people = body["personalizations"]
        return [], [a["email"] for p in people for kind in ("to", "cc", "bcc") for a in p.get(kind, ())]


def parsed_recipients(body: Any) -> tuple[list[Error], list[str]]:
    """Parse mode: every address of a parsed body, or the error SendGrid gives a body without any."""
    try:
        emails = [a["email"] for p in body["personalizations"] for kind in ("to", "cc", "bcc")
                  for a in p.get(kind, ())]
    except (KeyError, TypeError, AttributeError):
        emails = []
    if not emails or not all(isinstance(e, str) for e in emails):
        return [("personalizations", "personalizations with to addresses are required.")], []
    if len(emails) > MAX_RECIPIENTS:
        return [("personalizations", f"The total number of recipients must be {MAX_RECIPIENTS} or less.")], []
    return [], emails


def main(argv: list[str] | None = None) -> None:
    """Run as a process until killed; the first stdout line is the URL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="SG.test")
    parser.add_argument("--parse", action="store_true",
                        help="parse every body and tally its addresses; no schema checks, no bodies kept")
    parser.add_argument("--delay", type=float, default=0.0, help="answer every request this many seconds late")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--slow-seconds", type=float, default=2.0)
    parser.add_argument("--record", type=Path, help="append one JSON line per accepted request")
    args = parser.parse_args(argv)
    standin = StandIn(args.api_key, port=args.port, validate=not args.parse, fault_rate=args.fault_rate,
                      seed=args.seed, slow_seconds=args.slow_seconds, record=args.record, delay=args.delay)
    gc.freeze()  # what start-up made lives as long as the process: the collections a body's parse sets off skip it
    with standin:
        print(standin.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
