"""The pages readers see outside the mailbox (archive index, an issue's web version, the unsubscribe pages) as
templates of the theme: `<theme>/pages/*.html.j2`, so they share the e-mail's colours and type and a designer
can brand them.

They render in the theme's sandbox (pipeline.build.sandbox) with autoescape on and the theme's catalogue in the
page's language. A theme without `pages/base.html.j2` (one made before pages were templates) gets the default
theme's pages. The unsubscribe pages must work even when a theme's page is broken: `render_page(...,
fallback=True)` then logs the problem and uses the default theme's page.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jinja2

from pipeline.build.render import RUNTIME_ERRORS, _template_problem, environment
from pipeline.build.sandbox import render_bounded
from pipeline.config import Config
from pipeline.errors import IssueError, PipelineError, Problem
from pipeline.scaffold import BUNDLED_THEME

log = logging.getLogger("pipeline.web.pages")
BASE = "pages/base.html.j2"
# A page renders in milliseconds; a theme's loop that runs on would hold one of serve's worker threads.
PAGE_SECONDS = 5.0


def pages_theme(config: Config) -> Path:
    """The theme folder whose pages/ are used: the configured theme's if it has them, else the default theme."""
    return config.theme_dir if (config.theme_dir / BASE).is_file() else BUNDLED_THEME


def contact_address(config: Config) -> str:
    return str(config.contact.get("email") or config.reply_to or config.sender_email)


def render_page(config: Config, name: str, *, language: str | None = None, archive_url: str | None = "",
                fallback: bool = False, **context: Any) -> str:
    """`pages/<name>` rendered; every page also gets `config`, `language`, `contact` and `archive_url` (the
    relative link to the archive's index, None where there is none). IssueError names the template and line."""
    language = language or config.language
    themes = [pages_theme(config)]
    if fallback and themes[0] != BUNDLED_THEME:
        themes.append(BUNDLED_THEME)
    values = {"config": config, "language": language, "contact": contact_address(config),
              "archive_url": archive_url, **context}
    problem: Problem | None = None
    for theme in themes:
        env = environment(theme, None, language)  # no bytecode cache: a page never creates .newsletter/
        try:
            return render_bounded(env.get_template(f"pages/{name}"), values, seconds=PAGE_SECONDS)
        except jinja2.TemplateNotFound as exc:
            problem = Problem(message=f"template {exc.name} not found", file=theme / "pages",
                              fix="a theme's pages/ needs base, index, issue, message and unsubscribe "
                                  "(.html.j2); copy them from templates/default/pages")
        except (jinja2.TemplateError, *RUNTIME_ERRORS) as exc:
            problem = _template_problem(exc, theme)
        except PipelineError as exc:  # e.g. the theme's catalogue cannot be read
            problem = exc.problems[0] if exc.problems else Problem(message=str(exc), file=theme)
        if len(themes) > 1 and theme == themes[0]:
            log.error("page %s of the theme failed (%s), shown with the default theme's", name, problem.message)
    assert problem is not None
    raise IssueError(f"the page template {name} failed to render:", problems=[problem])
