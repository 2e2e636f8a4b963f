"""The `newsletter` command: the only module that knows about click, messages and exit codes.

Commands stay thin: parse options, call the library, print. Heavy packages (mjml, premailer, sendgrid,
starlette) are imported inside the commands so that `--help` and `build` start fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from pipeline.errors import IssueError, PipelineError, Problem

F = TypeVar("F", bound=Callable[..., Any])


def _report_errors(func: F) -> F:
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
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _print_problems(problems: list[Problem]) -> None:
    for problem in problems:
        click.secho(str(problem), fg="red" if problem.blocking else "yellow", err=True)


issue_dir = click.argument("issue_dir", type=click.Path(path_type=Path, file_okay=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and keep failed build output.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Compile newsletter issues into email and send them exactly once."""
    ctx.obj = {"debug": debug}


# --- build (issue #2) -------------------------------------------------------------------------------


@main.command()
@issue_dir
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Output folder (default: build/<issue folder name>).")
@_report_errors
def build(issue_dir: Path, out: Path | None) -> None:
    """Compile ISSUE_DIR into email.html, email.txt, email.mjml and manifest.json."""
    from pipeline.build import build_issue
    from pipeline.config import load_config

    result = build_issue(issue_dir, load_config(), out=out)
    _print_problems([p for p in result.problems if not p.blocking])
    click.echo(f"built {result.out} ({result.manifest['sizes']['encoded_message_bytes'] / 1000:.1f} KB encoded)")


@main.command()
@issue_dir
@_report_errors
def check(issue_dir: Path) -> None:
    """Report every problem of ISSUE_DIR; exit non-zero on blocking ones."""
    from pipeline.checks import check_issue
    from pipeline.config import load_config

    problems = check_issue(issue_dir, load_config())
    _print_problems(problems)
    blocking = sum(p.blocking for p in problems)
    if blocking:
        raise IssueError(f"{blocking} blocking problem(s) in {issue_dir}; fix them and run check again")
    click.echo(f"{issue_dir}: ok ({len(problems)} warning(s))")


@main.command()
@issue_dir
@click.option("--port", default=8025, show_default=True, help="Port on 127.0.0.1.")
@click.option("--screenshot", type=click.Path(path_type=Path, file_okay=False),
              help="Write PNGs at 375 and 600 px wide to this folder with headless Chromium, then exit.")
@_report_errors
def preview(issue_dir: Path, port: int, screenshot: Path | None) -> None:
    """Serve the built email on 127.0.0.1 and rebuild when the issue or templates change."""
    from pipeline.config import load_config
    from pipeline.preview import screenshots, serve

    config = load_config()
    if screenshot is not None:
        for path in screenshots(issue_dir, config, screenshot):
            click.echo(f"wrote {path}")
        return
    serve(issue_dir, config, port=port, echo=click.echo)
