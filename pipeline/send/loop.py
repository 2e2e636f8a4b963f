"""The send loop: claim a batch, request, record the answer; up to `concurrency` requests in flight.

It talks to a store and a transport only. Every request's intent is committed before the request leaves
(its deliveries `in_flight` under a batch row), so a crash leaves at most `concurrency` batches in doubt.
Claims, pacing and every write happen in this thread, in list order: each batch is a contiguous part of
the list, the requests-per-second ceiling holds for all requests together, and a 429 or Retry-After pauses
every request. Worker threads only make requests. An answer 202 is recorded with the next claim (one
commit per request), or on its own before any pause and at the end. Before every claim it asks whether
the send lock is still held (a PostgreSQL lock dies with its connection) and stops if not.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from pipeline.errors import SendError, StoreError
from pipeline.send.batches import Batch
from pipeline.send.bodies import Lookahead
from pipeline.send.brake import Brake
from pipeline.send.gcpause import collect_young
from pipeline.send.plan import Progress, Summary
from pipeline.send.transport import Outcome, Result, Transport, refusal_fix
from pipeline.store import Claim, Finish, SendLockHandle, Store

log = logging.getLogger("pipeline.send.job")
COLLECT_EVERY = 100  # requests between collections of the cycles they leave (see gcpause)
IN_DOUBT_STREAK_LIMIT = 5  # this many unanswered requests in a row: stop, the network is not there


@dataclass(frozen=True, kw_only=True)
class Policy:
    batch_size: int
    concurrency: int = 1
    requests_per_second: float = 10.0
    retry_budget_seconds: float = 600.0
    send_at: int | None = None  # a scheduled send stops if this time passes while it runs


@dataclass(kw_only=True)
class _Request:
    claim: Claim
    batch: Batch
    started: float  # the first attempt (the retry budget counts from here)
    attempts: int = 1
    ready: float = 0.0  # a retry waits until then


def backoff(attempt: int, hint: float | None) -> float:
    """The server's hint plus a little jitter, else exponential (0.5 s doubling, at most 60 s) with jitter."""
    if hint is not None and hint >= 0:
        return hint + random.uniform(0, 0.25)
    base = min(60.0, 0.5 * 2 ** (attempt - 1))
    return random.uniform(base / 2, base)


