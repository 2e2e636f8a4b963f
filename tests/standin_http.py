"""The stand-in's HTTP side (tests/standin.py has its state and what it checks): the server, one handler per
request, the answers SendGrid gives (errors as {"errors": [{"message", "field", "help"}]}, the rate-limit
headers of a 429), its suppression lists read page by page, and the batch and scheduled-sends endpoints.
"""

from __future__ import annotations

import base64
import gzip
import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from mailsend_rules import MAX_BODY_BYTES, Error, parse_json

if TYPE_CHECKING:
    from standin import StandIn

TALLY_PATH = "/standin/tally"
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
LAST_CHANGE_SECONDS = 600  # a pause or cancel is refused later than 10 minutes before send_at


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
