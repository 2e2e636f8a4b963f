"""Helpers for the issue #4 tests: a real P-256 webhook signer and a real uvicorn server in a thread."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.web.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER


class Signer:
    """Plays SendGrid's part: a fresh P-256 key, its public half in SendGrid's base64 DER form."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_base64 = base64.b64encode(der).decode("ascii")

    def sign(self, body: bytes, timestamp: str) -> str:
        der = self.private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(der).decode("ascii")

    def headers(self, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        return {"Content-Type": "application/json", SIGNATURE_HEADER: self.sign(body, stamp), TIMESTAMP_HEADER: stamp}


def event(kind: str, email: str = "ada@example.org", *, send_id: str = "1", issue: str = "001-hello",
          list_name: str = "sample", timestamp: int = 1_768_500_000, **extra: Any) -> dict[str, Any]:
    """One event as SendGrid posts it, with the send's custom_args as top-level keys."""
    data: dict[str, Any] = {
        "email": email, "event": kind, "timestamp": timestamp, "sg_event_id": f"ev-{kind}-{timestamp}",
        "sg_message_id": f"msg-{send_id}.filter0001.1.0", "nl_send_id": send_id, "nl_issue": issue,
        "nl_list": list_name, "category": ["test"],
    }
    data.update(extra)
    return data


def body_of(events: list[dict[str, Any]]) -> bytes:
    return json.dumps(events).encode("utf-8")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(app: Any, **options: Any) -> Iterator[str]:
    """Serve `app` with a real uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                            lifespan="off", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


def request(method: str, url: str, *, data: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to the local server; HTTP errors come back as (status, headers, body) too."""
    assert url.startswith("http://127.0.0.1:")
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read()
        except ConnectionResetError:  # the HTTP server refused a request it could not parse and hung up
            body = b""
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, body


SECRET = b"test-secret-for-unsubscribe-links"