class SendLoop:
    def __init__(self, store: Store, send_id: int, transport: Transport, policy: Policy, *, states: Sequence[str],
                 ahead: Lookahead, progress: Progress, summary: Summary,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 editions: Sequence[str] | None = None, brake: Brake | None = None,
                 lock: SendLockHandle | None = None) -> None:
        self.store, self.send_id, self.transport, self.policy = store, send_id, transport, policy
        self.editions = editions  # claim only these editions' deliveries (one content per request); None: all
        self.states, self.ahead, self.progress, self.summary = states, ahead, progress, summary
        self.clock, self.sleep = clock, sleep
        self._flying: dict[Future[Result], _Request] = {}
        self._retries: list[_Request] = []
        self._finished: list[Finish] = []  # answers to record with the next claim
        self._after = 0  # the last delivery id claimed
        self._exhausted = False
        self._paused_until = 0.0
        self._last_request = -1e9
        self._streak = 0
        self._stop: str | None = None
        self._stop_error: type[SendError] = SendError  # StoreError (exit code 6) when the lock was lost
        self.lock = lock  # the send lock, asked before every claim whether it is still held
        self.brake = brake  # checked between batches: the webhook's rates, a cancel (pipeline.send.brake)
        self.interrupted: str | None = None  # set by request_stop() (a signal): stop claiming, finish what flies

    def run(self) -> None:
        """Until nothing is left to send; raises SendError when an answer stops the send. Requests still out
        when it stops (an error, Ctrl-C) are waited for and recorded; a second Ctrl-C leaves them in flight,
        which the next run counts as in doubt."""
        self.ahead.fill(0)
        with ThreadPoolExecutor(max_workers=self.policy.concurrency, thread_name_prefix="request") as pool:
            try:
                self._loop(pool)
            finally:
                try:
                    for future in list(self._flying):
                        self._answered(future)
                    self._give_up_retries()
                finally:
                    self._flush()
        if self.interrupted:
            raise KeyboardInterrupt(self.interrupted)
        if self._stop:
            raise self._stop_error(f"{self._stop} ({self.summary.accepted} accepted in this run; `newsletter status` "
                            "shows the rest)")

    def request_stop(self, reason: str) -> None:
        """Stop claiming; requests in flight finish and are recorded, then run() raises KeyboardInterrupt.
        Safe to call from a signal handler: it only sets two attributes."""
        self.interrupted = reason
        self._stop = self._stop or reason

    # --- the loop ---------------------------------------------------------------------------------------

    def _loop(self, pool: ThreadPoolExecutor) -> None:
        while not self._stop:
            self._check_schedule()
            self._start(pool)
            if self._stop:
                return
            if not self._flying:
                waits = [r.ready for r in self._retries]
                if not self._exhausted:
                    waits.append(self._paused_until)
                if not waits:
                    return  # nothing in flight, nothing to retry, nothing left to claim
                self._flush()
                self.sleep(max(0.0, min(waits) - self.clock()))
                continue
            timeout = max(0.0, min(r.ready for r in self._retries) - self.clock()) if self._retries else None
            done, _ = wait(list(self._flying), timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                self._answered(future)

    def _start(self, pool: ThreadPoolExecutor) -> None:
        """Requests into every free slot: retries whose time has come first, then new claims."""
        while len(self._flying) < self.policy.concurrency and not self._stop:
            now = self.clock()
            if now < self._paused_until:
                return
            ready = next((r for r in self._retries if r.ready <= now), None)
            if ready is None and self._exhausted:
                return
            if self.lock is not None and not self.lock.held():  # before a retry too: another run may send it
                self._stop, self._stop_error = self._lock_lost(), StoreError
                return
            if ready is not None:
                self._pace()
                if self._stop:  # Ctrl-C or SIGTERM during the pause: no new request (the batch is given up)
                    return
                self._retries.remove(ready)
                # From here an interruption leaves it in doubt again. Refused when another run recovered the
                # send after the check above (the lock was lost in between) and will send this batch itself.
                claim = self.store.mark_in_flight(ready.claim)
                if claim is None:
                    self._stop, self._stop_error = self._lock_lost(), StoreError
                    return
                if claim.rows != ready.claim.rows:  # readers suppressed while it waited: not sent, nor retried
                    self.progress.note(f"{len(ready.claim.rows) - len(claim.rows)} recipient(s) of a request "
                                       "waiting to be retried were suppressed meanwhile (an unsubscribe, a bounce); "
                                       "they were taken out of it")
                    if not claim.rows:
                        continue
                    ready.claim, ready.batch = claim, Batch(id=claim.id, request_id=claim.request_id, rows=claim.rows)
                ready.attempts += 1
                self._submit(pool, ready)
                continue
            if self.brake is not None:
                self._stop = self._stop or self.brake.check()
                if self._stop:
                    return
            peeked = self.ahead.head is not None
            if peeked:  # pause before the claim, so that a kill while pausing leaves nothing in doubt
                self._pace()
                if self._stop:  # Ctrl-C or SIGTERM during the pause: no new request
                    return
            claim = self._claim()
            if claim is None:
                self._exhausted = True
                return
            if not peeked:  # rare: the rows looked at ahead were all suppressed meanwhile
                self._pace()
            if self.brake is not None:
                self.brake.claimed(len(claim.rows))
            batch = Batch(id=claim.id, request_id=claim.request_id, rows=claim.rows, body=self.ahead.body(claim))
            self._submit(pool, _Request(claim=claim, batch=batch, started=self.clock()))
            self.ahead.fill(self._after)  # the next batches' rows read and bodies built while this one flies

    def _claim(self) -> Claim | None:
        finished, self._finished = self._finished, []
        request_id = uuid.uuid4().hex
        claim = None
        head = self.ahead.head
        if head is not None:  # the last answers and the next intent in one commit
            claim = self.store.claim_peeked(self.send_id, head, states=self.states, request_id=request_id,
                                            finished=finished, editions=self.editions, send_at=self.policy.send_at)
            finished = []
        if claim is None:
            claim = self.store.claim_batch(self.send_id, size=self.policy.batch_size, after=self._after,
                                           states=self.states, request_id=request_id, finished=finished,
                                           editions=self.editions, send_at=self.policy.send_at)
        if claim is not None:
            self._after = claim.last
        return claim

    def _submit(self, pool: ThreadPoolExecutor, request: _Request) -> None:
        self._last_request = self.clock()
        self.summary.requests += 1
        if self.summary.requests % COLLECT_EVERY == 0:
            collect_young()
        self._flying[pool.submit(self.transport.send, request.batch)] = request

    # --- answers ----------------------------------------------------------------------------------------

    def _answered(self, future: Future[Result]) -> None:
        request = self._flying.pop(future)
        result = future.result()
        claim, size = request.claim, len(request.claim.rows)
        if result.outcome is Outcome.ACCEPTED:
            self._finished.append(Finish(claim=claim, state="accepted", attempts=request.attempts,
                                         http_status=result.status, message_id=result.message_id))
            self.summary.accepted += size
            self._streak = 0
            self.progress.advance(size)
        elif result.outcome is Outcome.IN_DOUBT:
            self._finished.append(Finish(claim=claim, state="in_doubt", attempts=request.attempts, error=result.error))
            self.summary.in_doubt += size
            self._streak += 1
            self.progress.note(f"a request for {size} recipient(s) got no answer ({result.error}); "
                               "they are in doubt and will not be sent again without --resend-in-doubt")
            if self._streak >= IN_DOUBT_STREAK_LIMIT:
                self._stop = self._stop or (
                    f"{self._streak} requests in a row got no answer; stopped so as not to put more recipients "
                    "in doubt — check the network, then run the same command again")
        elif result.outcome is Outcome.RETRY:
            self._retry(request, result)
        else:
            self._finished.append(Finish(claim=claim, state="failed", attempts=request.attempts,
                                         http_status=result.status, error=result.error))
            self.summary.failed += size
            self._stop = self._stop or (f"SendGrid refused the send ({result.status}): {result.error}; nothing of "
                                        f"that request was counted as sent — {refusal_fix(result.status)}")

    def _retry(self, request: _Request, result: Result) -> None:
        """429/5xx or no connection: certainly not sent. Wait and retry within the budget; a 429 or a
        Retry-After pauses every request, not only this one."""
        self.store.mark_waiting(request.claim, attempts=request.attempts, http_status=result.status,
                                error=result.error)
        delay = backoff(request.attempts, result.retry_after)
        now = self.clock()
        budget = self.policy.retry_budget_seconds
        if now - request.started + delay > budget or self._stop:
            self._finished.append(Finish(claim=request.claim, state="failed", attempts=request.attempts,
                                         http_status=result.status, error=result.error))
            self.summary.failed += len(request.claim.rows)
            self._stop = self._stop or (
                f"gave up after {request.attempts} attempt(s) within {budget:g} s (sending.retry_budget_seconds); "
                f"last answer: {result.status or 'no connection'} {result.error}; nothing of that request was "
                "counted as sent — run the same command again later to resume")
            return
        log.info("answer %s, retrying in %.1f s", result.status or "none", delay)
        request.ready = now + delay
        if result.status == 429 or result.retry_after is not None:
            self._paused_until = max(self._paused_until, request.ready)
            for waiting in self._retries:
                waiting.ready = max(waiting.ready, self._paused_until)
        self._retries.append(request)

    def _give_up_retries(self) -> None:
        """Batches still waiting to be retried when the send stops were certainly not sent: failed."""
        for request in self._retries:
            self._finished.append(Finish(claim=request.claim, state="failed", attempts=request.attempts,
                                         error="the send stopped before this batch's retry"))
            self.summary.failed += len(request.claim.rows)
        self._retries.clear()

    # --- pacing, schedule, recording --------------------------------------------------------------------

    def _pace(self) -> None:
        """The requests-per-second ceiling: wait until 1/rps has passed since the last request began."""
        wait_for = self._last_request + 1.0 / self.policy.requests_per_second - self.clock()
        if wait_for > 0:
            self._flush()
            self.sleep(wait_for)

    def _lock_lost(self) -> str:
        """Another machine may take the lock now; the claims still take no row twice, but this send stops."""
        return (f"the send lock on {self.store.where} was lost (its connection ended); nothing more was sent — run "
                "the same command again to resume")

    def _check_schedule(self) -> None:
        at = self.policy.send_at
        if at is not None and time.time() >= at:
            self._stop = (f"the scheduled time (send_at {at}) has passed while sending; the rest was not sent — "
                          "run the same command with a later --at, or without --at to send now")

    def _flush(self) -> None:
        """Record the answers kept for the next claim now: before any pause, and when the loop ends."""
        finished, self._finished = self._finished, []
        self.store.record(finished)
