"""Themes are data, not code: the Jinja environment every template of a theme renders in.

A theme folder can come from a designer, so a template gets what README (Themes, Context) lists and
nothing else:

- Jinja's immutable sandbox: no attributes that start with `_` (so no walk from `cycler` or a function to
  `__globals__` and `os`), no changing lists or dicts;
- on our own objects (config, issue, section, article, literature entry, image) only the documented
  attributes: not `config.root` or `issue.folder`, whose Path methods would read any file; a path prints
  as text but has no methods;
- the loader reads only files inside the theme folder: no `../` in an include, import or extends, and no
  symbolic link that leads out of it.

A template that tries gets `jinja2.exceptions.SecurityError`, which the renderer reports with the
template's file and line (pipeline.build.render).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

import jinja2
import jinja2.runtime
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pipeline.build.issue import Article, Image, Issue, LiteratureEntry, Section
from pipeline.config import Config

#: What README's context table documents, per type; everything else on these objects is refused.
DOCUMENTED: dict[type, frozenset[str]] = {
    Config: frozenset({"name", "sender_email", "sender_name", "reply_to", "base_url", "contact", "language",
                         "image_column_px"}),
    Issue: frozenset({"number", "date", "subject", "preheader", "language", "masthead", "slug", "sections"}),
    Section: frozenset({"title", "kicker", "numbered", "articles", "literature"}),
    Article: frozenset({"title", "subtitle", "date", "source", "link", "image", "body"}),
    LiteratureEntry: frozenset({"title", "subtitle", "authors", "details", "link"}),
    Image: frozenset({"path", "alt"}),
}
SECURITY_FIX = ("a theme may use only what README (Themes, Context) lists, and files inside its own folder — "
                "remove that expression from the template")


MAX_REPEAT = 1_000_000  # `'x' * n` or `[..] * n`: at most this many characters or items


class ThemeLoader(jinja2.FileSystemLoader):
    """FileSystemLoader that refuses `..` and absolute names, and files that resolve outside the theme."""

    def __init__(self, theme_dir: Path) -> None:
        super().__init__(theme_dir)
        self.root = theme_dir.resolve()

    def get_source(self, environment: jinja2.Environment,
                   template: str) -> tuple[str, str, Callable[[], bool]]:
        parts = template.replace("\\", "/").split("/")
        if template.startswith(("/", "\\")) or ".." in parts:
            raise SecurityError(f"template {template!r} lies outside the theme folder")
        try:
            source, filename, uptodate = super().get_source(environment, template)
        except UnicodeDecodeError as exc:
            line = exc.object[:exc.start].count(b"\n") + 1
            raise jinja2.TemplateSyntaxError(f"not valid UTF-8 (byte {exc.start}) — save the file as UTF-8", line,
                                             template, str(Path(self.searchpath[0]) / template)) from None
        if not Path(filename).resolve().is_relative_to(self.root):
            raise SecurityError(f"template {template!r} is a link to a file outside the theme folder")
        return source, filename, uptodate


class ThemeEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with only the documented attributes of our own objects, and no text or list repeated into
    gigabytes (`'x' * 10 ** 10`), which would take the machine's memory."""

    intercepted_binops = frozenset({"*"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > MAX_REPEAT:
                    raise SecurityError(f"repeating a value into {len(seq) * times} characters or items (at most "
                                        f"{MAX_REPEAT})")
        return super().call_binop(context, operator, left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, PurePath):
            return False  # read_text, open, parent...: a path is only ever printed
        allowed = DOCUMENTED.get(type(obj))
        return allowed is None or attr in allowed
