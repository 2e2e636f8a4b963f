"""`newsletter serve`: the unsubscribe page, the SendGrid Event Webhook and the archive, as one Starlette app.

Database work runs in worker threads with one store connection per thread (short transactions), so a
`send` writing the same database at the same time only ever waits milliseconds.
The unsubscribe token holds the address, so request paths are logged with it redacted (uvicorn's own
access log stays off).
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline import tokens
from pipeline.build.i18n import translations
from pipeline.config import Config
from pipeline.errors import PipelineError, StoreError
from pipeline.store import Store
from pipeline.web.archive import Archive, not_found_page
from pipeline.web.events import reason_of
from pipeline.web.guard import UNDO_SECONDS, cross_site, form_type, may_undo, origin_of, undo_cookie, undo_cookie_name
from pipeline.web.pages import render_page
from pipeline.web.webhook import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookError,
    WebhookTooLarge,
    parse_events,
    process_events,
    signed_headers,
    verify_signature,
)

log = logging.getLogger("pipeline.web.app")
MAX_FORM_BYTES = 64 * 1024
T = TypeVar("T")
_SECRET_PATH = re.compile(r"^(.*/unsubscribe/)[^/]+")
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}


@dataclass(frozen=True)
class Settings:
    config: Config
    secret: bytes
    webhook_key: ec.EllipticCurvePublicKey | None  # None: the webhook answers 503 (SendGrid retries for 24 h)
    open_store: Callable[[], Store]  # one store per worker thread
    published: Callable[[], Collection[str] | None] | None = None  # default: issues the send log has sent
    max_webhook_bytes: int = MAX_BODY_BYTES


class _Stores(threading.local):
    store: Store | None = None


def redact(path: str) -> str:
    """A request path fit for a log: the unsubscribe token (which holds the address) removed."""
    return _SECRET_PATH.sub(r"\1[token]", path)


class AccessLog:
    """Method, redacted path and status of each request; never query strings, bodies or addresses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [0]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, receive, sending)
        log.info("%s %s %d", scope["method"], redact(scope["path"]), status[0])


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or WebhookTooLarge as soon as it passes `limit` (checked before and while reading)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise WebhookTooLarge(f"body of {declared[:20]} bytes is over the limit of {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise WebhookTooLarge(f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise WebhookError("the client went away before the body was complete") from None
    return b"".join(chunks)


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """urlencoded or multipart/form-data (RFC 8058 allows both) into a flat dict; stdlib only."""
    if form_type(content_type) == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        fields: dict[str, str] = {}
        for part in message.iter_parts() if message.is_multipart() else ():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                fields[name] = payload.decode("utf-8", "replace").strip()
        return fields
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key.strip(): value.strip() for key, value in pairs}


