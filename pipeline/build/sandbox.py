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

import ctypes
import inspect
import re
import string
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any, cast

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
# Characters a template may render. An email is well under 1 MB (Gmail clips it at 102 KB); loops are not bounded
# by the checks below (Jinja caps a range at 100,000, and two nest to 10^10 turns).
MAX_OUTPUT = 16_000_000
# Seconds a template may run: a render takes milliseconds; a loop in a loop that writes nothing takes hours.
MAX_SECONDS = 30.0
# A printf width or precision (`%10d`, `%.*f`): the number, or the `*` that takes it from the arguments.
_PRINTF = re.compile(r"%[-#0 +]*(\d+|\*)?(?:\.(\d+|\*))?")
_NUMBER = re.compile(r"\d+")


def _refuse(size: int, what: str) -> None:
    if size > MAX_REPEAT:
        raise SecurityError(f"{what} would make {size} characters (at most {MAX_REPEAT})")


def _refuse_widths(args: Iterable[Any], fmt: str) -> None:
    """The arguments a format takes its widths from (`%*d`, `{:{}}`): none past the limit."""
    for arg in args:
        if isinstance(arg, int):
            _refuse(arg, f"the format {fmt[:40]!r}")


def _check_printf(fmt: str, args: Iterable[Any]) -> None:
    """`fmt % args` and the `format` filter: no width or precision past the limit, given or taken from args."""
    for width, precision in _PRINTF.findall(fmt):
        for number in (width, precision):
            if number.isdigit():
                _refuse(int(number), f"the format {fmt[:40]!r}")
    if "*" in fmt:
        _refuse_widths(args, fmt)


def _check_format(fmt: str, args: Iterable[Any]) -> None:
    """`str.format`: no width or precision in a field past the limit, written or passed as an argument."""
    nested = False
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself
    for _, _, spec, _ in fields:
        nested = nested or "{" in (spec or "")
        for number in _NUMBER.findall(spec or ""):
            _refuse(int(number), f"the format {fmt[:40]!r}")
    if nested:
        _refuse_widths(args, fmt)


def _check_str_call(text: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The string methods that can make a text far longer than their arguments."""
    values = [*args, *kwargs.values()]
    if method in ("center", "ljust", "rjust", "zfill") and values and isinstance(values[0], int):
        _refuse(values[0], f"str.{method}")
    elif method == "expandtabs":
        tab = values[0] if values and isinstance(values[0], int) else 8
        _refuse(text.count("\t") * tab + len(text), "str.expandtabs")
    elif method == "replace" and len(values) >= 2 and isinstance(values[0], str) and isinstance(values[1], str):
        old, new = values[0], values[1]
        times = text.count(old) if old else len(text) + 1
        _refuse(len(text) + times * max(0, len(new) - len(old)), "str.replace")
    elif method == "format":
        _check_format(text, values)
    elif method == "format_map" and values and isinstance(values[0], Mapping):
        _check_format(text, values[0].values())


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

    intercepted_binops = frozenset({"*", "%"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The built-in filters that can make a text far longer than their arguments, bounded the same way.
        center, indent, replace, printf = (self.filters[n] for n in ("center", "indent", "replace", "format"))

        def bounded_center(value: Any, width: int = 80) -> str:
            if isinstance(width, int):
                _refuse(width, "the center filter")
            return str(center(value, width))

        def bounded_indent(value: Any, width: int | str = 4, *args: Any, **kwargs: Any) -> str:
            text, step = str(value), width if isinstance(width, int) else len(str(width))
            _refuse(len(text) + (text.count("\n") + 1) * step, "the indent filter")
            return str(indent(value, width, *args, **kwargs))

        def bounded_replace(context: Any, value: Any, old: str, new: str, count: int | None = None) -> str:
            _check_str_call(str(value), "replace", (str(old), str(new)), {})
            return str(replace(context, value, old, new, count))

        def bounded_format(value: str, *args: Any, **kwargs: Any) -> str:
            _check_printf(str(value), [*args, *kwargs.values()])
            return str(printf(value, *args, **kwargs))

        bounded_replace.jinja_pass_arg = getattr(replace, "jinja_pass_arg", None)  # type: ignore[attr-defined]
        self.filters.update(center=bounded_center, indent=bounded_indent, replace=bounded_replace,
                            format=bounded_format)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > MAX_REPEAT:
                    raise SecurityError(f"repeating a value into {len(seq) * times} characters or items (at most "
                                        f"{MAX_REPEAT})")
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, right if isinstance(right, tuple) else (right,))
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        method = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped in the sandbox's formatter
        text = getattr(method, "__self__", None)
        if isinstance(text, str):
            _check_str_call(text, getattr(method, "__name__", ""), args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, PurePath):
            return False  # read_text, open, parent...: a path is only ever printed
        allowed = DOCUMENTED.get(type(obj))
        return allowed is None or attr in allowed


def render_bounded(template: jinja2.Template, values: Mapping[str, Any], *, seconds: float | None = None) -> str:
    """`template.render(values)`, stopped once the output passes MAX_OUTPUT characters or the render `seconds`
    (MAX_SECONDS unless given), in any thread."""
    parts: list[str] = []
    size = 0
    output = cast(Generator[str, None, None], template.generate(values))  # typed as an Iterator; it is a generator
    with _deadline(MAX_SECONDS if seconds is None else seconds):
        try:
            for part in output:
                size += len(part)
                if size > MAX_OUTPUT:  # raised where the template is, so that the error names its line
                    output.throw(SecurityError(f"the template renders more than {MAX_OUTPUT} characters"))
                parts.append(part)
        except RenderTimeout as exc:
            # it came here, between two parts: raised again where the template is, so that its line is named
            if inspect.getgeneratorstate(output) == inspect.GEN_SUSPENDED:
                output.throw(exc)
            raise
    return "".join(parts)


class RenderTimeout(SecurityError):
    """A render ran past its time. `_deadline` raises it in the rendering thread, which takes only a class: a
    subclass made when it fires carries that render's limit."""

    seconds = MAX_SECONDS

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or f"the template ran for more than {self.seconds:g} s")


# CPython's asynchronous exception: raised in another thread between two of its bytecodes. Unlike a timer signal
# (main thread only), it stops a template in any thread, serve's workers included.
_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """RenderTimeout raised in this thread after `seconds`, in whatever it runs then (the template: its line is
    named). A timer thread raises it, under a lock, only while the block runs; one raised but not yet delivered
    when the block ends is withdrawn, and the block's end raises it instead."""
    thread = threading.get_ident()
    lock = threading.Lock()
    running = True
    fired: list[type[RenderTimeout]] = []

    def expire() -> None:
        with lock:
            if running:
                fired.append(type("RenderTimeout", (RenderTimeout,), {"seconds": seconds}))
                _set_async_exc(ctypes.c_ulong(thread), ctypes.py_object(fired[0]))

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            running = False
            if fired:
                _set_async_exc(ctypes.c_ulong(thread), None)  # withdrawn if not delivered yet
    if fired:
        raise fired[0]
