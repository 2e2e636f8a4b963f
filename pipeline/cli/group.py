"""The `newsletter` group and what every command shares: error reporting, common arguments, the order.

The commands live in modules by what they work on (commands_issue, commands_send, commands_lists,
commands_serve); `pipeline.cli.main` puts them together.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from pipeline import __version__
from pipeline.cli.help import Group, no_color
from pipeline.errors import PipelineError

F = TypeVar("F", bound=Callable[..., Any])
finished: list[bool] = []  # set by commands that end with everything written and closed (see `run`)


def report_errors(func: F) -> F:
    """Turn a PipelineError into its message and exit code; a traceback only with --debug."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            if click.get_current_context().find_root().obj.get("debug"):
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted (Ctrl-C) — run the same command again to start over", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


issue_dir = click.argument("issue_dir", type=click.Path(path_type=Path, file_okay=False))
# One metavar per concept: ISSUE_DIR, DIR (a folder), FILE, NAME (a list), ADDRESS, PORT, TIME.
out_dir = click.Path(path_type=Path, file_okay=False)
SUPPRESSION_REASONS = ("unsubscribed", "bounced", "blocked", "invalid", "complained", "manual")  # sendlog.REASONS
WORKFLOW = ("init", "new", "check", "build", "preview", "send", "status", "pause", "resume", "cancel", "serve",
            "report", "archive", "subscribers", "suppressions")


@click.group(cls=Group, order=WORKFLOW, context_settings={"help_option_names": ["-h", "--help"]}, examples=(
    "newsletter init mynews && cd mynews      # a newsletter of your own",
    "newsletter check issues/001-*            # then build, preview, send --outbox",
    "newsletter build issues/001-* --debug    # --debug works before or after the command",
))
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line error messages.")
@click.version_option(__version__, "-V", "--version", prog_name="newsletter", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Compile newsletter issues into email and send them exactly once.

    Every command finds the newsletter by looking for newsletter.yaml from the current folder upward.
    Colour only on a terminal, and never with NO_COLOR set.
    """
    ctx.obj = {**(ctx.obj or {}), "debug": debug or (ctx.obj or {}).get("debug", False)}
    if no_color():
        ctx.color = False


