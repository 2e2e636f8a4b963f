"""An article body as plain text for the text part, laid out in display columns (a Hangul syllable is two).

Paragraphs wrap at 72 columns without ever breaking a word or a URL; lists keep their nesting, bullets and
numbers; block quotes keep `> `; each link is written once (`label <url>`, or just the URL of an autolink);
tables become aligned columns, or one `header: value` line per cell when they would not fit in 72 columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from markdown_it.token import Token
from wcwidth import wcswidth

WIDTH = 72


def width(text: str) -> int:
    """Display columns of text: 2 for Hangul and other wide characters (control characters count as 1)."""
    columns = wcswidth(text)
    return columns if columns >= 0 else sum(max(wcswidth(ch), 1) for ch in text)


def wrap(text: str, columns: int) -> list[str]:
    """Greedy wrap at spaces by display width; a word wider than the line (a URL) stays whole on its own."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            if line and width(line) + 1 + width(word) > columns:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return lines


def inline_text(token: Token) -> str:
    """The text of an inline token: emphasis dropped, links written once, images as [alt]."""
    out: list[str] = []
    href, label_start = "", 0
    for child in token.children or ():
        if child.type in ("text", "code_inline"):
            out.append(child.content)
        elif child.type == "softbreak":
            out.append(" ")
        elif child.type == "hardbreak":
            out.append("\n")
        elif child.type == "image":
            out.append(f"[{child.content}]")
        elif child.type == "link_open":
            href, label_start = str(child.attrGet("href") or ""), len(out)
        elif child.type == "link_close":
            label = "".join(out[label_start:]).strip()
            if href.removeprefix("mailto:") not in label:  # an autolink, or a label holding its URL
                out.append(f" <{href}>")
    return "".join(out)


@dataclass
class _Container:
    kind: str  # "quote" or "item"
    marker: str = ""
    used: bool = False  # an item's marker goes on its first line only


@dataclass
class _Block:
    lines: list[str]
    tight: bool  # in a tight list: no blank line before it
    quote: str = ""  # the quote prefix a blank line before it needs


@dataclass
class _Walk:
    stack: list[_Container] = field(default_factory=list)
    tight: list[bool] = field(default_factory=list)
    blocks: list[_Block] = field(default_factory=list)
    fresh: bool = False  # the next block starts an outermost list: a blank line before it

    def prefixes(self) -> tuple[str, str]:
        """(first line prefix, following lines prefix) for a block at the current nesting."""
        first = rest = ""
        for container in self.stack:
            if container.kind == "quote":
                first, rest = first + "> ", rest + "> "
            else:
                first += " " * len(container.marker) if container.used else container.marker
                rest += " " * len(container.marker)
                container.used = True
        return first, rest

    def emit(self, lines: list[str], *, wrap_text: bool = True) -> None:
        first, rest = self.prefixes()
        if wrap_text:
            lines = [line for text in lines for line in wrap(text, max(20, WIDTH - width(rest)))]
        laid = [(first if i == 0 else rest) + line for i, line in enumerate(lines)]
        quote = "".join("> " for c in self.stack if c.kind == "quote").rstrip()
        tight = bool(self.tight and self.tight[-1]) and not self.fresh
        self.blocks.append(_Block([line.rstrip() for line in laid], tight=tight, quote=quote))
        self.fresh = False


def table_lines(rows: list[list[str]], right: list[bool], columns: int) -> list[str]:
    """Aligned columns under a rule, or `header: value` lines per row when wider than `columns`."""
    header, body = rows[0], rows[1:]
    widths = [max(width(row[i]) for row in rows if i < len(row)) for i in range(len(header))]
    if sum(widths) + 2 * (len(widths) - 1) <= columns:
        def line(cells: list[str]) -> str:
            padded = []
            for i, cell in enumerate(cells):
                pad = " " * (widths[i] - width(cell))
                padded.append(pad + cell if right[i] else cell + pad)
            return "  ".join(padded).rstrip()
        return [line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in body]
    out: list[str] = []
    for number, row in enumerate(body):
        if number:
            out.append("")
        for name, cell in zip(header, row, strict=False):
            out += wrap(f"{name}: {cell}", columns)
    return out


def markdown_text(tokens: Sequence[Token]) -> str:
    """The text part of one article body, from the same tokens the HTML is rendered from."""
    walk = _Walk()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        kind = token.type
        if kind == "blockquote_open":
            walk.stack.append(_Container("quote"))
        elif kind == "blockquote_close" or kind == "list_item_close":
            walk.stack.pop()
        elif kind in ("bullet_list_open", "ordered_list_open"):
            walk.fresh = walk.fresh or not walk.tight
            walk.tight.append(False)
        elif kind in ("bullet_list_close", "ordered_list_close"):
            walk.tight.pop()
        elif kind == "list_item_open":
            marker = "- " if token.markup in ("-", "*", "+") else f"{token.info}{token.markup} "
            walk.stack.append(_Container("item", marker))
        elif kind == "paragraph_open" and walk.tight:
            walk.tight[-1] = token.hidden
        elif kind == "inline":
            walk.emit([inline_text(token)])
        elif kind in ("fence", "code_block"):
            walk.emit(["    " + line for line in token.content.rstrip("\n").split("\n")], wrap_text=False)
        elif kind == "hr":
            walk.emit(["* * *"], wrap_text=False)
        elif kind == "table_open":
            rows: list[list[str]] = []
            right: list[bool] = []
            while tokens[index].type != "table_close":
                cell = tokens[index]
                if cell.type == "tr_open":
                    rows.append([])
                elif cell.type == "th_open":
                    right.append("right" in str(cell.attrGet("style") or ""))
                elif cell.type == "inline":
                    rows[-1].append(" ".join(inline_text(cell).split()))
                index += 1
            _, rest = walk.prefixes()
            walk.emit(table_lines(rows, right, WIDTH - width(rest)), wrap_text=False)
        index += 1
    out: list[str] = []
    previous = ""
    for number, block in enumerate(walk.blocks):
        if number and not block.tight:  # a blank line, inside the quote when both blocks are quoted
            out.append(block.quote if previous.startswith(block.quote) else "")
        out += block.lines
        previous = block.quote
    return "\n".join(out).strip("\n")
