"""The `newsletter` command: the group with every command registered, and the process entry point.

Commands stay thin: parse options, call the library, print. Heavy packages (mjml, premailer, sendgrid,
starlette) are imported inside the commands so that `--help` and `build` start fast.
"""

from __future__ import annotations

import contextlib
import os
import sys

from pipeline.cli import commands_issue, commands_lists, commands_send, commands_serve  # noqa: F401 - they register
from pipeline.cli.group import SUPPRESSION_REASONS, finished, main

__all__ = ["SUPPRESSION_REASONS", "main", "run"]


def run() -> None:
    """The `newsletter` process (console script and `python -m pipeline`).

    After `build` or `check` has written and closed everything, the process ends at once instead of
    letting the interpreter tear down the few hundred modules a build imports: that teardown costs
    35–40 ms, a sixth of a cold build. Other commands (and tests that invoke `main`) exit normally.
    """
    try:
        main(prog_name="newsletter")
    except SystemExit as exc:
        if not (finished and exc.code in (None, 0)):
            raise
    if finished:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say anyway
                stream.flush()
        os._exit(0)

