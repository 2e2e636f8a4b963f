"""One exception hierarchy; the CLI maps each class to an exit code and prints it without a traceback."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One thing wrong with an input, located as precisely as we know, with the way to fix it."""

    message: str
    file: Path | None = None
    line: int | None = None
    column: int | None = None
    fix: str = ""
    blocking: bool = True

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        level = "error" if self.blocking else "warning"
        text = f"{where}{level}: {self.message}"
        if self.fix:
            text += f" — {self.fix}"
        return text


class PipelineError(Exception):
    """Base of every error a user can cause; `exit_code` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, *, problems: Iterable[Problem] = ()) -> None:
        self.problems = tuple(problems)
        super().__init__(message)

    def __str__(self) -> str:
        lines = [self.args[0]] + [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class ConfigError(PipelineError):
    exit_code = 2


class IssueError(PipelineError):
    """The issue folder, its templates or its content is invalid."""

    exit_code = 3


class SubscriberError(PipelineError):
    exit_code = 4


class SendError(PipelineError):
    """SendGrid refused, a lock is held, or the send cannot safely go on."""

    exit_code = 5


def raise_if_blocking(problems: Iterable[Problem], error: type[PipelineError], message: str) -> None:
    """Collect-then-abort, as MkDocs does: report every blocking problem at once."""
    blocking = [p for p in problems if p.blocking]
    if blocking:
        raise error(message, problems=blocking)


class StoreError(SendError):
    """The database could not be reached or refused a statement: nothing is counted as sent that was not
    recorded, so the same command resumes once it is back."""

    exit_code = 6
