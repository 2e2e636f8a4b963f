"""A transport that answers from a script: the httpx-style mock beside the real ones, for tests only."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from pipeline.send.batches import Batch
from pipeline.send.transport import Outcome, Result


class FakeTransport:
    """Answers from a script of outcomes (then ACCEPTED), and records every batch it was given."""

    kind: ClassVar[str] = "sendgrid"

    def __init__(self, script: Iterable[Result] = ()) -> None:
        self.script = list(script)
        self.calls: list[Batch] = []
        self.accepted: list[str] = []

    def send(self, batch: Batch) -> Result:
        self.calls.append(batch)
        result = self.script.pop(0) if self.script else Result(outcome=Outcome.ACCEPTED, status=202)
        if result.outcome is Outcome.ACCEPTED or (result.outcome is Outcome.IN_DOUBT and result.status == 202):
            self.accepted.extend(row[1] for row in batch.rows)
        if result.outcome is Outcome.IN_DOUBT and result.status == 202:  # "sent, but the answer was lost"
            return Result(outcome=Outcome.IN_DOUBT, error="answer lost")
        return result
