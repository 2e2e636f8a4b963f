"""Taking back scheduled mail: SendGrid batch ids and its scheduled-sends API (`cancel`, `pause`, `resume`).

Every real send gets one batch id (`POST /v3/mail/batch`), recorded on its row in the send log and carried
by every request of the send, so that mail scheduled with `--at` can be paused or cancelled as a whole
(`POST /v3/user/scheduled_sends {batch_id, status}`; `PATCH .../{batch_id}` changes it, `DELETE` lifts it).
SendGrid's rules, checked here before asking: no later than 10 minutes before `send_at`; at most 10
batches paused or cancelled at once (SendGrid answers 400 beyond that); a paused batch is discarded 72 h
after `send_at`, a cancelled one at `send_at`.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import Problem, SendError
from pipeline.send.transport import API_HOST_ENV, API_KEY_ENV, refusal_fix, sendgrid_errors
from pipeline.store import Send, Store, open_store

LAST_CHANGE_SECONDS = 10 * 60  # SendGrid takes a pause or cancel no later than this before send_at
PAUSE_KEPT_SECONDS = 72 * 3600  # a paused batch is discarded this long after send_at
MAX_HELD_BATCHES = 10  # batches paused or cancelled at once (an older SendGrid page says 100)
_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
ACTIONS = {"cancel": "cancelled", "pause": "paused"}


class SendGridBatches:
    """The batch and scheduled-sends endpoints through the `sendgrid` client; the key never leaves it."""

    def __init__(self, *, api_key: str, host: str, timeout: float) -> None:
        from sendgrid import SendGridAPIClient

        logging.getLogger("python_http_client").setLevel(logging.WARNING)  # it logs headers (the key) at DEBUG
        self._key = api_key
        self._client = SendGridAPIClient(api_key=api_key, host=host.rstrip("/"))
        self._client.client.timeout = timeout

    def _call(self, what: str, request: Any, **kwargs: Any) -> Any:
        from python_http_client.exceptions import HTTPError

        try:
            return request(**kwargs)
        except HTTPError as exc:
            status = int(exc.status_code)
            message = sendgrid_errors(exc.body).replace(self._key, "[SENDGRID_API_KEY]")
            raise BatchError(status, message, what) from None
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            raise SendError(f"{what}: SendGrid did not answer ({type(exc).__name__}); nothing was changed there "
                            "that we know of — check the network and run the same command again") from None

    def create(self) -> str:
        """A new batch id (201 `{"batch_id"}`)."""
        response = self._call("creating a batch id", self._client.client.mail.batch.post)
        batch_id = _json(response.body).get("batch_id")
        if not isinstance(batch_id, str) or not _BATCH_ID.fullmatch(batch_id):
            raise SendError("SendGrid answered the request for a batch id without a usable one; nothing was sent "
                            "— run the same command again")
        return batch_id

    def hold(self, batch_id: str, status: str, *, update: bool) -> None:
        """Pause or cancel (`status` pause | cancel); `update` changes a status already set (PATCH)."""
        scheduled = self._client.client.user.scheduled_sends
        if update:
            self._call(f"setting batch {batch_id} to {status}", scheduled._(batch_id).patch,
                       request_body={"status": status})
        else:
            self._call(f"setting batch {batch_id} to {status}", scheduled.post,
                       request_body={"batch_id": batch_id, "status": status})

    def lift(self, batch_id: str) -> None:
        """Remove a pause or cancellation: the mail goes out at send_at, or now if that has passed."""
        self._call(f"resuming batch {batch_id}", self._client.client.user.scheduled_sends._(batch_id).delete)


class BatchError(SendError):
    """SendGrid refused a batch or scheduled-sends request: the status and its message are kept."""

    def __init__(self, status: int, message: str, what: str) -> None:
        self.status, self.sendgrid_message = status, message
        super().__init__(f"SendGrid refused {what} ({status}): {message} — {refusal_fix(status)}")


def _json(body: Any) -> dict[str, Any]:
    import json

    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def batches_client(config: Config, environ: Mapping[str, str]) -> SendGridBatches:
    from pipeline import keys
    from pipeline.send.transport import DEFAULT_HOST

    key = keys.from_env(API_KEY_ENV, SendError, environ=environ, ascii_only=True)
    if not key:
        raise SendError(f"{API_KEY_ENV} is not set: pausing or cancelling scheduled mail asks SendGrid — export "
                        "the key the send used, then run the same command again")
    return SendGridBatches(api_key=key, host=environ.get(API_HOST_ENV) or DEFAULT_HOST,
                           timeout=config.sending.timeout_seconds)


# --- cancel, pause, resume ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Changed:
    send: Send
    batch_id: str
    state: str | None  # paused / cancelled / None (resumed)
    send_at: int
    message: str


def _when(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="minutes")


def change_schedule(config: Config, issue_dir: Path, list_name: str, action: str, *,
                    environ: Mapping[str, str], now: float | None = None) -> Changed:
    """`cancel`, `pause` or `resume` the scheduled send of an issue to a list, within SendGrid's rules."""
    slug = issue_dir.resolve().name
    current = time.time() if now is None else now
    store = open_store(config, environ=environ)
    try:
        send = store.find_send(issue=slug, list_name=list_name, transport="sendgrid")
        if send is None:
            raise SendError(f"issue {slug} was never sent to list {list_name} (nothing in the send log) — check "
                            f"the issue folder and --list; `newsletter status {issue_dir}` shows its sends")
        schedule = store.schedule(send.id)
        if not send.send_at:
            raise SendError(f"the send of {slug} to list {list_name} was not scheduled (no --at): its mail went out "
                            "as it was accepted, and SendGrid can pause or cancel only scheduled mail")
        send_at = int(send.send_at)
        if schedule.batch_id is None or not _BATCH_ID.fullmatch(schedule.batch_id):
            raise SendError(f"the send of {slug} to list {list_name} has no SendGrid batch id (no request was made "
                            "yet, or it ran before batch ids were used), so SendGrid cannot be asked to hold it")
        batch_id = schedule.batch_id
        left = send_at - current
        if action == "resume":
            return _resume(store, send, batch_id, schedule.state, send_at, left, config, environ)
        wanted = ACTIONS[action]
        if schedule.state == wanted:
            return Changed(send=send, batch_id=batch_id, state=wanted, send_at=send_at,
                           message=f"already {wanted} on {schedule.changed_at}; nothing changed")
        if left < LAST_CHANGE_SECONDS:
            past = "has passed" if left <= 0 else f"is {int(left // 60)} minute(s) away"
            raise SendError(f"too late to {action}: the send of {slug} to list {list_name} is scheduled for "
                            f"{_when(send_at)} UTC, which {past}; SendGrid takes a pause or cancel no later than 10 "
                            "minutes before — the mail goes out as scheduled")
        client = batches_client(config, environ)
        try:
            client.hold(batch_id, action, update=schedule.state is not None)
        except BatchError as exc:
            raise _explained(exc, action) from None
        store.set_schedule_state(send.id, wanted)
        counts = store.counts(send.id)
        rest = counts["pending"] + counts["failed"]
        message = (f"{wanted}: the {counts['accepted']} message(s) SendGrid holds for {_when(send_at)} UTC "
                   f"(batch {batch_id})")
        if action == "cancel":
            message += (" will be discarded then; a later `newsletter send` of it to this list sends nothing "
                        "unless run with --resend-cancelled")
        else:
            message += (f" are kept until `newsletter resume {issue_dir} --list {list_name}` (at most 72 hours "
                        "after the scheduled time)")
        if rest:
            message += f"; {rest} recipient(s) were not sent to yet"
        return Changed(send=send, batch_id=batch_id, state=wanted, send_at=send_at, message=message)
    finally:
        store.close()


