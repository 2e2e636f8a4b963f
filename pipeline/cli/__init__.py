"""The command line: the only package that knows click, turns errors into messages and exit codes.

`main` holds the commands (thin: read options, call a stage, print); `help` the help conventions
(workflow order, examples), `output` --json and colour, `send_output` what a send prints.
"""

from pipeline.cli.main import main, run

__all__ = ["main", "run"]
