"""Request bodies built ahead in a forked one-worker process pool, so that a send uses both cores.

A body costs ~4 ms of Python per 1000 recipients (an HMAC token and JSON text each), holding the GIL.
In the sending process that work would compete with the store and HTTP work of the requests in flight;
the worker builds it on the other core instead, a batch or two ahead. The executor's futures pair each
batch with its body, and its feeder thread sends the rows, so the send loop never waits on a full pipe.
The secret reaches the worker only by fork (the personalizer is the initializer's argument, inherited,
never pickled); the worker runs at idle priority, without cyclic GC, ignores Ctrl-C (the parent's to
handle), and dies with the parent (Linux: PR_SET_PDEATHSIG), so a `kill -9` of the send leaves no worker
holding the send lock's inherited descriptor.

A body the worker cannot build, a worker that died and a body not ready when its request is due (a
machine busy with other work) all end the same way: the caller builds the body itself
(`BodyBuilder.result` returns None), so the worker can speed a send up and never slow it down.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from pipeline.send.batches import Batch, Personalizer
from pipeline.store import Claim, DeliveryRow, Peeked, Store

_PR_SET_PDEATHSIG = 1
_personalizer: Personalizer | None = None  # in the worker: set by _start_worker


class BodyBuilder:
    """`submit(rows)` then `result()` in the same order: the body as JSON text, or None (build it yourself)."""

    # Seconds `result` waits for a body not yet built: about one body's time, so that the worker a batch
    # ahead is waited for, but a worker the machine gives no CPU (it runs at idle priority, and a shared
    # machine may have none idle) never sets the pace: the sending process builds that body itself.
    patience = 0.005

    def __init__(self, personalizer: Personalizer) -> None:
        _release_free_memory()  # the worker forked at the first submit inherits the heap as it is now
        self.missed = 0  # bodies not ready in time, built by the caller
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                                         initializer=_start_worker, initargs=(personalizer, os.getpid()))
        self._futures: deque[Future[bytes]] = deque()
        self._broken = False

    def submit(self, rows: list[DeliveryRow]) -> None:
        if self._broken:
            self._futures.append(_none())
            return
        try:
            self._futures.append(self._pool.submit(_build, rows))
        except RuntimeError:  # BrokenProcessPool (a RuntimeError): the worker died
            self._broken = True
            self._futures.append(_none())

    def result(self) -> str | None:
        future = self._futures.popleft()
        try:
            body = future.result(timeout=self.patience)
        except FutureTimeout:
            self.missed += 1
            future.cancel()  # if the worker has not taken it yet; else its body is dropped when it comes
            return None
        except (RuntimeError, OSError, EOFError):  # the worker died (BrokenProcessPool)
            self._broken = True
            return None
        return body.decode("ascii") if body else None

    def close(self) -> None:
        """Ends the worker: whatever is still queued is cancelled, a body being built (a few ms) is waited
        for. Not waiting left the executor's manager thread closing its wakeup pipe while the interpreter's
        exit hook wrote to it: "OSError: [Errno 9] Bad file descriptor" printed at exit (seen once, a send
        that stopped as another process took its machine's CPU; CPython 3.11). The exit hook joins that
        thread anyway, so waiting here adds no wait to the process's end."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()


def _release_free_memory() -> None:
    """Give the memory malloc keeps after recording a list (50 MB at 1M rows, freed but kept in the heap)
    back to the system: a forked worker's RSS counts every page mapped in the parent when it forks."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(None).malloc_trim(0)


def _none() -> Future[bytes]:
    future: Future[bytes] = Future()
    future.set_result(b"")
    return future


def _start_worker(personalizer: Personalizer, parent: int) -> None:
    """In the worker, once: idle priority, no GC, no Ctrl-C, death with the parent."""
    global _personalizer
    _personalizer = personalizer
    # Only on a core nothing else wants: the sending process and the server are on each request's critical
    # path; this worker is a batch or two ahead of it.
    with contextlib.suppress(AttributeError, OSError):  # not on Linux: normal priority, a little slower
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    gc.disable()  # it makes no cycles; a collection would walk (and copy) every object inherited from the parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The process's own symbols (libc among them): find_library would run `ldconfig -p` in a subprocess.
    with contextlib.suppress(OSError, AttributeError):  # no prctl: not Linux
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _build(rows: list[DeliveryRow]) -> bytes:
    """In the worker: one body; b"" for one it cannot build (the parent builds it and sees the error)."""
    assert _personalizer is not None
    try:
        return _personalizer.body(Batch(id=0, request_id="", rows=rows)).encode("ascii")
    except Exception:  # noqa: BLE001
        return b""


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
