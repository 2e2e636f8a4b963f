"""The conventions of the whole command line: --version, help in workflow order with examples, global
options after the command, one metavar per concept, NO_COLOR and terminals, refused choices."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import click
from conftest import REPO, run_cli

from pipeline import __version__
from pipeline.cli.main import SUPPRESSION_REASONS, main
from pipeline.store import REASONS


def test_version() -> None:
    for flag in ("--version", "-V"):
        done = run_cli(REPO, flag)
        assert done.returncode == 0 and done.stdout == f"newsletter {__version__}\n"


def test_help_lists_commands_in_workflow_order_with_whole_sentences() -> None:
    done = run_cli(REPO, "--help")
    assert done.returncode == 0 and done.stdout.startswith("Usage: newsletter ")
    listed = re.findall(r"^  ([a-z]+)\s", done.stdout.split("Commands:")[1].split("Examples:")[0], re.M)
    assert listed[:11] == ["init", "new", "check", "build", "preview", "send", "status", "pause", "resume", "cancel",
                           "serve"]
    assert sorted(listed) == sorted(main.commands)  # type: ignore[attr-defined]
    assert "..." not in done.stdout.split("Commands:")[1]  # no description cut short


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append(((*prefix, name), command))
    return found


def test_every_command_has_an_example_and_named_metavars() -> None:
    for path, _command in _commands(main):  # type: ignore[arg-type]
        text = run_cli(REPO, *path, "--help").stdout
        assert "newsletter " + " ".join(path) in text.split("\nExamples:\n")[1], path
        for generic in ("TEXT", "PATH", "INTEGER", "DIRECTORY", "FILENAME"):
            assert generic not in text, (path, generic)


def test_debug_works_after_the_command(site: Path) -> None:
    for args in (("--debug", "check", "issues/none"), ("check", "issues/none", "--debug")):
        done = run_cli(site, *args)
        assert done.returncode != 0 and "Traceback" in done.stderr, args
    plain = run_cli(site, "check", "issues/none")
    assert plain.returncode == 3 and "Traceback" not in plain.stderr


def test_unknown_choice_is_refused_with_the_valid_ones(site: Path) -> None:
    assert set(SUPPRESSION_REASONS) == set(REASONS)
    done = run_cli(site, "suppressions", "list", "--reason", "bogus")
    assert done.returncode == 2 and done.stdout == ""
    assert "'bogus' is not one of" in done.stderr and "'bounced'" in done.stderr


def _on_terminal(site: Path, *args: str, env: dict[str, str]) -> bytes:
    """Run with stdout and stderr on a pseudo-terminal, as in a person's shell; everything it wrote."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=site, stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, env={**os.environ, "PYTHONPATH": str(REPO), **env})
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    proc.wait(timeout=60)
    os.close(leader)
    return output


def test_colour_on_a_terminal_unless_no_color(site: Path) -> None:
    env = {"NO_COLOR": ""}
    coloured = _on_terminal(site, "check", "issues/none", env=env)
    assert b"\x1b[31m" in coloured  # red error on a terminal
    plain = _on_terminal(site, "check", "issues/none", env={"NO_COLOR": "1"})
    assert b"error:" in plain and b"\x1b[" not in plain
    piped = run_cli(site, "check", "issues/none")
    assert "error:" in piped.stderr and "\x1b[" not in piped.stderr
