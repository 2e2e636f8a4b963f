"""The command line: the only package that knows click and turns errors into messages and exit codes.

`group` holds the `newsletter` group and what commands share; the commands live in `commands_issue`,
`commands_send`, `commands_lists` and `commands_serve`; `help` the help conventions (workflow order,
examples), `output` --json and colour, `send_output` what a send prints; `main` registers them all.
"""

from pipeline.cli.main import main, run

__all__ = ["main", "run"]
