"""The article Markdown dialect: CommonMark + tables, raw HTML shown as text, emphasis that works in Korean.

Three things CommonMark gets wrong for Korean prose, fixed here for every consumer of the tokens:
- raw HTML is off: `<K-City Network>` is text, never markup (markup belongs in the theme);
- emphasis follows the CJK-friendly amendment of the flanking rules (tats-u's "markdown-cjk-friendly"
  specification), so `**「K-City Network」**의` and `**'스마트시티 챌린지'**는` are bold;
- the HTML renderer gives every long unbroken run (a URL, 60 Hangul without a space, a code line) <wbr>
  break opportunities and gives tables a class and column widths, so no article can widen the email.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml, isMdAsciiPunct, isPunctChar, isWhiteSpace
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.rules_inline import StateInline
from markdown_it.rules_inline.state_inline import Delimiter
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from wcwidth import wcswidth

# Hangul blocks: Jamo, compatibility Jamo, Jamo extended A/B, syllables, halfwidth forms.
_HANGUL = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF), (0xFFA0, 0xFFDC))
# Wide characters that are emoji by default (pictographs, symbols): not CJK for the emphasis rule.
_EMOJI = ((0x1F000, 0x1FAFF), (0x2600, 0x27BF), (0x2B00, 0x2BFF), (0x231A, 0x23FF))


def _in(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= code <= high for low, high in ranges)


def is_cjk(ch: str) -> bool:
    """East Asian Wide, Fullwidth or Halfwidth and not an emoji, or Hangul (the amendment's "CJK character")."""
    code = ord(ch)
    if _in(code, _HANGUL):
        return True
    return unicodedata.east_asian_width(ch) in ("W", "F", "H") and not _in(code, _EMOJI)


def _punct(ch: str) -> bool:
    return isMdAsciiPunct(ord(ch)) or isPunctChar(ch)


def _non_cjk_punct(ch: str) -> bool:
    return _punct(ch) and not is_cjk(ch)


def _ivs(ch: str) -> bool:
    return 0xE0100 <= ord(ch) <= 0xE01EF


def _before(src: str, start: int) -> str:
    """The character before a delimiter run, skipping a general-use variation selector (U+FE00-FE0E)."""
    at = start - 1
    if at > 0 and 0xFE00 <= ord(src[at]) <= 0xFE0E:
        at -= 1
    return src[at] if at >= 0 else " "


def flanking(src: str, start: int, end: int, limit: int) -> tuple[bool, bool]:
    """(left-flanking, right-flanking) of the delimiter run src[start:end] under the CJK-friendly rules."""
    last = _before(src, start)
    nxt = src[end] if end < limit else " "
    last_space, next_space = isWhiteSpace(ord(last)), isWhiteSpace(ord(nxt))
    left = not next_space and (
        not _non_cjk_punct(nxt) or last_space or _non_cjk_punct(last) or is_cjk(last) or _ivs(last))
    right = not last_space and (
        not _non_cjk_punct(last) or next_space or _non_cjk_punct(nxt) or is_cjk(nxt))
    return left, right


def emphasis(state: StateInline, silent: bool) -> bool:
    """markdown-it's emphasis tokenizer with the CJK-friendly flanking rules; its post-processing is kept."""
    start, marker = state.pos, state.src[state.pos]
    if silent or marker not in ("_", "*"):
        return False
    end = start
    while end < state.posMax and state.src[end] == marker:
        end += 1
    left, right = flanking(state.src, start, end, state.posMax)
    if marker == "*":
        can_open, can_close = left, right
    else:  # `_` may not split a word: it opens or closes inside one only next to punctuation
        last = _before(state.src, start)
        nxt = state.src[end] if end < state.posMax else " "
        can_open = left and (not right or _punct(last))
        can_close = right and (not left or _punct(nxt))
    for _ in range(end - start):
        token = state.push("text", "", 0)
        token.content = marker
        state.delimiters.append(Delimiter(marker=ord(marker), length=end - start, token=len(state.tokens) - 1,
                                          end=-1, open=can_open, close=can_close))
    state.pos = end
    return True


# A run this long without a space gets break opportunities; URLs break after / and before ? & = # . -
LONG_RUN = 20
_RUN = re.compile(r"\S{" + str(LONG_RUN) + ",}")
_URL_BREAK = re.compile(r"(?<=[/])(?=[^/])|(?=[?&=#.\-_~%])")
_CHUNK = 10  # characters between forced opportunities inside a run that has none of its own


def _opportunities(run: str) -> list[str]:
    pieces = [p for p in _URL_BREAK.split(run) if p] if re.search(r"[/.?&=#]", run) else [run]
    out: list[str] = []
    for piece in pieces:
        out += [piece[i:i + _CHUNK] for i in range(0, len(piece), _CHUNK)]
    return out


def breakable(text: str) -> str:
    """Escaped HTML of text with <wbr> inside every run of LONG_RUN+ non-space characters."""
    out: list[str] = []
    last = 0
    for match in _RUN.finditer(text):
        out.append(escapeHtml(text[last:match.start()]))
        out.append("<wbr>".join(escapeHtml(p) for p in _opportunities(match.group())))
        last = match.end()
    out.append(escapeHtml(text[last:]))
    return "".join(out)


def column_weights(tokens: Sequence[Token], table_open: int) -> list[float]:
    """How much of the table each column gets: mostly its longest word (a word never breaks if it fits),
    a little its widest cell. In display columns (a Hangul syllable is two), capped so no column starves."""
    longest: list[int] = []
    widest: list[int] = []
    column = 0
    for token in tokens[table_open + 1:]:
        if token.type == "table_close":
            break
        if token.type == "tr_open":
            column = 0
        elif token.type == "inline":
            if column == len(longest):
                longest.append(1)
                widest.append(1)
            words = token.content.split() or [""]
            longest[column] = max(longest[column], *(max(wcswidth(w), 0) for w in words))
            widest[column] = max(widest[column], max(wcswidth(token.content), 0))
            column += 1
    return [min(word, 10) + 1 + min(cell, 40) / 10 for word, cell in zip(longest, widest, strict=True)]


def table_columns(state: StateCore) -> None:
    """Core rule: tables get class nl-table and header cells a width in percent (fixed table layout)."""
    tokens = state.tokens
    for index, token in enumerate(tokens):
        if token.type != "table_open":
            continue
        token.attrSet("class", "nl-table")
        widths = column_weights(tokens, index)
        total = sum(widths) or 1
        column = 0
        for cell in tokens[index + 1:]:
            if cell.type in ("thead_close", "table_close"):
                break
            if cell.type == "th_open":
                percent = round(100 * widths[column] / total) if column < len(widths) else 0
                style = str(cell.attrGet("style") or "")
                cell.attrSet("style", f"{style};width:{percent}%".lstrip(";"))
                column += 1


def _text(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    return breakable(tokens[idx].content)


def _code_inline(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict,
                 env: EnvType) -> str:
    return f"<code>{breakable(tokens[idx].content)}</code>"


def _code_block(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict,
                env: EnvType) -> str:
    return f"<pre><code>{breakable(tokens[idx].content)}</code></pre>\n"


def make_markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"typographer": False, "html": False}).enable("table")
    md.inline.ruler.at("emphasis", emphasis)
    md.core.ruler.push("nl_table_columns", table_columns)
    for name, rule in (("text", _text), ("code_inline", _code_inline), ("code_block", _code_block),
                       ("fence", _code_block)):
        md.add_render_rule(name, rule)
    return md
