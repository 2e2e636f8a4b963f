"""When the MJML does not compile, find the article (file and line) that broke it.

mjml-python reports byte offsets into the whole rendered MJML, often none at all, and the rendered MJML is
mostly theme: an editor needs the line of their own article instead. Only on failure, each top-level block
of each article body is compiled on its own; the first that fails is the culprit. Raw HTML is already
text (pipeline.build.cjkmarkdown), so what remains is characters MJML's parser refuses, such as control
characters pasted from a word processor.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Sequence

from markdown_it.token import Token

from pipeline.build.issue import MARKDOWN, Article, Issue, parse_markdown
from pipeline.errors import Problem

_WRAP = "<mjml><mj-body><mj-section><mj-column><mj-text>{}</mj-text></mj-column></mj-section></mj-body></mjml>"


def _compiles(html: str) -> bool:
    import mjml

    try:
        mjml.mjml2html(_WRAP.format(html), fonts={})
    except ValueError:
        return False
    return True


def _blocks(tokens: Sequence[Token]) -> Iterator[tuple[int, Sequence[Token]]]:
    """(first source line, tokens) of each top-level block of a body."""
    start = None
    for index, token in enumerate(tokens):
        if token.level == 0 and token.nesting >= 0 and start is None:
            start = index
        if token.level == 0 and token.nesting <= 0 and start is not None:
            first = tokens[start].map
            yield (first[0] if first else 0), tokens[start:index + 1]
            start = None


def _suspect(text: str) -> str:
    """What in text MJML probably refused: the first control or non-character, by code point."""
    for column, ch in enumerate(text, 1):
        if ch not in "\t\n\r" and (unicodedata.category(ch) in ("Cc", "Cs") or ord(ch) in (0xFFFE, 0xFFFF)):
            return f" (the invisible character U+{ord(ch):04X} at column {column})"
    return ""


def _body_line(article: Article) -> int:
    """Line of the file where the body starts (the loader strips the front matter and blank lines)."""
    try:
        text = article.file.read_text("utf-8")
    except OSError:
        return 1
    at = text.find(article.body)
    return text[:at].count("\n") + 1 if at >= 0 else 1


def blame(issue: Issue, message: str) -> Problem | None:
    """The article line whose HTML does not compile in MJML, or None when the theme is to blame."""
    for section in issue.sections:
        for article in section.articles:
            tokens = parse_markdown(article.body)
            for line, block in _blocks(tokens):
                html = MARKDOWN.renderer.render(list(block), MARKDOWN.options, {})
                if _compiles(html):
                    continue
                lines = article.body.split("\n")  # not splitlines(): it splits at \x0b and \x1c too
                source_line = lines[min(line, len(lines) - 1)]
                return Problem(
                    message=f"this paragraph breaks the MJML ({message}){_suspect(source_line)}",
                    file=article.file, line=_body_line(article) + line,
                    fix="delete or retype the odd character there (often pasted in from a word processor)")
    return None