def create_app(settings: Settings) -> Starlette:
    """The app; opens the store once so that a bad database fails at start, not on a click."""
    config = settings.config
    settings.open_store().close()
    local = _Stores()

    def db() -> Store:
        if local.store is None:
            local.store = settings.open_store()
        return local.store

    async def in_db(func: Callable[[Store], T]) -> T:
        """Run func(store) in a worker thread, on that thread's own store."""
        return await run_in_threadpool(lambda: func(db()))

    def published() -> Collection[str] | None:
        return settings.published() if settings.published else db().sent_issues()

    archive = Archive(config, published=published)
    public_origin = origin_of(config.base_url)

    def _(message: str) -> str:
        """The theme's catalogue in the newsletter's language (pipeline.build.i18n), for the plain-text answers;
        looked up per call, so an edited catalogue shows without a restart; one that cannot be read: English."""
        try:
            return translations(config.theme_dir, config.language).gettext(message)
        except PipelineError as exc:
            log.error("%s", exc)
            return message

    def page(name: str, status: int = 200, **context: Any) -> Response:
        """A page of the theme (pipeline.web.pages) for the unsubscribe link, never cached or indexed. A broken
        page of the theme falls back to the default theme's: unsubscribing must always work."""
        try:
            text = render_page(config, name, archive_url="../archive/", fallback=True, **context)
        except PipelineError as exc:
            log.error("page %s: %s", name, exc)
            return PlainTextResponse(_("This page cannot be shown right now.") + "\n", status_code=500,
                                     headers=PRIVATE)
        return HTMLResponse(text, status_code=status, headers=PRIVATE)

    def own_origins(request: Request) -> tuple[str, ...]:
        """base_url's origin and the one this request was addressed to (scheme as the proxy reported it)."""
        host = request.headers.get("host", "")[:300].lower()
        return (public_origin, f"{request.scope.get('scheme', 'http')}://{host}")

    async def unsubscribe(request: Request) -> Response:
        raw = request.path_params["token"]
        token = tokens.verify(settings.secret, raw)
        if token is None:  # same answer for every bad token: nothing about any address is looked up
            return page("message.html.j2", 400, kind="invalid_link")
        minutes = UNDO_SECONDS // 60
        if request.method != "POST":  # GET and HEAD: scanners follow links; this only asks
            return page("unsubscribe.html.j2", state="ask", address=token.email)
        content_type = request.headers.get("content-type", "")
        if form_type(content_type) is None:
            return PlainTextResponse("Send a form: application/x-www-form-urlencoded or multipart/form-data.\n",
                                     status_code=415, headers=PRIVATE)
        try:
            fields = form_fields(content_type, await read_body(request, MAX_FORM_BYTES))
        except WebhookError as exc:
            return PlainTextResponse(f"{exc.args[0]}\n", status_code=exc.status, headers=PRIVATE)
        if fields.get("List-Unsubscribe") == "One-Click":  # RFC 8058, from the mail client: the token alone
            await in_db(lambda s: s.link_unsubscribe(email=token.email, list_name=token.list_name, issue=token.issue))
            return PlainTextResponse(_("Unsubscribed.") + "\n", headers=PRIVATE)
        action = fields.get("action")
        if action in ("unsubscribe", "resubscribe") and cross_site(request.headers, own=own_origins(request)):
            return page("message.html.j2", 403, kind="refused")
        if action == "unsubscribe":
            added = await in_db(lambda s: s.link_unsubscribe(email=token.email, list_name=token.list_name,
                                                                 issue=token.issue))
            # unsubscribed before (maybe by someone else): this browser gets no undo
            response = page("unsubscribe.html.j2", state="unsubscribed", address=token.email, undo=added,
                            undo_minutes=minutes)
            if added:
                response.set_cookie(undo_cookie_name(raw), undo_cookie(settings.secret, raw, now=time.time()),
                                    max_age=UNDO_SECONDS, path=None, secure=request.scope.get("scheme") == "https",
                                    httponly=True, samesite="strict")
            return response
        if action == "resubscribe":
            if not may_undo(settings.secret, raw, request.cookies.get(undo_cookie_name(raw)), now=time.time()):
                return page("unsubscribe.html.j2", 403, state="undo_refused", address=token.email,
                            undo_minutes=minutes)
            _done, remaining = await in_db(lambda s: s.link_resubscribe(email=token.email, reason_of=reason_of))
            if remaining:
                return page("unsubscribe.html.j2", state="still_stopped", address=token.email, reason=remaining)
            response = page("unsubscribe.html.j2", state="resubscribed", address=token.email)
            response.set_cookie(undo_cookie_name(raw), "", max_age=0, path=None, httponly=True, samesite="strict")
            return response
        return PlainTextResponse("Unknown request: POST List-Unsubscribe=One-Click, or use the button on this page.\n",
                                 status_code=400, headers=PRIVATE)

    async def webhook(request: Request) -> Response:
        if settings.webhook_key is None:
            return JSONResponse({"error": "webhook not configured: set SENDGRID_WEBHOOK_PUBLIC_KEY"}, 503)
        signature, timestamp = request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER)
        try:
            signed_headers(signature, timestamp)  # an unsigned post is refused before its body is read
            body = await read_body(request, settings.max_webhook_bytes)
            verify_signature(settings.webhook_key, body, signature, timestamp)
            try:
                events = parse_events(body)
            except WebhookError:
                await in_db(lambda s: s.record_reject(body, "not an array of event objects"))
                raise
            outcome = await in_db(lambda s: process_events(s, events))
        except WebhookError as exc:
            log.warning("webhook refused (%d): %s", exc.status, exc.args[0])
            return JSONResponse({"error": exc.args[0]}, exc.status)
        except StoreError as exc:  # busy for longer than the timeout, or away: let SendGrid retry
            log.error("webhook: store unavailable (%s)", exc)
            return JSONResponse({"error": "database busy or unavailable, retry later"}, 503)
        counts = outcome.as_dict()
        log.info("webhook: %s", counts)
        if outcome.skipped:
            return JSONResponse({"error": "some events were stored but not applied: unknown event types, unknown "
                                 "sends or missing fields (see the events table)", **counts}, 422)
        return JSONResponse(counts)

    async def archive_page(request: Request) -> Response:
        path = request.path_params.get("path", "")
        if path.endswith("index.html"):
            path = path[: -len("index.html")]
        try:
            page = await run_in_threadpool(archive.get, path)
        except PipelineError as exc:  # e.g. the theme changed since and no longer renders this issue
            log.error("archive: %s", exc)
            return PlainTextResponse(_("This page cannot be shown right now.") + "\n", status_code=500)
        if (page is None and path and not path.endswith("/")
                and await run_in_threadpool(archive.get, path + "/") is not None):
            return RedirectResponse(path.rsplit("/", 1)[-1] + "/", 308)  # relative: works under any prefix
        if page is None:
            try:
                text = await run_in_threadpool(not_found_page, config, path)
            except PipelineError as exc:
                log.error("archive: %s", exc)
                return PlainTextResponse(_("Not found in the archive.") + "\n", status_code=404)
            return HTMLResponse(text, status_code=404)
        return Response(page.body, media_type=page.media_type, headers={"Cache-Control": "max-age=300"})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def to_archive(request: Request) -> Response:
        return RedirectResponse("archive/", 308)  # relative, as every link here: the prefix is the proxy's

    routes = [
        Route("/unsubscribe/{token}", unsubscribe, methods=["GET", "POST"]),
        Route("/webhooks/sendgrid", webhook, methods=["POST"]),
        Route("/archive/{path:path}", archive_page, methods=["GET"]),
        Route("/archive", to_archive, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/", to_archive, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(AccessLog)
    return app


def serve(settings: Settings, *, host: str, port: int, root_path: str = "", forwarded_allow_ips: str = "127.0.0.1",
          echo: Callable[[str], None] = print) -> None:
    """Run the app with uvicorn until interrupted. Behind a proxy, X-Forwarded-* are trusted from
    `forwarded_allow_ips` only; `root_path` is the path prefix the proxy publishes us under, if any."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    echo(f"serving on http://{host}:{port}{root_path}/ (unsubscribe, /webhooks/sendgrid, /archive/); Ctrl+C stops")
    uvicorn.run(app, host=host, port=port, root_path=root_path, proxy_headers=True,
                forwarded_allow_ips=forwarded_allow_ips, access_log=False, log_level="warning",
                server_header=False, lifespan="off")