def discarded(state: str | None, send_at: int | None, *, now: float | None = None) -> bool:
    """Whether SendGrid discarded the mail it held for a send: cancelled, or paused more than 72 hours past its
    time. Then only `send --resend-cancelled` sends it (again)."""
    if state == "cancelled":
        return True
    current = time.time() if now is None else now
    return state == "paused" and send_at is not None and send_at + PAUSE_KEPT_SECONDS <= current


@dataclass(frozen=True, kw_only=True)
class Resumed:
    """What a new run of a send takes over from `cancel` / `pause`."""

    batch_id: str | None  # the SendGrid batch id its requests go on carrying
    discarded_at: int | None  # --resend-cancelled: when the mail SendGrid discarded was stopped (epoch s)
    warnings: tuple[Problem, ...]


def resumed_schedule(store: Store, send: Send, *, resend_cancelled: bool, issue_dir: Path,
                     now: float | None = None) -> Resumed:
    """A cancelled send, or one paused past SendGrid's 72 hours (its mail discarded), goes on only with
    --resend-cancelled, which sends the discarded mail again; a paused one goes on held (a warning)."""
    schedule = store.schedule(send.id)
    if discarded(schedule.state, int(send.send_at) if send.send_at else None, now=now):
        expired = schedule.state == "paused"
        if not resend_cancelled:
            why = (f"was paused on {schedule.changed_at} and its time passed more than 72 hours ago, so SendGrid "
                   "discarded the paused mail" if expired else f"was cancelled on {schedule.changed_at} "
                   "(`newsletter cancel`), so SendGrid discarded the mail it held")
            raise SendError(f"this send of {send.issue} to list {send.list_name} {why}; nothing was sent now — to "
                            "send that mail again, add --resend-cancelled, with --at for a new time or without it "
                            "to send at once")
        stopped = int(dt.datetime.fromisoformat(str(schedule.changed_at)).timestamp())
        return Resumed(batch_id=None, discarded_at=stopped, warnings=())
    warnings: tuple[Problem, ...] = ()
    if schedule.state == "paused":
        warnings = (Problem(message=f"this send is paused (since {schedule.changed_at}): what it sends now is held "
                            "by SendGrid too", blocking=False,
                            fix=f"`newsletter resume {issue_dir} --list {send.list_name}` releases it"),)
    return Resumed(batch_id=schedule.batch_id, discarded_at=None, warnings=warnings)


