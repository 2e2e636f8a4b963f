"""A test copy (`newsletter send --test ADDRESS`): one request, retried like a batch, never in the send log."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from pipeline.errors import SendError
from pipeline.send.batches import Batch
from pipeline.send.loop import backoff
from pipeline.send.transport import Outcome, Transport, refusal_fix
from pipeline.store import DeliveryRow


def send_test_copy(transport: Transport, row: DeliveryRow, *, budget: float, clock: Callable[[], float],
                   sleep: Callable[[float], None]) -> int:
    """Send `row`'s copy, retrying 429/5xx within `budget` seconds; returns the requests made. Raises
    SendError (with what to do) when it was refused, got no answer, or the budget ran out."""
    batch = Batch(id=0, request_id=uuid.uuid4().hex, rows=[row])
    started, attempts = clock(), 0
    while True:
        attempts += 1
        result = transport.send(batch)
        if result.outcome is not Outcome.RETRY:
            break
        delay = backoff(attempts, result.retry_after)
        if clock() - started + delay > budget:
            raise SendError(f"gave up on the test copy after {attempts} attempt(s) within {budget:g} s "
                            f"(sending.retry_budget_seconds); last answer: {result.status or 'no connection'} "
                            f"{result.error}; nothing was sent — run the same command again later")
        sleep(delay)
    if result.outcome is Outcome.IN_DOUBT:
        raise SendError(f"the test copy got no answer ({result.error}); it may or may not have been sent — "
                        "check the inbox before sending it again")
    if result.outcome is Outcome.REFUSED:
        raise SendError(f"SendGrid refused the test copy ({result.status}): {result.error}; nothing was sent "
                        f"— {refusal_fix(result.status)}")
    return attempts
