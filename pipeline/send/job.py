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

Editions: each recipient's `language` picks an edition when the list is recorded, and the send log keeps
it. A request has one content, so the loop runs once per edition, claiming only that edition's
deliveries, with that edition's subject and body; the guarantees above hold for each run of it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from pipeline import tokens
from pipeline.build.render import Email
from pipeline.config import Config
from pipeline.errors import Problem, SendError
from pipeline.lists.subscribers import list_path
from pipeline.send import recipients
from pipeline.send.batches import MAX_PERSONALIZATIONS, Batch, Mailing, Personalizer, parse_send_at
from pipeline.send.bodies import BodyBuilder, Lookahead
from pipeline.send.brake import Brake, previous_warning
from pipeline.send.gcpause import gc_paused
from pipeline.send.loop import Policy, SendLoop
from pipeline.send.plan import Plan, Progress, SendOptions, Summary
from pipeline.send.schedule import LAST_CHANGE_SECONDS, resumed_schedule
from pipeline.send.status import by_edition
from pipeline.send.testcopy import send_test_copy
from pipeline.send.transport import API_HOST_ENV, Transport, api_key_from_env
from pipeline.store import STATES, TO_SEND, DeliveryRow, Send, SendLockHandle, Store, open_store

log = logging.getLogger("pipeline.send.job")


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
        self.store: Store | None = None
        self.lock: SendLockHandle | None = None
        self.send: Send | None = None
        self.plan: Plan | None = None
        self._created = False
        self._test_row: DeliveryRow | None = None
        self._personalizer: Personalizer | None = None  # the default edition's (a test copy: its edition's)
        self._api_key: str | None = None
        self._secrets: tuple[bytes, bool, int | None] = (b"", False, None)  # secret, throwaway, send_at
        self._emails: dict[str, Email] = {}  # every edition's, the default first
        self._orphans: tuple[str, ...] = ()  # editions recorded earlier that the issue no longer has
        self._batch_id: str | None = None  # SendGrid's, for every request of a real send
        self._loop: SendLoop | None = None
        self._reopen = False  # --resend-cancelled of a cancelled send (or one paused past SendGrid's 72 hours)
        self._stopped_at, self._reopened = 0, 0  # when it was stopped (epoch s); deliveries it sends again
        self._update: tuple[str, str, str | None] | None = None  # a resumed send's hash, subject, send_at
        self._stop_reason: str | None = None

    # --- preparing: every check, no request -------------------------------------------------------------

    def prepare(self) -> Plan:
        options, config = self.options, self.config
        if config.sending.batch_size > MAX_PERSONALIZATIONS or config.sending.batch_size < 1:
            raise SendError(f"{config.config_file}: sending.batch_size is {config.sending.batch_size}; SendGrid "
                            f"takes 1 to {MAX_PERSONALIZATIONS} personalizations per request — fix it in the config")
        api_key = self._api_key = None if options.outbox else api_key_from_env(self.environ)
        secret, throwaway = self._secret()
        send_at = parse_send_at(options.at) if options.at else None
        email, content_hash, warnings = self._build()
        self._secrets = (secret, throwaway, send_at)
        if throwaway:
            warnings = (*warnings, Problem(
                message=f"{tokens.SECRET_ENV} is not set: the outbox's unsubscribe links are signed with a "
                "throwaway secret and would not work in real mail", blocking=False,
                fix=f"fine for a look at the outbox; a real send needs it ({tokens.CREATE_SECRET_HINT})"))
        path = list_path(config, options.list_name)
        self.store = open_store(config, environ=self.environ)
        kind = "outbox" if options.outbox else "sendgrid"
        slug = self.issue_dir.resolve().name
        if options.test_address:
            self._test_row, first = recipients.copy_row(self.store, path, options.test_address,
                                                        base_url=config.base_url)
            language = self._test_language(first)
            mailing = self._mailing(language, 0).as_test()
            self._personalizer = Personalizer(mailing)
            self.plan = self._plan(mailing, kind, content_hash, warnings, listed=1, to_send=1, editions=(language,))
            self._transport = self._transport_for(api_key)
            return self.plan
        self.lock = self.store.lock(issue=slug, list_name=options.list_name)
        self.lock.__enter__()
        self.send = self._open_send(slug, kind, email, content_hash, send_at)
        recovered = self.store.recover_in_flight(self.send.id)
        if recovered:
            log.warning("%d request(s) of an earlier run ended without an answer: their recipients are in doubt",
                        recovered)
        self._batch_id, stop_warnings = self._schedule_state(kind, send_at)
        warnings = (*warnings, *stop_warnings)
        mailing = self._mailing(self._default, self.send.id)
        self._personalizer = Personalizer(mailing)
        try:
            recorded = recipients.record_list(self.store, self.send.id, path, self._personalizer,
                                              list_name=options.list_name, new_send=self._created,
                                              skip_invalid=options.skip_invalid, edition_of=self._edition_of)
        except BaseException:
            self.cancel()
            raise
        if self._created:  # all of them pending: no need to count a million rows
            counts = {**dict.fromkeys(STATES, 0), "pending": recorded.added}
        else:
            counts = self.store.counts(self.send.id)
            self._orphans = tuple(e for e in self.store.edition_counts(self.send.id) if e and e not in self._emails)
            if self._orphans:
                warnings = (*warnings, Problem(
                    message=f"recipients recorded for edition(s) {', '.join(self._orphans)} that the issue no longer "
                    f"has get the default edition ({self._default})", blocking=False,
                    fix="restore the edition's issue.<language>.yaml to send it to them instead"))
        if self._reopen:  # what SendGrid discarded goes again (see Store.reopen_cancelled), counted before it asks
            held, held_in_doubt, maybe = self.store.held_counts(self.send.id, stopped_at=self._stopped_at,
                                                                margin=LAST_CHANGE_SECONDS)
            self._reopened = held + held_in_doubt
            counts = {**counts, "pending": counts["pending"] + held + held_in_doubt, "accepted": counts["accepted"]
                      - held - maybe, "in_doubt": counts["in_doubt"] - held_in_doubt + maybe}
        to_send = counts["pending"] + counts["failed"] + (counts["in_doubt"] if options.resend_in_doubt else 0)
        self.plan = self._plan(mailing, kind, content_hash, (*warnings, *recorded.skipped), listed=recorded.listed,
                               to_send=to_send, accepted=counts["accepted"], in_doubt=counts["in_doubt"],
                               editions=tuple(self._emails))
        self._transport = self._transport_for(api_key)
        return self.plan

    def _secret(self) -> tuple[bytes, bool]:
        if self.options.outbox and not self.environ.get(tokens.SECRET_ENV):
            return tokens.THROWAWAY_SECRET, True
        return tokens.secret_from_env(dict(self.environ)), False

    def _build(self) -> tuple[Email, str, tuple[Problem, ...]]:
        """The default edition's email, the hash over every edition, the warnings; every edition's email
        is kept in `_emails`, the default first."""
        from pipeline.build.builder import build_issue

        result = build_issue(self.issue_dir, self.config)  # raises IssueError on blocking problems
        default = next(lang for lang, (email, _) in result.editions.items() if email is result.email)
        self._emails = {default: result.email} | {lang: email for lang, (email, _) in result.editions.items()}
        return result.email, str(result.manifest["content_hash"]), tuple(result.problems)

    # --- editions ---------------------------------------------------------------------------------------

    @property
    def _default(self) -> str:
        return next(iter(self._emails))

    def _edition_of(self, language: str) -> str:
        """The edition a recipient with this `language` cell gets (BCP 47 negotiation, else the default)."""
        from pipeline.build.editions import pick_language

        return pick_language(language, tuple(self._emails)) or self._default

    def _test_language(self, first: str) -> str:
        """A test copy's edition: --language (which must name an edition), else the list's first row's."""
        wanted = self.options.language
        if wanted is None:
            return self._edition_of(first)
        from pipeline.build.editions import pick_language

        found = pick_language(wanted, tuple(self._emails))
        if found is None:
            raise SendError(f"--language {wanted[:40]!r}: issue {self.issue_dir.resolve().name} has no such edition — "
                            f"give one of {', '.join(self._emails)}, or leave --language out for the list's "
                            "first recipient's edition")
        return found

    def _schedule_state(self, kind: str, send_at: int | None) -> tuple[str | None, tuple[Problem, ...]]:
        """The send's batch id so far, after what `cancel` / `pause` left (issue 12), and warnings: a paused
        batch, a list that bounced last time."""
        assert self.store is not None and self.send is not None
        if kind != "sendgrid":
            return None, ()
        state = resumed_schedule(self.store, self.send, resend_cancelled=self.options.resend_cancelled,
                                 issue_dir=self.issue_dir)
        if state.discarded_at is not None:
            self._reopen, self._stopped_at = True, state.discarded_at  # done in run(), after the confirmation
            return None, ()
        found = previous_warning(self.store, self.send, self.config.sending.stop_when)
        return state.batch_id, (*state.warnings, *([found] if found else []))

    def _mailing(self, language: str, send_id: int) -> Mailing:
        secret, throwaway, send_at = self._secrets
        return Mailing.from_config(self.config, email=self._emails[language], issue=self.issue_dir.resolve().name,
                                   list_name=self.options.list_name, send_id=send_id, secret=secret,
                                   throwaway_secret=throwaway, send_at=send_at, batch_id=self._batch_id)

    def _editions_to_send(self) -> list[tuple[str, Personalizer, tuple[str, ...] | None]]:
        """(edition, its personalizer, the claim filter) for each edition; one edition: no filter. Rows
        recorded before editions ('') and those of an edition the issue no longer has go with the default."""
        assert self._personalizer is not None and self.send is not None
        if len(self._emails) == 1:
            return [(self._default, self._personalizer, None)]
        found: list[tuple[str, Personalizer, tuple[str, ...] | None]] = [
            (self._default, self._personalizer, (self._default, "", *self._orphans))]
        for language in list(self._emails)[1:]:
            found.append((language, Personalizer(self._mailing(language, self.send.id)), (language,)))
        return found

    def _open_send(self, slug: str, kind: str, email: Email, content_hash: str, send_at: int | None) -> Send:
        assert self.store is not None
        at = str(send_at) if send_at else None
        found = self.store.find_send(issue=slug, list_name=self.options.list_name, transport=kind)
        if found is not None and kind == "outbox":
            self.store.delete_send(found.id)  # every outbox run writes the whole list afresh
            found = None
        if found is None:
            self._created = True
            return self.store.create_send(issue=slug, list_name=self.options.list_name, transport=kind,
                                       content_hash=content_hash, subject=email.subject, send_at=at)
        if found.content_hash != content_hash:
            if not self.options.allow_changed_content:
                raise SendError(
                    f"issue {slug} changed since its send to list {found.list_name} began on {found.created_at} "
                    f"(content hash {found.content_hash[:12]} then, {content_hash[:12]} now); the recipients "
                    "sent so far got the old version — restore the issue as it was, or re-run with "
                    "--allow-changed-content to send the new version to the rest")
            log.warning("content changed since the send began; the rest gets the new version (as allowed)")
        self._update = (content_hash, email.subject, at)
        return found

    def _plan(self, mailing: Mailing, kind: str, content_hash: str, problems: tuple[Problem, ...], *,
              listed: int, to_send: int, accepted: int = 0, in_doubt: int = 0, editions: tuple[str, ...] = ()) -> Plan:
        sender = f"{mailing.sender_name} <{mailing.sender_email}>" if mailing.sender_name else mailing.sender_email
        return Plan(issue=mailing.issue, subject=mailing.email.subject, list_name=mailing.list_name, sender=sender,
                    transport=kind, test_address=self.options.test_address, listed=listed, to_send=to_send,
                    accepted=accepted, in_doubt=in_doubt, resumed=not self._created, send_at=mailing.send_at,
                    content_hash=content_hash, problems=problems, editions=editions)

    def _transport_for(self, api_key: str | None, personalizer: Personalizer | None = None) -> Transport:
        personalizer = personalizer or self._personalizer
        assert personalizer is not None
        if self._make_transport is not None:
            return self._make_transport(personalizer)
        if self.options.outbox:
            from pipeline.send.transport import OutboxTransport

            return OutboxTransport(personalizer, self.options.outbox)
        from pipeline.send.transport import SendGridTransport

        assert api_key is not None
        return SendGridTransport(personalizer, api_key=api_key, host=self.environ.get(API_HOST_ENV) or None,
                                 timeout=self.config.sending.timeout_seconds)

    # --- running ----------------------------------------------------------------------------------------

    def run(self, progress: Progress) -> Summary:
        assert self.plan is not None, "prepare() first"
        summary = Summary()
        started = time.perf_counter()
        progress.start(self.plan.to_send)
        if self._test_row is not None:  # not recorded: the send log does not know it
            summary.requests = send_test_copy(self._transport, self._test_row, clock=self.clock, sleep=self.sleep,
                                              budget=self.config.sending.retry_budget_seconds)
            summary.accepted, summary.finished = 1, True
            progress.advance(1)
            return summary
        assert self.store is not None and self.send is not None and self._personalizer is not None
        if self._update is not None:  # recorded only now that the send goes ahead
            content_hash, subject, at = self._update
            self.store.update_send(self.send.id, content_hash=content_hash, subject=subject, send_at=at)
        if self._reopen:
            self.store.reopen_cancelled(self.send.id, stopped_at=self._stopped_at, margin=LAST_CHANGE_SECONDS)
            log.warning("resending a cancelled send: %d recipient(s) sent again, under a new batch id",
                        self._reopened)
            self._batch_id = None
        self._ensure_batch_id()
        for i, (_, personalizer, only) in enumerate(self._editions_to_send()):
            if i:  # the requests-per-second ceiling holds across editions too
                self.sleep(1.0 / self.config.sending.requests_per_second)
            transport = self._transport if personalizer is self._personalizer else \
                self._transport_for(self._api_key, personalizer)
            self._run_edition(transport, personalizer, only, progress, summary)
        if self._created and len(self._emails) == 1:  # every row was pending and the loop took them all
            counts = {"pending": 0, "failed": 0, "in_doubt": summary.in_doubt}  # counting 1M rows took 0.2 s
            summary.editions = {self._default: {"accepted": summary.accepted, "pending": 0,
                                                "in_doubt": summary.in_doubt, "failed": 0}}
        else:
            counts = self.store.counts(self.send.id)
            summary.editions = by_edition(self.store.edition_counts(self.send.id), self._default)
        summary.remaining = {k: counts[k] for k in ("pending", "failed", "in_doubt")}
        summary.finished = not any(summary.remaining.values())
        if summary.finished:
            self.store.finish_send(self.send.id)
        summary.seconds = time.perf_counter() - started
        return summary

    def _run_edition(self, transport: Transport, personalizer: Personalizer, only: tuple[str, ...] | None,
                     progress: Progress, summary: Summary) -> None:
        """The send loop over one edition's deliveries (`only`: the claim filter; None: every delivery)."""
        assert self.store is not None and self.send is not None and self.plan is not None
        states = (*TO_SEND, "in_doubt") if self.options.resend_in_doubt else TO_SEND
        sending = self.config.sending
        concurrency = sending.concurrency if transport.kind == "sendgrid" else 1
        # While requests are in flight, the next batches' rows are read and their bodies built (by a helper
        # process: see pipeline.send.bodies).
        builder = BodyBuilder(personalizer) if transport.kind == "sendgrid" else None

        def body(rows: list[DeliveryRow]) -> str | None:
            return self._body(rows, transport, personalizer)

        ahead = Lookahead(self.store, self.send.id, size=sending.batch_size, states=states, build=body,
                          builder=builder, depth=concurrency + 1, editions=only)
        policy = Policy(batch_size=sending.batch_size, concurrency=concurrency,
                        requests_per_second=sending.requests_per_second,
                        retry_budget_seconds=sending.retry_budget_seconds, send_at=self.plan.send_at)
        brake = Brake(self.store, self.send, sending.stop_when, issue_dir=str(self.issue_dir)) \
            if transport.kind == "sendgrid" else None
        loop = SendLoop(self.store, self.send.id, transport, policy, states=states, ahead=ahead,
                        progress=progress, summary=summary, clock=self.clock, sleep=self.sleep, editions=only,
                        brake=brake, lock=self.lock)
        self._loop = loop
        if self._stop_reason:
            loop.request_stop(self._stop_reason)
        with self.store.sending(), gc_paused():  # the loop's writes are the store's fixed ones
            try:
                loop.run()
            finally:
                if builder is not None:
                    builder.close()
                    log.debug("%d of %d bodies were not ready in time and were built here", builder.missed,
                              summary.requests)

    def _ensure_batch_id(self) -> None:
        """A real send's SendGrid batch id: created once, recorded, reused by every later run of the send (and
        by every edition)."""
        assert self.store is not None and self.send is not None and self._personalizer is not None
        create = getattr(self._transport, "create_batch", None)
        if create is None or self._batch_id is not None:
            return
        self._batch_id = str(create())
        self.store.set_batch_id(self.send.id, self._batch_id)
        self._personalizer = Personalizer(replace(self._personalizer.mailing, batch_id=self._batch_id))
        self._transport.personalizer = self._personalizer  # type: ignore[attr-defined]

    def request_stop(self, reason: str) -> None:
        """Ctrl-C or SIGTERM (from a signal handler): the running loop stops claiming and lets what flies
        finish; before the loop starts, it starts stopped."""
        self._stop_reason = reason
        if self._loop is not None:
            self._loop.request_stop(reason)

    @staticmethod
    def _body(rows: list[DeliveryRow], transport: Transport, personalizer: Personalizer) -> str | None:
        """The request body, built ahead for transports that send one (SendGrid)."""
        if transport.kind != "sendgrid":
            return None
        return personalizer.body(Batch(id=0, request_id="", rows=rows))

    # --- ending -----------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """The operator said no (or the list was bad): a send that this run created is forgotten."""
        if self._created and self.store is not None and self.send is not None:
            self.store.delete_send(self.send.id)
            self._created = False
            self.send = None

    def close(self) -> None:
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
            self.lock = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def __enter__(self) -> SendJob:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

