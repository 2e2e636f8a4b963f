"""The sending manager: every check before the first request, then batches sent exactly once.

    job = SendJob(issue_dir, config, SendOptions(list_name="sample"))
    plan = job.prepare()     # build + checks, keys, lock, send log, the list recorded: no request yet
    summary = job.run(progress)
    job.close()              # or `with SendJob(...) as job:`

Exactly-once: each batch's intent (batch row, its deliveries `in_flight`) is committed before the
request and its outcome after. A request that ends without an answer leaves its recipients `in_doubt`;
so does a process that dies mid-request (the next run finds them `in_flight` and says so). In-doubt
recipients are sent again only with `resend_in_doubt`. 429/5xx are retried with backoff inside
`retry_budget_seconds`; 400/401/403/413 stop the send at once. Nothing is ever counted as sent unless
SendGrid answered 202.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline import claims, keys, recipients, sendlog, tokens
from pipeline.batches import MAX_PERSONALIZATIONS, Batch, Mailing, Personalizer, parse_send_at
from pipeline.bodies import BodyBuilder, Lookahead
from pipeline.bulk import gc_paused
from pipeline.config import Config
from pipeline.errors import Problem, SendError
from pipeline.lock import SendLock
from pipeline.plan import Plan, Progress, SendOptions, Summary
from pipeline.render import Email
from pipeline.subscribers import list_path
from pipeline.transport import API_HOST_ENV, API_KEY_ENV, DEFAULT_HOST, Outcome, Result, Transport, refusal_fix

log = logging.getLogger("pipeline.send")
IN_DOUBT_STREAK_LIMIT = 5  # this many unanswered requests in a row: stop, the network is not there


class SendJob:
    def __init__(self, issue_dir: Path, config: Config, options: SendOptions, *,
                 environ: Mapping[str, str] | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 transport: Callable[[Personalizer], Transport] | None = None) -> None:
        self.issue_dir = issue_dir
        self.config = config
        self.options = options
        self.environ = os.environ if environ is None else environ
        self.sleep = sleep
        self.clock = clock
        self._make_transport = transport
        self.conn: sqlite3.Connection | None = None
        self.lock: SendLock | None = None
        self.send: sendlog.Send | None = None
        self.plan: Plan | None = None
        self._created = False
        self._test_row: claims.DeliveryRow | None = None
        self._personalizer: Personalizer | None = None
        self._last_request = -1e9
        self._attempts = 0
        self._unrecorded: claims.Finish | None = None  # an answer 202 recorded with the next claim

    # --- preparing: every check, no request -------------------------------------------------------------

    def prepare(self) -> Plan:
        options, config = self.options, self.config
        if config.sending.batch_size > MAX_PERSONALIZATIONS or config.sending.batch_size < 1:
            raise SendError(f"{config.config_file}: sending.batch_size is {config.sending.batch_size}; SendGrid "
                            f"takes 1 to {MAX_PERSONALIZATIONS} personalizations per request — fix it in the config")
        api_key = self._credentials()
        secret, throwaway = self._secret()
        send_at = parse_send_at(options.at) if options.at else None
        email, content_hash, warnings = self._build()
        if throwaway:
            warnings = (*warnings, Problem(
                message=f"{tokens.SECRET_ENV} is not set: the outbox's unsubscribe links are signed with a "
                "throwaway secret and would not work in real mail", blocking=False,
                fix=f"fine for a look at the outbox; a real send needs it ({tokens.CREATE_SECRET_HINT})"))
        path = list_path(config, options.list_name)
        self.conn = sendlog.open_sendlog(config.sendlog_path)
        kind = "outbox" if options.outbox else "sendgrid"
        slug = self.issue_dir.resolve().name
        if options.test_address:
            mailing = Mailing.from_config(config, email=email, issue=slug, list_name=options.list_name, send_id=0,
                                          secret=secret, throwaway_secret=throwaway, send_at=send_at).as_test()
            self._personalizer = Personalizer(mailing)
            self._test_row = recipients.row_for_test_copy(self.conn, path, options.test_address,
                                                                base_url=config.base_url)
            self.plan = self._plan(mailing, kind, content_hash, warnings, listed=1, to_send=1)
            self._transport = self._transport_for(api_key)
            return self.plan
        self.lock = SendLock(config.state_dir, issue=slug, list_name=options.list_name)
        self.lock.acquire()
        self.send = self._open_send(slug, kind, email, content_hash, send_at)
        recovered = sendlog.recover_in_flight(self.conn, self.send.id)
        if recovered:
            log.warning("%d request(s) of an earlier run ended without an answer: their recipients are in doubt",
                        recovered)
        mailing = Mailing.from_config(config, email=email, issue=slug, list_name=options.list_name,
                                      send_id=self.send.id, secret=secret, throwaway_secret=throwaway,
                                      send_at=send_at)
        self._personalizer = Personalizer(mailing)
        try:
            recorded = recipients.record_list(self.conn, self.send.id, path, self._personalizer,
                                              list_name=options.list_name, new_send=self._created,
                                              skip_invalid=options.skip_invalid)
        except BaseException:
            self.cancel()
            raise
        if self._created:  # all of them pending: no need to count a million rows
            counts = {**dict.fromkeys(sendlog.STATES, 0), "pending": recorded.added}
        else:
            counts = sendlog.counts(self.conn, self.send.id)
        to_send = counts["pending"] + counts["failed"] + (counts["in_doubt"] if options.resend_in_doubt else 0)
        self.plan = self._plan(mailing, kind, content_hash, (*warnings, *recorded.skipped), listed=recorded.listed,
                               to_send=to_send, accepted=counts["accepted"], in_doubt=counts["in_doubt"])
        self._transport = self._transport_for(api_key)
        return self.plan

    def _credentials(self) -> str | None:
        if self.options.outbox:
            return None
        host = self.environ.get(API_HOST_ENV, "")
        if host and not re.fullmatch(r"https?://[^\s/?#]+/?", host):
            raise SendError(f"{API_HOST_ENV} is {host!r}, not a base URL like https://api.eu.sendgrid.com — "
                            f"fix it, or unset it to use {DEFAULT_HOST}")
        key = keys.from_env(API_KEY_ENV, SendError, environ=self.environ, ascii_only=True)
        if not key:
            raise SendError(f"{API_KEY_ENV} is not set, so nothing can go to SendGrid — either export "
                            f"{API_KEY_ENV}=<an API key with Mail Send permission> for a real send, or add "
                            "--outbox DIR to write one .eml file per recipient instead (no account needed)")
        return key

    def _secret(self) -> tuple[bytes, bool]:
        if self.options.outbox and not self.environ.get(tokens.SECRET_ENV):
            return tokens.THROWAWAY_SECRET, True
        return tokens.secret_from_env(dict(self.environ)), False

    def _build(self) -> tuple[Email, str, tuple[Problem, ...]]:
        from pipeline.build import build_issue

        result = build_issue(self.issue_dir, self.config)  # raises IssueError on blocking problems
        return result.email, str(result.manifest["content_hash"]), tuple(result.problems)

    def _open_send(self, slug: str, kind: str, email: Email, content_hash: str, send_at: int | None) -> sendlog.Send:
        assert self.conn is not None
        at = str(send_at) if send_at else None
        found = sendlog.find_send(self.conn, issue=slug, list_name=self.options.list_name, transport=kind)
        if found is not None and kind == "outbox":
            sendlog.delete_send(self.conn, found.id)  # every outbox run writes the whole list afresh
            found = None
        if found is None:
            self._created = True
            return sendlog.create_send(self.conn, issue=slug, list_name=self.options.list_name, transport=kind,
                                       content_hash=content_hash, subject=email.subject, send_at=at)
        if found.content_hash != content_hash:
            if not self.options.allow_changed_content:
                raise SendError(
                    f"issue {slug} changed since its send to list {found.list_name} began on {found.created_at} "
                    f"(content hash {found.content_hash[:12]} then, {content_hash[:12]} now); the recipients "
                    "sent so far got the old version — restore the issue as it was, or re-run with "
                    "--allow-changed-content to send the new version to the rest")
            log.warning("content changed since the send began; the rest gets the new version (as allowed)")
        sendlog.update_send(self.conn, found.id, content_hash=content_hash, subject=email.subject, send_at=at)
        return found

    def _plan(self, mailing: Mailing, kind: str, content_hash: str, problems: tuple[Problem, ...], *,
              listed: int, to_send: int, accepted: int = 0, in_doubt: int = 0) -> Plan:
        sender = f"{mailing.sender_name} <{mailing.sender_email}>" if mailing.sender_name else mailing.sender_email
        return Plan(issue=mailing.issue, subject=mailing.email.subject, list_name=mailing.list_name, sender=sender,
                    transport=kind, test_address=self.options.test_address, listed=listed, to_send=to_send,
                    accepted=accepted, in_doubt=in_doubt, resumed=not self._created, send_at=mailing.send_at,
                    content_hash=content_hash, problems=problems)

    def _transport_for(self, api_key: str | None) -> Transport:
        assert self._personalizer is not None
        if self._make_transport is not None:
            return self._make_transport(self._personalizer)
        if self.options.outbox:
            from pipeline.transport import OutboxTransport

            return OutboxTransport(self._personalizer, self.options.outbox)
        from pipeline.transport import SendGridTransport

        assert api_key is not None
        return SendGridTransport(self._personalizer, api_key=api_key, host=self.environ.get(API_HOST_ENV) or None,
                                 timeout=self.config.sending.timeout_seconds)

    # --- running ----------------------------------------------------------------------------------------

    def run(self, progress: Progress) -> Summary:
        assert self.plan is not None, "prepare() first"
        summary = Summary()
        started = time.perf_counter()
        progress.start(self.plan.to_send)
        if self._test_row is not None:
            result = self._deliver(Batch(id=0, request_id=uuid.uuid4().hex, rows=[self._test_row]), summary, None)
            self._raise_unless_accepted(result, summary, test=True)
            summary.accepted, summary.finished = 1, True
            progress.advance(1)
            return summary
        assert self.conn is not None and self.send is not None
        states = (*sendlog.TO_SEND, "in_doubt") if self.options.resend_in_doubt else sendlog.TO_SEND
        self._streak = 0
        # One request in flight at a time; while it is, the next batches' rows are read and their bodies built
        # (by a helper process: see pipeline.bodies).
        p = self._personalizer
        builder = BodyBuilder(p) if p is not None and self._transport.kind == "sendgrid" else None
        ahead = Lookahead(self.conn, self.send.id, size=self.config.sending.batch_size, states=states,
                          build=self._body, builder=builder)
        with sendlog.unchecked_writes(self.conn), gc_paused():  # the loop's writes are sendlog's fixed ones
            try:
                self._send_batches(ahead, states, summary, progress)
            finally:
                try:
                    self._flush()
                finally:
                    if builder is not None:
                        builder.close()
        if self._created:  # every row was pending and the loop, ending without an error, took them all
            counts = {"pending": 0, "failed": 0, "in_doubt": summary.in_doubt}  # counting 1M rows took 0.2 s
        else:
            counts = sendlog.counts(self.conn, self.send.id)
        summary.remaining = {k: counts[k] for k in ("pending", "failed", "in_doubt")}
        summary.finished = not any(summary.remaining.values())
        if summary.finished:
            sendlog.finish_send(self.conn, self.send.id)
        summary.seconds = time.perf_counter() - started
        return summary

    def _send_batches(self, ahead: Lookahead, states: tuple[str, ...], summary: Summary,
                      progress: Progress) -> None:
        """Claim, request, record, until nothing is left to send (or an answer stops the send)."""
        assert self.conn is not None and self.send is not None
        size, after = self.config.sending.batch_size, 0
        ahead.fill(after)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sendgrid-request") as pool:
            while True:
                self._check_schedule()
                head = ahead.head if ahead.head and ahead.head.rows else None
                if head:  # pause before the claim, so that a kill while pausing leaves nothing in doubt
                    self._pace()
                request_id = uuid.uuid4().hex
                claim = None
                if head:  # the last answer and the next intent in one commit
                    claim = claims.claim_peeked(self.conn, self.send.id, head.rows, after=head.after,
                                                 version=head.version, states=states, request_id=request_id,
                                                 finished=self._unrecorded)
                    self._unrecorded = None
                if claim is None:
                    self._flush()
                    claim = claims.claim_batch(self.conn, self.send.id, size=size, after=after, states=states,
                                                request_id=request_id)
                if claim is None:
                    return
                if not head:  # rare: the rows looked at ahead were all suppressed meanwhile
                    self._pace()
                after = claim.last
                batch = Batch(id=claim.id, request_id=claim.request_id, rows=claim.rows, body=ahead.body(claim))
                self._last_request, self._attempts = self.clock(), 1
                summary.requests += 1
                future = pool.submit(self._transport.send, batch)
                try:
                    ahead.fill(after)
                finally:  # whatever happened meanwhile, the answer is recorded
                    result = future.result()
                    if result.outcome is Outcome.RETRY:
                        result = self._deliver(batch, summary, claim, first=result)
                    self._record(claim, result, summary, progress)

    def _body(self, rows: list[claims.DeliveryRow]) -> str | None:
        """The request body, built ahead for transports that send one (SendGrid)."""
        if self._transport.kind != "sendgrid" or self._personalizer is None:
            return None
        return self._personalizer.body(Batch(id=0, request_id="", rows=rows))

    def _record(self, claim: claims.Claim, result: Result, summary: Summary, progress: Progress) -> None:
        """The outcome of a request into the send log; stops the send on a refusal or a spent budget."""
        assert self.conn is not None
        size = len(claim.rows)
        if result.outcome is Outcome.ACCEPTED:  # recorded with the next claim, or by _flush before any pause
            self._unrecorded = claims.Finish(claim=claim, state="accepted", attempts=self._attempts,
                                              http_status=result.status, message_id=result.message_id)
            summary.accepted += size
            self._streak = 0
            progress.advance(size)
        elif result.outcome is Outcome.IN_DOUBT:
            claims.finish_batch(self.conn, claim, state="in_doubt", attempts=self._attempts, error=result.error)
            summary.in_doubt += size
            self._streak += 1
            progress.note(f"a request for {size} recipient(s) got no answer ({result.error}); "
                          "they are in doubt and will not be sent again without --resend-in-doubt")
            if self._streak >= IN_DOUBT_STREAK_LIMIT:
                self._stop(summary, f"{self._streak} requests in a row got no answer; stopped so as not to put "
                           "more recipients in doubt — check the network, then run the same command again")
        else:
            claims.finish_batch(self.conn, claim, state="failed", attempts=self._attempts,
                                 http_status=result.status, error=result.error)
            summary.failed += size
            self._raise_unless_accepted(result, summary, test=False)

    def _flush(self) -> None:
        """Record an answer 202 kept for the next claim now: before any pause, and when the loop ends."""
        if self._unrecorded is not None and self.conn is not None:
            claims.record(self.conn, self._unrecorded)
            self._unrecorded = None

    def _check_schedule(self) -> None:
        at = self.plan.send_at if self.plan else None
        if at is not None and time.time() >= at:
            raise SendError(f"the scheduled time (send_at {at}) has passed while sending; the rest was not sent "
                            "— run the same command with a later --at, or without --at to send now")

    def _deliver(self, batch: Batch, summary: Summary, claim: claims.Claim | None,
                 first: Result | None = None) -> Result:
        """One request (or the answer `first` already got), retried on 429/5xx within the retry budget;
        returns the last answer."""
        budget = self.config.sending.retry_budget_seconds
        started = self.clock()
        self._attempts = 1 if first else 0
        result = first
        while True:
            if result is not None:
                if result.outcome is not Outcome.RETRY:
                    return result
                if claim is not None and self.conn is not None:
                    claims.mark_waiting(self.conn, claim, attempts=self._attempts, http_status=result.status,
                                         error=result.error)
                delay = backoff(self._attempts, result.retry_after)
                if self.clock() - started + delay > budget:
                    return result  # still RETRY: the budget is spent
                log.info("answer %s, retrying in %.1f s", result.status or "none", delay)
                self.sleep(delay)
            if self._attempts:
                self._pace()
                if claim is not None and self.conn is not None:
                    claims.mark_in_flight(self.conn, claim)
            self._last_request = self.clock()
            self._attempts += 1
            summary.requests += 1
            result = self._transport.send(batch)

    def _pace(self) -> None:
        """The requests-per-second ceiling: wait until 1/rps has passed since the last request began."""
        wait = self._last_request + 1.0 / self.config.sending.requests_per_second - self.clock()
        if wait > 0:
            self._flush()
            self.sleep(wait)

    def _raise_unless_accepted(self, result: Result, summary: Summary, *, test: bool) -> None:
        if result.outcome is Outcome.ACCEPTED:
            return
        what = "the test copy" if test else "the send"
        if result.outcome is Outcome.IN_DOUBT:
            raise SendError(f"{what} got no answer ({result.error}); it may or may not have been sent — "
                            "check the inbox before sending it again")
        if result.outcome is Outcome.RETRY:
            budget = self.config.sending.retry_budget_seconds
            self._stop(summary, f"gave up after {self._attempts} attempt(s) within {budget:g} s "
                       f"(sending.retry_budget_seconds); last answer: {result.status or 'no connection'} "
                       f"{result.error}; nothing of that request was counted as sent — run the same command "
                       "again later to resume", test=test)
        self._stop(summary, f"SendGrid refused {what} ({result.status}): {result.error}; nothing of that request was "
                   f"counted as sent — {refusal_fix(result.status)}", test=test)

    def _stop(self, summary: Summary, message: str, *, test: bool = False) -> None:
        if not test:
            message += f" ({summary.accepted} accepted in this run; `newsletter status` shows the rest)"
        raise SendError(message)

    # --- ending -----------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """The operator said no (or the list was bad): a send that this run created is forgotten."""
        if self._created and self.conn is not None and self.send is not None:
            sendlog.delete_send(self.conn, self.send.id)
            self._created = False
            self.send = None

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self) -> SendJob:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def backoff(attempt: int, hint: float | None) -> float:
    """The server's hint plus a little jitter, else exponential (0.5 s doubling, at most 60 s) with jitter."""
    if hint is not None and hint >= 0:
        return hint + random.uniform(0, 0.25)
    base = min(60.0, 0.5 * 2 ** (attempt - 1))
    return random.uniform(base / 2, base)
