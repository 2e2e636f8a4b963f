"""A SendGrid v3 stand-in: a real HTTP server on 127.0.0.1 that the real `sendgrid` client talks to.

Why: the send stack must be tested against the failures that matter for "exactly once" (429, 5xx, a
connection dropped before or after the mail went out, a slow answer) and against SendGrid's request
limits, without ever reaching the network. It enforces `sendgrid_mail_send.schema.json` (written from
SendGrid's published spec) plus the limits a schema cannot express, and records what it accepted.

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
import gzip
import json
import random
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import jsonschema_rs
import orjson

SCHEMA_PATH = Path(__file__).with_name("sendgrid_mail_send.schema.json")
# SendGrid says "less than 30 MB" without saying which MB; the smaller reading keeps senders safe.
MAX_BODY_BYTES = 30_000_000
MAX_RECIPIENTS = 1000
MAX_ARGS_BYTES = 10_000
MAX_SUBSTITUTION_BYTES = 10_000
MAX_SCHEDULE_SECONDS = 72 * 3600
MAX_ERRORS = 50
TALLY_PATH = "/standin/tally"
MAX_EXAMPLES = 10  # duplicated addresses named in the tally
FORBIDDEN_HEADERS = frozenset({
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type", "content-transfer-encoding",
    "to", "from", "subject", "reply-to", "cc", "bcc",
})
#: Every fault `script()` accepts. "ok" processes the request normally; "slow" processes (and records)
#: it at once but answers only after `slow_seconds`, so a client timeout leaves a mail that did go out;
#: "drop_after" processes it, records it if valid, then closes without answering. "502" and "504" are a
#: gateway's answers after SendGrid behind it processed the request (and recorded it if valid): the
#: gateway says nothing about whether the mail went out.
FAULTS = ("ok", "slow", "429", "500", "503", "drop_before", "drop_after", "502", "504", "400", "401", "403", "413")
GATEWAY = {"502": "Bad Gateway (scripted by the test)", "504": "Gateway Timeout (scripted by the test)"}
CANNED = {
    "400": "Bad Request (scripted by the test)",
    "401": "The provided authorization grant is invalid, expired, or revoked",
    "403": "The from address does not match a verified Sender Identity",
    "413": "Payload Too Large",
    "429": "too many requests",
    "500": "internal server error (scripted by the test)",
    "503": "service unavailable (scripted by the test)",
}
#: URL path -> key of `StandIn.suppressions`.
SUPPRESSION_PATHS = {
    "/v3/suppression/bounces": "bounces",
    "/v3/suppression/blocks": "blocks",
    "/v3/suppression/spam_reports": "spam_reports",
    "/v3/suppression/invalid_emails": "invalid_emails",
    "/v3/suppression/unsubscribes": "unsubscribes",
    "/v3/asm/suppressions": "asm_suppressions",
}
PAGE_LIMIT = 500  # default and largest page size of the suppression lists
MAX_HELD = 10  # batches paused or cancelled at once ("You can't pause or cancel more than 10 different batches")
LAST_CHANGE_SECONDS = 600  # a pause or cancel is refused later than 10 minutes before send_at

Error = tuple[str | None, str]  # (field, message)


@dataclass(frozen=True, slots=True)
class Accepted:
    """One accepted mail send. `body` is None in parse mode, which keeps only the recipient count."""

    message_id: str
    received: float
    recipients: int
    body: dict[str, Any] | None


_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19  # orjson reads integers beyond 64 bits as floats; json reads them exactly


def parse_json(raw: bytes) -> Any:
    """json.loads(raw), faster where orjson can read it: orjson gives the same value whenever it gives one
    (it refuses NaN, lone surrogates, a BOM, which json takes, and the fallback reads them) except for
    integers of 19 digits and more, which it may turn into floats: a body with such a run of digits goes to
    json. The check costs 0.4 ms on 560 KB; orjson saves about twice that."""
    if _LONG_NUMBER not in raw.translate(_DIGITS):
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(raw)
    return json.loads(raw)


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _schema_field(err: jsonschema.ValidationError) -> str | None:
    """SendGrid names fields as dotted paths ("personalizations.0.to.0.email")."""
    parts = [str(p) for p in err.absolute_path]
    instance = err.instance if isinstance(err.instance, dict) else {}
    schema = err.schema if isinstance(err.schema, dict) else {}
    if err.validator == "required":
        parts.append(next(k for k in schema["required"] if k not in instance))
    elif err.validator == "additionalProperties":
        parts.append(sorted(set(instance) - set(schema.get("properties", {})))[0])
    return ".".join(parts) or None


def _header_errors(headers: dict[str, str], field: str) -> list[Error]:
    bad = sorted(h for h in headers if h.lower() in FORBIDDEN_HEADERS)
    return [(field, f"The header {h!r} is reserved and cannot be set.") for h in bad]


_UNIQUE = "Each email address in the personalization block should be unique between to, cc, and bcc."
_ARGS_TOO_BIG = f"custom_args must be less than {MAX_ARGS_BYTES} bytes."
_TOO_LATE = "send_at cannot be more than 72 hours in the future."


def _address_errors(i: int, person: dict[str, Any]) -> list[Error]:
    """The addresses of one personalization, in order: unique between to, cc and bcc in any case, no ; or ,
    in a name."""
    errors: list[Error] = []
    seen: set[str] = set()
    for kind in ("to", "cc", "bcc"):
        for j, address in enumerate(person.get(kind, ())):
            email = address["email"].lower()
            if email in seen:
                errors.append((f"personalizations.{i}.{kind}.{j}.email", _UNIQUE))
            seen.add(email)
            name = address.get("name", "")
            if ";" in name or "," in name:
                errors.append((f"personalizations.{i}.{kind}.{j}.name", "The name cannot contain ';' or ','."))
    return errors


def _utf8_bytes(strings: dict[str, str]) -> int:
    """Keys and values together in UTF-8; an ASCII text (str.isascii() costs nothing) is as long in bytes."""
    text = "".join([*strings, *strings.values()])
    return len(text) if text.isascii() else len(text.encode())


def limit_errors(body: dict[str, Any], now: float) -> list[Error]:
    """The Mail Send rules a JSON schema cannot express; `body` has already passed the schema."""
    return _limits(body, now, [])


def _limits(body: dict[str, Any], now: float, emails: list[str]) -> list[Error]:
    """`limit_errors`, appending every address to `emails` on the way (parse mode tallies them).

    Why it is not written plainly: a benchmark's stand-in runs this on every body, 1000 personalizations each,
    in one process. So a personalization costs a few cheap tests, the common one (one address) skips the
    duplicate check, and error texts are made only for what fails. tests/test_standin_limits.py keeps the
    plain version and holds the two to the same errors on generated bodies."""
    errors: list[Error] = []
    latest = now + MAX_SCHEDULE_SECONDS
    top_args = body.get("custom_args", {})
    if _json_bytes(top_args) >= MAX_ARGS_BYTES:
        errors.append(("custom_args", _ARGS_TOO_BIG))
    errors += _header_errors(body.get("headers", {}), "headers")
    add = emails.append
    fine_headers: set[str] = set()  # header names in this body already found not reserved
    total = 0
    for i, person in enumerate(body["personalizations"]):
        to = person.get("to", ())
        if len(to) == 1 and "cc" not in person and "bcc" not in person:  # one address cannot repeat itself
            address = to[0]
            add(address["email"])
            total += 1
            name = address.get("name", "")
            if ";" in name or "," in name:
                errors += _address_errors(i, person)
        else:
            found = [a["email"] for kind in ("to", "cc", "bcc") for a in person.get(kind, ())]
            emails += found
            total += len(found)
            errors += _address_errors(i, person)
        headers = person.get("headers")
        if headers and not headers.keys() <= fine_headers:
            if FORBIDDEN_HEADERS.isdisjoint(map(str.lower, headers)):
                fine_headers.update(headers)
            else:
                errors += _header_errors(headers, f"personalizations.{i}.headers")
        substitutions = person.get("substitutions")
        if substitutions and _utf8_bytes(substitutions) > MAX_SUBSTITUTION_BYTES:
            errors.append((f"personalizations.{i}.substitutions",
                           f"substitutions may not exceed {MAX_SUBSTITUTION_BYTES} bytes per personalization."))
        if "custom_args" in person and _json_bytes({**top_args, **person["custom_args"]}) >= MAX_ARGS_BYTES:
            errors.append((f"personalizations.{i}.custom_args", _ARGS_TOO_BIG))
        if person.get("send_at", 0) > latest:
            errors.append((f"personalizations.{i}.send_at", _TOO_LATE))
    return errors + _message_errors(body, latest, total)


def _message_errors(body: dict[str, Any], latest: float, total: int) -> list[Error]:
    """The rules on the message as a whole, once per body: `total` recipients, send_at before `latest`."""
    errors: list[Error] = []
    if total > MAX_RECIPIENTS:
        errors.append(("personalizations", f"The total number of recipients must be {MAX_RECIPIENTS} or less "
                       f"(to, cc and bcc together); this request has {total}."))
    if body.get("send_at", 0) > latest:
        errors.append(("send_at", _TOO_LATE))
    if "reply_to" in body and "reply_to_list" in body:
        errors.append(("reply_to_list", "reply_to and reply_to_list cannot be used together."))
    templated = "template_id" in body
    if "content" not in body and not templated:
        errors.append(("content", "Unless a valid template_id is provided, the content parameter is required."))
    types = [c["type"] for c in body.get("content", ())]
    expected = [t for t in ("text/plain", "text/html") if t in types]
    if types[:len(expected)] != expected:
        errors.append(("content", "text/plain must come first, then text/html, then any other type."))
    if not templated and "subject" not in body and any("subject" not in p for p in body["personalizations"]):
        errors.append(("subject", "The subject is required, at the top level or in every personalization."))
    return errors


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: StandIn

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up on a slow answer is expected; anything else is a bug worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    _delay = 0.0

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: test output should show test failures, not access logs."""

    def do_POST(self) -> None:
        self._serve(post=True)

    def do_GET(self) -> None:
        self._serve(post=False)

    def do_PATCH(self) -> None:
        self._serve(post=False, method="PATCH")

    def do_DELETE(self) -> None:
        self._serve(post=False, method="DELETE")

    def _serve(self, *, post: bool, method: str = "") -> None:
        sg = self.server.standin
        if not post and urlsplit(self.path).path == TALLY_PATH:
            self._answer(200, sg.tally())
            return
        path = urlsplit(self.path).path.rstrip("/")
        if path.startswith(("/v3/mail/batch", "/v3/user/scheduled_sends")):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self._read(length)
            method = method or ("POST" if post else "GET")
            with sg._lock:
                sg.control_requests.append((method, path))
            status, payload = (_control(sg, method, path, raw)
                               if self.headers.get("Authorization") == f"Bearer {sg.api_key}"
                               else _err(401, None, "authorization required"))
            return self._plain_answer(status, payload)
        if method:
            return self._error(405, None, f"{method} is not allowed on {path}")
        sg._arrived()
        try:
            self._handle(sg, post=post)
        finally:
            sg._left()

    def _handle(self, sg: StandIn, *, post: bool) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self._read(length)
        fault = sg._next_fault()
        if fault == "drop_before":
            return self._drop()
        if fault in CANNED:
            return self._error(int(fault), None, CANNED[fault])
        self._delay = sg.slow_seconds if fault == "slow" else 0.0
        if self.headers.get("Authorization") != f"Bearer {sg.api_key}":
            return self._error(401, None, CANNED["401"], drop=fault == "drop_after")
        path = urlsplit(self.path).path.rstrip("/")
        if post and path == "/v3/mail/send":
            self._mail_send(sg, raw, length, drop=fault == "drop_after", gateway=fault if fault in GATEWAY else "")
        elif not post and path in SUPPRESSION_PATHS:
            self._suppressions(sg, SUPPRESSION_PATHS[path], drop=fault == "drop_after")
        else:
            self._error(404, None, f"no such endpoint in the stand-in: {'POST' if post else 'GET'} {path}")

    def _read(self, length: int) -> bytes | None:
        """The body, or None when it is too large (then drained, so the client reads our 413)."""
        if length < MAX_BODY_BYTES:
            return self.rfile.read(length)
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)
        return None

    def _mail_send(self, sg: StandIn, raw: bytes | None, length: int, *, drop: bool, gateway: str = "") -> None:
        status, errors, message_id = self._process(sg, raw, length)
        if gateway:  # SendGrid behind the gateway did its work; the client hears only the gateway
            return self._error(int(gateway), None, GATEWAY[gateway])
        if status != 202:
            return self._errors(status, errors, drop=drop)
        if drop:
            return self._drop()
        self._start(202)
        self.send_header("X-Message-Id", message_id)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _process(self, sg: StandIn, raw: bytes | None, length: int) -> tuple[int, list[Error], str]:
        """What SendGrid does with a Mail Send body: (202, [], message id) once accepted, else the refusal."""
        if raw is None:
            return 413, [(None, f"The request body is {length} bytes; it must be less than {MAX_BODY_BYTES}.")], ""
        with sg._busy:  # answers (which may wait: --delay, faults, gates) come after, without it
            try:
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                body = parse_json(raw)
            except (ValueError, OSError) as exc:
                return 400, [(None, f"The request body is not valid JSON: {exc}")], ""
            errors, emails = sg._check(body) if sg.validate else sg._check_compiled(body)
        if not errors:
            errors = sg._batch_errors(body)
        if errors:
            return 400, errors, ""
        return 202, [], sg._accept(body if sg.validate else None, emails)

    def _suppressions(self, sg: StandIn, key: str, *, drop: bool) -> None:
        """One page, in seeded order; start_time/end_time (epoch seconds, inclusive) filter on creation."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        try:
            limit = min(int(query.get("limit", PAGE_LIMIT)), PAGE_LIMIT)
            offset = int(query.get("offset", 0))
            start, end = int(query.get("start_time", 0)), int(query.get("end_time", 2**62))
            if limit < 1 or offset < 0:
                raise ValueError
        except ValueError:
            return self._error(400, "limit", "limit must be 1 to 500, offset 0 or more, times integers.", drop=drop)
        created = "created_at" if key == "asm_suppressions" else "created"
        with sg._lock:
            items = [item for item in sg.suppressions[key] if start <= item.get(created, 0) <= end]
        self._answer(200, items[offset:offset + limit], drop=drop)

    def _start(self, status: int) -> None:
        sg = self.server.standin
        if sg.delay and self.path != TALLY_PATH:
            sg._stopping.wait(sg.delay)
        sg._hold(status)
        if self._delay:
            sg._stopping.wait(self._delay)
        sg._note(status)
        self.send_response(status)

    def _drop(self) -> None:
        """Close the connection without a byte of answer: the client sees a dropped connection."""
        self.server.standin._hold("drop")
        self.server.standin._note("drop")
        self.close_connection = True

    def _error(self, status: int, field: str | None, message: str, *, drop: bool = False) -> None:
        self._errors(status, [(field, message)], drop=drop)

    def _errors(self, status: int, errors: list[Error], *, drop: bool = False) -> None:
        body = {"errors": [{"message": m, "field": f, "help": None} for f, m in errors]}
        self._answer(status, body, drop=drop)

    def _plain_answer(self, status: int, payload: Any) -> None:
        """An answer outside the Mail Send faults and gates (the batch and scheduled-sends endpoints)."""
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, status: int, payload: Any, *, drop: bool = False) -> None:
        if drop:
            return self._drop()
        sg = self.server.standin
        data = json.dumps(payload).encode()
        self._start(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", str(sg.retry_after))
            self.send_header("X-RateLimit-Limit", "600")
            self.send_header("X-RateLimit-Remaining", "0")
            self.send_header("X-RateLimit-Reset", str(int(time.time()) + sg.retry_after))
        self.end_headers()
        self.wfile.write(data)


def _control(sg: StandIn, method: str, path: str, raw: bytes | None) -> tuple[int, Any]:
    """The batch and scheduled-sends endpoints, with SendGrid's documented rules and errors."""
    parts = path.split("/")[2:]  # ["mail", "batch", id?] or ["user", "scheduled_sends", id?]
    batch_id = parts[2] if len(parts) == 3 else None
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        return _err(400, None, "The request body is not valid JSON.")
    with sg._lock:
        if parts[:2] == ["mail", "batch"]:
            if method == "POST" and batch_id is None:
                new = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=").replace("-", "a")
                sg.batches[new] = {"status": None, "send_at": None}
                return (201, {"batch_id": new})
            if method == "GET" and batch_id is not None:
                if batch_id not in sg.batches:
                    return _err(400, None, "invalid batch id")
                return (200, {"batch_id": batch_id})
            return _err(405, None, f"{method} is not allowed on {path}")
        if method == "GET":
            held = [{"batch_id": k, "status": v["status"]} for k, v in sg.batches.items() if v["status"]
                    and batch_id in (None, k)]
            return (200, held)
        if method == "POST" and batch_id is None:
            batch_id = body.get("batch_id") if isinstance(body, dict) else None
            status = body.get("status") if isinstance(body, dict) else None
            if not isinstance(batch_id, str) or batch_id not in sg.batches:
                return _err(400, "batch_id", "invalid batch id")
            if status not in ("pause", "cancel"):
                return _err(400, "status", "status must be either cancel or pause")
            if sg.batches[batch_id]["status"]:
                return _err(400, "batch_id", "batch id already has a status; use PATCH to change it")
            if sum(1 for v in sg.batches.values() if v["status"]) >= sg.max_held:
                return _err(400, None, "max limit reached")
            return _hold(sg, batch_id, status, 201)
        if batch_id is None or batch_id not in sg.batches or not sg.batches[batch_id]["status"]:
            return _err(404, None, "batch id not found")
        if method == "PATCH":
            status = body.get("status") if isinstance(body, dict) else None
            if status not in ("pause", "cancel"):
                return _err(400, "status", "status must be either cancel or pause")
            return _hold(sg, batch_id, status, 204)
        if method == "DELETE":
            sg.batches[batch_id]["status"] = None
            return (204, None)
    return _err(405, None, f"{method} is not allowed on {path}")


def _err(status: int, field: str | None, message: str) -> tuple[int, Any]:
    return status, {"errors": [{"message": message, "field": field, "help": None}]}


def _hold(sg: StandIn, batch_id: str, status: str, code: int) -> tuple[int, Any]:
    """Called with sg._lock held: too late within 10 minutes of the batch's send_at."""
    send_at = sg.batches[batch_id]["send_at"]
    if send_at is not None and send_at - time.time() < LAST_CHANGE_SECONDS:
        return _err(400, None, "cannot pause or cancel a batch later than 10 minutes before send_at")
    sg.batches[batch_id]["status"] = status
    if code == 204:
        return (204, None)
    return (code, {"batch_id": batch_id, "status": status})


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
