"""Stopping a running send by itself when the webhook's events show trouble (issue 12).

Between batches the send loop asks `Brake.check()`: it counts this send's new delivered, bounce and
spam-report events (one indexed query from where the last count ended) and answers a reason to stop when,
once `min_delivered` outcomes are in, the bounce rate (bounces / (delivered + bounces)) or the complaint
rate (spam reports / delivered) is above `sending.stop_when`. Defaults follow Gmail's and Yahoo's bulk-sender
rules: complaints must stay under 0.3 %; bounces above a few percent mark a stale list. A cancel made by
`newsletter cancel` while the send runs stops it too. The stop is resumable: the same command goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import StopWhen
from pipeline.errors import Problem
from pipeline.store import Outcomes, Send, Store

CHECK_EVERY = 1000  # recipients claimed between two checks (and before the first claim)


@dataclass(frozen=True, kw_only=True)
class Rates:
    bounce: float
    complaint: float
    reported: int  # delivered + bounced

    @classmethod
    def of(cls, o: Outcomes) -> Rates:
        reported = o.delivered + o.bounced
        return cls(bounce=o.bounced / reported if reported else 0.0,
                   complaint=o.complaints / o.delivered if o.delivered else 0.0, reported=reported)

    def over(self, limits: StopWhen) -> list[str]:
        """The rates above their limits, as text; empty when below or too few outcomes to tell."""
        if self.reported < limits.min_delivered:
            return []
        found = []
        if self.bounce > limits.bounce_rate:
            found.append(f"bounce rate {self.bounce:.1%} (limit {limits.bounce_rate:.1%})")
        if self.complaint > limits.complaint_rate:
            found.append(f"spam-complaint rate {self.complaint:.2%} (limit {limits.complaint_rate:.2%})")
        return found


class Brake:
    def __init__(self, store: Store, send: Send, limits: StopWhen, *, issue_dir: str) -> None:
        self.store, self.send, self.limits, self.issue_dir = store, send, limits, issue_dir
        self.seen = Outcomes()
        self._claimed_since = CHECK_EVERY  # the first claim is checked

    def claimed(self, recipients: int) -> None:
        self._claimed_since += recipients

    def check(self) -> str | None:
        """A reason to stop now, or None; cheap unless `CHECK_EVERY` recipients were claimed since the last."""
        if self._claimed_since < CHECK_EVERY:
            return None
        self._claimed_since = 0
        if self.store.schedule(self.send.id).state == "cancelled":
            return ("this send was cancelled (`newsletter cancel`) while it ran; the rest was not sent — run it "
                    "again with --resend-cancelled to send everyone, or leave it")
        self.seen = self.seen.plus(self.store.outcomes(self.send, after_event=self.seen.last_event))
        rates = Rates.of(self.seen)
        over = rates.over(self.limits)
        if not over:
            return None
        return (f"stopped by itself: the webhook reports {' and '.join(over)} for this send, over "
                f"{rates.reported} reported deliveries ({self.seen.bounced} bounced, {self.seen.complaints} spam "
                f"reports); the rest was not sent. See `newsletter report {self.issue_dir}` and clean the list "
                "(bounced addresses are suppressed already); to go on anyway, raise sending.stop_when in "
                "newsletter.yaml and run the same command again: it resumes")


def previous_warning(store: Store, send: Send, limits: StopWhen) -> Problem | None:
    """A warning before a send to a list whose previous send bounced or drew complaints above the limits."""
    before = store.previous_send(send)
    if before is None:
        return None
    outcomes = store.outcomes(before)
    rates = Rates.of(outcomes)
    over = rates.over(StopWhen(bounce_rate=limits.bounce_rate, complaint_rate=limits.complaint_rate,
                               min_delivered=min(limits.min_delivered, 100)))
    if not over:
        return None
    return Problem(message=f"the last send to list {send.list_name} (issue {before.issue}) had {' and '.join(over)} "
                   f"over {rates.reported} reported deliveries", blocking=False,
                   fix="clean the list before sending (`newsletter suppressions sync`, remove stale addresses); this "
                   "send stops by itself if it goes the same way")
