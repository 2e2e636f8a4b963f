"""How `newsletter --help` reads, and the options every command takes.

Commands are listed in the order they are used (init, new, check, build, ...), not alphabetically; the
command list shows each description's whole first sentence, never cut mid-word; each command's help ends
with examples; and `--debug` works after the command as well as before it (`newsletter build --debug`),
because the README and users put it there. Part of the command line: like cli.py, it knows click.
"""

from __future__ import annotations

import os
from typing import Any

import click


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        root = ctx.find_root()
        root.obj = {**(root.obj or {}), "debug": True}


def debug_option() -> click.Option:
    return click.Option(["--debug"], is_flag=True, expose_value=False, callback=_set_debug,
                        help="Show tracebacks instead of one-line error messages.")


def first_sentence(text: str) -> str:
    """The first sentence of a docstring's first paragraph, whole."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def _format_examples(examples: tuple[str, ...], formatter: click.HelpFormatter) -> None:
    if examples:
        with formatter.section("Examples"):
            for example in examples:
                formatter.write(f"{' ' * formatter.current_indent}{example}\n")


class Command(click.Command):
    """A command with `examples` shown at the end of its help, and the global options."""

    def __init__(self, *args: Any, examples: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.examples = examples
        self.params.append(debug_option())

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.short_help or first_sentence(self.help or "")

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        _format_examples(self.examples, formatter)


class Group(click.Group):
    """A group that lists its commands in workflow order (`order`), with examples."""

    command_class = Command
    group_class = type  # subgroups are of this class too

    def __init__(self, *args: Any, examples: tuple[str, ...] = (), order: tuple[str, ...] = (),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.examples, self.order = examples, order

    def list_commands(self, ctx: click.Context) -> list[str]:
        """`order` first, in its order; the rest as defined."""
        rank = {name: i for i, name in enumerate(self.order)}
        return sorted(self.commands, key=lambda name: rank.get(name, len(rank)))

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.short_help or first_sentence(self.help or "")

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        _format_examples(self.examples, formatter)


def no_color() -> bool:
    """https://no-color.org: any non-empty NO_COLOR turns colour off (click already drops it off a terminal)."""
    return bool(os.environ.get("NO_COLOR"))
