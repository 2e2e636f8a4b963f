"""Request bodies built ahead in a forked helper process, so that a send uses both cores.

A body costs ~4 ms of Python per 1000 recipients (an HMAC token and JSON text each), holding the GIL.
In the sending process that work would compete with the SQLite and HTTP work of the request in flight;
the helper builds it on the other core instead. It gets the rows through a pipe and answers with the
JSON text, in order. The secret reaches it only by fork (the personalizer is inherited, never sent),
and it keeps no other file open: not the send lock, not the send log.

A body the helper cannot build comes back empty, a helper that died shows as EOFError and one that is
too late (it runs only on an idle core) is given up: in each case the caller builds the body itself
(`BodyBuilder.result` returns None), so a broken helper slows a send down and changes nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import multiprocessing
import os
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

from pipeline.send.batches import Batch, Personalizer
from pipeline.store import Claim, DeliveryRow, Peeked, Store


class BodyBuilder:
    """`submit(rows)` then `result()` in the same order: the body as JSON text, or None (build it yourself)."""

    patience = 1.0  # seconds; a helper this late (a machine busy with other work) is given up for this send

    def __init__(self, personalizer: Personalizer) -> None:
        context = multiprocessing.get_context("fork")
        jobs, self._jobs = context.Pipe(duplex=False)
        self._bodies, bodies = context.Pipe(duplex=False)
        _widen(bodies)
        self._process = context.Process(target=_serve, args=(personalizer, jobs, bodies, (self._jobs, self._bodies)),
                                        name="body-builder", daemon=True)
        self._process.start()
        jobs.close()
        bodies.close()
        self._broken = False

    def submit(self, rows: list[DeliveryRow]) -> None:
        if not self._broken:
            try:
                self._jobs.send(rows)
            except OSError:
                self._broken = True

    def result(self) -> str | None:
        if self._broken:
            return None
        try:
            if not self._bodies.poll(self.patience):
                raise TimeoutError
            body = self._bodies.recv_bytes()
        except (EOFError, OSError):
            self._broken = True
            return None
        return body.decode("ascii") if body else None

    def close(self) -> None:
        """Closing the pipes ends the helper (it reads EOF); it is waited for briefly, then killed."""
        self._jobs.close()
        self._bodies.close()
        self._process.join(timeout=2)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _widen(pipe: Connection) -> None:
    """Room for a body or two in the pipe (64 KB by default): the helper writes a body whole and goes on
    with the next while the sending process is busy; reading it then is one copy, not a wait per 64 KB."""
    resize = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if resize is not None:
        with contextlib.suppress(OSError):  # over the system's limit: the default size works too, a little slower
            fcntl.fcntl(pipe.fileno(), resize, 1 << 20)


def _serve(personalizer: Personalizer, jobs: Connection, bodies: Connection,
           parent_ends: tuple[Connection, Connection]) -> None:
    """The helper: read rows (in a thread, so the parent never blocks sending them), build, answer."""
    # Only on a core nothing else wants: the stand-in or SendGrid client and the sending process are on each
    # request's critical path, this helper is a batch or two ahead of it.
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    gc.disable()  # it makes no cycles; a collection would walk (and copy) every object inherited from the parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then closes the pipe
    for end in parent_ends:
        end.close()  # else this process would hold the parent's ends too and never see EOF
    low = 3
    for fd in sorted((jobs.fileno(), bodies.fileno())):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    todo: queue.SimpleQueue[list[DeliveryRow] | None] = queue.SimpleQueue()

    def read() -> None:
        try:
            while True:
                todo.put(jobs.recv())
        except (EOFError, OSError):
            todo.put(None)

    threading.Thread(target=read, daemon=True).start()
    while (rows := todo.get()) is not None:
        try:
            body = personalizer.body(Batch(id=0, request_id="", rows=rows)).encode("ascii")
        except Exception:  # noqa: BLE001 - the parent builds this one itself and sees the error there
            body = b""
        try:
            bodies.send_bytes(body)
        except OSError:
            return


@dataclass(slots=True)
class _Ahead:
    peeked: Peeked
    building: bool = False  # its body was asked of the helper


class Lookahead:
    """The next `depth` batches, peeked from the send log in id order, their bodies being built meanwhile.

    The send claims the head's rows with `Store.claim_peeked` (or the slow way) and asks `body` for
    the claim's body: the one built ahead when the claim took the peeked rows, else (a suppression or
    some other change came between) everything peeked is dropped and that body is built here.
    """

    def __init__(self, store: Store, send_id: int, *, size: int, states: Sequence[str],
                 build: Callable[[list[DeliveryRow]], str | None], builder: BodyBuilder | None,
                 depth: int = 2, editions: Sequence[str] | None = None) -> None:
        self.store, self.send_id, self.size, self.states = store, send_id, size, states
        self.editions = editions  # the send loop's claim filter: one edition's deliveries
        self._build, self._builder, self._depth = build, builder, depth
        self._queue: deque[_Ahead] = deque()

    @property
    def head(self) -> Peeked | None:
        """The next rows to claim, if any were peeked (None: none peeked, or none left)."""
        return self._queue[0].peeked if self._queue and self._queue[0].peeked.rows else None

    def fill(self, after: int) -> None:
        """Peek until `depth` batches are ahead: after `after`, or after the last one peeked."""
        while len(self._queue) < self._depth:
            if self._queue:
                if not self._queue[-1].peeked.rows:
                    return  # the end, or a stretch of suppressed rows that only a claim can step over
                after = self._queue[-1].peeked.rows[-1][0]
            ahead = _Ahead(self.store.peek_batch(self.send_id, size=self.size, after=after, states=self.states,
                                                 editions=self.editions))
            if ahead.peeked.rows and self._builder is not None:
                self._builder.submit(ahead.peeked.rows)
                ahead.building = True
            self._queue.append(ahead)

    def body(self, claim: Claim) -> str | None:
        head = self._queue.popleft() if self._queue else None
        if head is not None and head.peeked.rows == claim.rows:
            body = self._result(head)
            return body if body is not None else self._build(claim.rows)
        if head is not None:
            self._result(head)
        self.clear()
        return self._build(claim.rows)

    def clear(self) -> None:
        while self._queue:
            self._result(self._queue.popleft())

    def _result(self, ahead: _Ahead) -> str | None:
        return self._builder.result() if ahead.building and self._builder is not None else None
