"""What the commands print: problems as text or as JSON, and `--json` itself.

With `--json` a command prints exactly one JSON document on stdout (its keys are listed in the README,
"Machine-readable output") and everything meant for a person (warnings, progress, questions) on stderr,
so `newsletter status ISSUE --json | jq .` always gets valid JSON. Part of the command line: knows click.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import click

from pipeline.errors import Problem

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document on stdout (keys: README, Machine-readable output).")


def print_problems(problems: Iterable[Problem]) -> None:
    for problem in problems:
        click.secho(str(problem), fg="red" if problem.blocking else "yellow", err=True)


def problem_json(problem: Problem) -> dict[str, Any]:
    return {"file": str(problem.file) if problem.file is not None else None, "line": problem.line,
            "column": problem.column, "severity": "error" if problem.blocking else "warning",
            "message": problem.message, "fix": problem.fix}


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))
