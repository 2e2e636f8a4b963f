"""Issue -> Email: Jinja2 renders MJML, mjml-python compiles it, premailer inlines the theme's inline.css.

Per-recipient values are left as SendGrid substitution tags (see PLACEHOLDERS); the send stage fills them.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib
import logging
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.runtime
from jinja2.exceptions import SecurityError
from markupsafe import Markup

from pipeline.build import i18n
from pipeline.build.images import shown_width
from pipeline.build.issue import MARKDOWN, Image, Issue, parse_markdown
from pipeline.build.mjml_blame import blame
from pipeline.build.sandbox import SECURITY_FIX, ThemeEnvironment, ThemeLoader, render_bounded
from pipeline.build.textpart import markdown_text, width
from pipeline.config import Config
from pipeline.errors import IssueError, Problem
from pipeline.lists.values import HTML_SUFFIX


def placeholder(field: str) -> str:
    """The substitution tag for one per-recipient field, e.g. %%unsubscribe_url%%."""
    return f"%%{field}%%"


UNSUBSCRIBE = placeholder("unsubscribe_url")
#: A tag as the send fills it: `%%city%%` (the plain value) or `%%city:html%%` (the value HTML-escaped).
PLACEHOLDER_RE = re.compile(rf"%%([A-Za-z0-9_]+(?:{HTML_SUFFIX})?)%%")
_PLAIN_TAG = re.compile(r"%%([A-Za-z0-9_]+)%%")


def html_tags(html: str) -> str:
    """Every plain tag in the HTML part becomes its HTML tag, whose value the send HTML-escapes.

    SendGrid puts one value into the subject, the HTML and the text alike, so the HTML cannot share the
    text's tags: a name like `<a href=...>` would be live markup. Done on the finished HTML, it covers tags
    from the templates, the Markdown and the preheader alike. The unsubscribe URL keeps its tag: the send
    makes it from base_url and a base64 token, which need no escaping (`Personalizer` checks base_url).
    """
    def retag(match: re.Match[str]) -> str:
        field = match.group(1)
        return match.group() if field == "unsubscribe_url" else placeholder(field + HTML_SUFFIX)

    return _PLAIN_TAG.sub(retag, html)


@dataclass(frozen=True, kw_only=True)
class Email:
    subject: str
    preheader: str
    language: str
    html: str
    text: str
    mjml: str

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for part in (self.subject, self.preheader, self.html, self.text):
            digest.update(part.encode("utf-8") + b"\0")
        return digest.hexdigest()

    @property
    def placeholders(self) -> set[str]:
        return set(PLACEHOLDER_RE.findall(self.subject + self.html + self.text))


class _Recipient:
    """`{{ recipient.name }}` in a template becomes the tag %%name%%; any CSV column works the same way."""

    def __getattr__(self, field: str) -> str:
        return placeholder(field)




def markdown_to_html(text: str) -> Markup:
    return Markup(MARKDOWN.renderer.render(list(parse_markdown(text)), MARKDOWN.options, {}))


def markdown_to_text(text: str) -> str:
    """Markdown for the text part (pipeline.build.textpart): wrapped at 72 display columns, lists, quotes, tables."""
    return markdown_text(parse_markdown(text))


def dotdate(value: dt.date | None) -> str:
    """The newsletter's own date style: 2022.04.01."""
    return value.strftime("%Y.%m.%d.") if value else ""


@jinja2.pass_context
def localdate(context: jinja2.runtime.Context, value: dt.date | None, pattern: str) -> str:
    """`{{ issue.date | localdate(_("yyyy.MM.dd.")) }}`: the pattern is a message, so each language's
    catalogue chooses its own (Korean: `y년 M월 d일`)."""
    return i18n.format_day(value, pattern, context.get("language", i18n.SOURCE_LANGUAGE))


@jinja2.pass_context
def localnumber(context: jinja2.runtime.Context, value: int | float) -> str:
    return i18n.format_number(value, context.get("language", i18n.SOURCE_LANGUAGE))