def _resume(store: Store, send: Send, batch_id: str, state: str | None, send_at: int, left: float,
            config: Config, environ: Mapping[str, str]) -> Changed:
    if state is None:
        raise SendError(f"the send of {send.issue} to list {send.list_name} is neither paused nor cancelled — "
                        "nothing to resume")
    if state == "cancelled" and left <= 0:
        raise SendError(f"too late to resume: the send was cancelled and its time ({_when(send_at)} UTC) has passed, "
                        "so SendGrid has discarded it — send it again with `newsletter send ... --resend-cancelled`")
    if state == "paused" and left <= -PAUSE_KEPT_SECONDS:
        raise SendError(f"too late to resume: paused mail is kept 72 hours after its time ({_when(send_at)} UTC), "
                        "then discarded — send it again with `newsletter send ... --resend-cancelled`")
    client = batches_client(config, environ)
    try:
        client.lift(batch_id)
    except BatchError as exc:
        raise _explained(exc, "resume") from None
    store.set_schedule_state(send.id, None)
    when = "now" if left <= 0 else f"at {_when(send_at)} UTC"
    return Changed(send=send, batch_id=batch_id, state=None, send_at=send_at,
                   message=f"resumed ({state} before): SendGrid sends batch {batch_id} {when}")


def _explained(exc: BatchError, action: str) -> SendError:
    """SendGrid's 400s for the rules, in words that say what to do."""
    text = exc.sendgrid_message.lower()
    if exc.status == 400 and ("limit" in text or "maximum" in text):
        return SendError(f"SendGrid refused to {action}: at most {MAX_HELD_BATCHES} scheduled sends may be paused "
                         f"or cancelled at once, and that many are ({exc.sendgrid_message}) — resume one of them, "
                         "or wait until one's scheduled time has passed, then run the same command again")
    if exc.status == 400 and "late" in text:
        return SendError(f"SendGrid refused to {action}: too close to the scheduled time ({exc.sendgrid_message}) "
                         "— the mail goes out as scheduled")
    if exc.status in (400, 404) and "batch" in text:
        return SendError(f"SendGrid does not know this send's batch ({exc.sendgrid_message}) — it may have been "
                         "created with another account's key; check SENDGRID_API_KEY")
    return exc
