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
        source, filename, uptodate = super().get_source(environment, template)
        if not Path(filename).resolve().is_relative_to(self.root):
            raise SecurityError(f"template {template!r} is a link to a file outside the theme folder")
        return source, filename, uptodate


class ThemeEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with only the documented attributes of our own objects."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, PurePath):
            return False  # read_text, open, parent...: a path is only ever printed
        allowed = DOCUMENTED.get(type(obj))
        return allowed is None or attr in allowed