@functools.cache
def environment(theme_dir: Path, cache_dir: Path | None = None,
                language: str = i18n.SOURCE_LANGUAGE) -> jinja2.Environment:
    """One environment per theme and language: Jinja keeps compiled templates and recompiles a file when it
    changes. It is a sandbox confined to the theme folder (pipeline.build.sandbox): a theme is data, not code;
    `_()` and `{% trans %}` look the theme's catalogue up on each call, so an edited .po shows at once.

    cache_dir keeps compiled templates between processes: compiling them is a fifth of a cold build.
    """
    bytecode_cache = None
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            bytecode_cache = jinja2.FileSystemBytecodeCache(str(cache_dir))
        except OSError:
            pass  # a read-only checkout still builds, only slower
    env = ThemeEnvironment(
        loader=ThemeLoader(theme_dir),
        bytecode_cache=bytecode_cache,
        autoescape=jinja2.select_autoescape(enabled_extensions=("mjml.j2", "html.j2"), default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_callables(  # type: ignore[attr-defined]
        lambda message: i18n.translations(theme_dir, language).gettext(message),
        lambda singular, plural, n: i18n.translations(theme_dir, language).ngettext(singular, plural, n),
        newstyle=True,
        pgettext=lambda context, message: i18n.translations(theme_dir, language).pgettext(context, message),
        npgettext=lambda context, singular, plural, n: i18n.translations(theme_dir, language).npgettext(
            context, singular, plural, n),
    )
    env.filters.update(markdown=markdown_to_html, plaintext=markdown_to_text, dotdate=dotdate,
                       localdate=localdate, localnumber=localnumber, width=width)
    return env


#: What a template can raise while it renders besides Jinja's own errors: `{{ 1 / 0 }}`, `{{ 'a' + 1 }}`, the
#: sandbox's limit on range(), a date pattern Babel refuses. Reported like a template error, with file and line.
RUNTIME_ERRORS = (ArithmeticError, TypeError, ValueError, LookupError, AttributeError, RecursionError)


def _template_problem(exc: jinja2.TemplateError | Exception, theme_dir: Path) -> Problem:
    name = getattr(exc, "filename", None) or getattr(exc, "name", None)
    line = getattr(exc, "lineno", None)
    if line is None:
        # Runtime errors (an undefined variable) carry no location; Jinja's rewritten traceback does:
        # its innermost frame inside the theme is the template file and line that failed.
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.startswith(str(theme_dir)):
                name, line = tb.tb_frame.f_code.co_filename, tb.tb_lineno
            tb = tb.tb_next
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, SecurityError):
        return Problem(message=f"template refused by the theme sandbox: {message}",
                       file=Path(name) if name else theme_dir, line=line, fix=SECURITY_FIX)
    return Problem(message=f"template error: {message}",
                   file=Path(name) if name else theme_dir, line=line,
                   fix="fix the template; every variable it uses must exist (see README, Templates)")


_MJ_TAG = re.compile(r"<(/?)(mjml|mj-[a-z-]+)\b[^>]*?(/?)>")


def _unclosed_tag(source: str) -> int | None:
    """Offset of the first MJML element left open, found with a stack of mj- tags."""
    stack: list[tuple[str, int]] = []
    for match in _MJ_TAG.finditer(source):
        closing, name, self_closing = match.groups()
        if self_closing:
            continue
        if not closing:
            stack.append((name, match.start()))
        elif stack and stack[-1][0] == name:
            stack.pop()
        elif stack:
            return stack[-1][1]  # a parent closes while this element is still open
    return stack[-1][1] if stack else None


def _mjml_problem(exc: ValueError, source: str, file: Path) -> Problem:
    """mjml-python reports byte offsets; turn the first one into a line and column of the rendered MJML."""
    message = str(exc)
    match = re.search(r"position (\d+)", message)
    line = column = None
    prefix = None
    if match:
        prefix = source.encode("utf-8")[: int(match.group(1))].decode("utf-8", "replace")
    elif "end of stream" in message and (start := _unclosed_tag(source)) is not None:
        prefix = source[:start]  # mjml-python gives no position for a tag left open: point at that tag
        message += f" (this tag is never closed: {source[start:].split('>', 1)[0]}>)"
    if prefix is not None:
        line = prefix.count("\n") + 1
        column = len(prefix) - (prefix.rfind("\n") + 1) + 1
    else:  # some MRML errors carry no position: the XML parser usually finds the same mistake
        from xml.parsers import expat

        parser = expat.ParserCreate()
        try:
            parser.Parse(source, True)
        except expat.ExpatError as xml_error:
            line, column = xml_error.lineno, xml_error.offset + 1
            message += f" (the XML parser first stumbles here: {expat.ErrorString(xml_error.code)})"
    return Problem(message=f"MJML error: {message}", file=file, line=line, column=column,
                   fix="look at that line of the rendered MJML and fix the template that produced it")


def _refuse_fetch(*args: object, **kwargs: object) -> None:
    raise IssueError("premailer tried to fetch a stylesheet; remove <link> and @import from the theme")


_NO_REQUESTS = types.ModuleType("requests", "premailer may not fetch anything")
_NO_REQUESTS.get = _refuse_fetch  # type: ignore[attr-defined]


def _premailer() -> Any:
    """premailer whose `requests` is a module that refuses every call.

    premailer needs requests only to fetch external stylesheets, which we never allow: the refusal makes a
    fetch impossible and, when premailer is imported here first, spares a cold build the import of requests
    and urllib3 (about a third of it).
    """
    if "premailer.premailer" not in sys.modules:
        real = sys.modules.get("requests")
        sys.modules["requests"] = _NO_REQUESTS
        try:
            importlib.import_module("premailer.premailer")
        finally:
            if real is None:
                del sys.modules["requests"]
            else:
                sys.modules["requests"] = real
    module = sys.modules["premailer.premailer"]
    module.requests = _NO_REQUESTS  # type: ignore[attr-defined]  # also when requests was imported before
    return module.Premailer


def inline_css(html: str, css: str) -> str:
    """Inline only the theme's inline.css; MJML's own <style> blocks stay as they are.

    premailer would otherwise copy MJML's table rules into every cell, drops a lower-case doctype,
    and must never reach the network.
    """
    Premailer = _premailer()
    if "@import" in css or re.search(r"url\(\s*['\"]?(https?:)?//", css):
        raise IssueError("inline.css may not use @import or remote url(): premailer would fetch them")
    marked = html.replace("<style", '<style data-premailer="ignore"')
    inlined: str = Premailer(
        marked, css_text=css, keep_style_tags=False, disable_validation=True, allow_network=False,
        remove_classes=False, strip_important=False, cssutils_logging_level=logging.CRITICAL,
        disable_link_rewrites=True, align_floating_images=False,  # the float check costs ~0.3 s of regexes
    ).transform()
    inlined = inlined.replace(' data-premailer="ignore"', "")
    if not inlined.lstrip().lower().startswith("<!doctype"):
        inlined = "<!DOCTYPE html>\n" + inlined
    return inlined


def render_email(issue: Issue, config: Config, *, asset_base: str | None = None,
                 failed_mjml: Path | None = None, web: bool = False) -> Email:
    """Render the issue with the configured theme. asset_base replaces base_url (the preview uses it).
    `web` renders the archive's web version: the templates leave out what only makes sense in a mailbox.

    When the MJML does not compile it is written to failed_mjml, so the line:column in the error is real.
    """
    import mjml

    theme_dir = config.theme_dir
    base = (asset_base or config.base_url).rstrip("/")
    issue_url = f"{base}/archive/{issue.slug}/"
    web_url = f"{issue_url}{issue.edition_path}"

    def asset_url(image: Image | str) -> str:
        path = image.path.as_posix() if isinstance(image, Image) else image
        return f"{issue_url}{path}"  # images are shared by every edition

    def image_width(image: Image) -> int:
        return shown_width(issue.folder / image.path, config.image_column_px)

    env = environment(theme_dir, config.state_dir / "cache" / "jinja", issue.language)
    editions = [{"language": language, "name": i18n.language_name(language), "url": f"{issue_url}{path}",
                 "current": language == issue.language} for language, path in issue.editions]
    context: dict[str, Any] = {
        "issue": issue, "config": config, "web_url": web_url, "archive_url": f"{base}/archive/",
        "unsubscribe_url": UNSUBSCRIBE, "recipient": _Recipient(), "asset_url": asset_url,
        "language": issue.language, "editions": editions, "image_width": image_width, "web": web,
    }
    try:
        source = render_bounded(env.get_template("email.mjml.j2"), context)
        text = render_bounded(env.get_template("email.txt.j2"), context)
    except jinja2.TemplateNotFound as exc:
        raise IssueError(f"theme {config.theme!r} is incomplete:", problems=[Problem(
            message=f"template {exc.name} not found", file=theme_dir,
            fix="every theme needs email.mjml.j2, email.txt.j2 and inline.css")]) from None
    except (jinja2.TemplateError, *RUNTIME_ERRORS) as exc:
        raise IssueError("a template failed to render:", problems=[_template_problem(exc, theme_dir)]) from None
    try:
        compiled = mjml.mjml2html(source, fonts={})
    except ValueError as exc:
        if failed_mjml is not None:
            failed_mjml.parent.mkdir(parents=True, exist_ok=True)
            failed_mjml.write_text(source, "utf-8")
        problem = blame(issue, str(exc)) or _mjml_problem(  # an article's own line first, else the theme's
            exc, source, failed_mjml or theme_dir / "email.mjml.j2 (rendered)")
        raise IssueError("the MJML did not compile:", problems=[problem]) from None
    css_file = theme_dir / "inline.css"
    try:
        css = css_file.read_text("utf-8") if css_file.is_file() else ""
    except UnicodeDecodeError as exc:
        raise IssueError(f"theme {config.theme!r} cannot be used:", problems=[Problem(
            message=f"not valid UTF-8 (byte {exc.start})", file=css_file, fix="save the file as UTF-8")]) from None
    return Email(subject=issue.subject, preheader=issue.preheader, language=issue.language,
                 html=html_tags(inline_css(compiled, css)), text=text, mjml=source)
