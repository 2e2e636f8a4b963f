"""What a subscriber value may hold, and what it becomes in each part of a mail.

Names and merge fields come from lists and imports: nobody vouches for them. One rule decides which rows
are bad, and both `subscribers check` and `send` apply it (through `ListReader`), so the two always agree:

- no control characters (C0, DEL, C1, line and paragraph separators, bidi overrides and isolates): they
  could break or forge the Subject and To headers, or disguise what a header shows. A name's whitespace
  (tabs, line breaks) is folded to single spaces first, as before; a merge field's is not.
- the row fits SendGrid's 10,000 bytes of substitutions, counted as if the issue used every column in
  both parts (plain and HTML-escaped) with the longest issue folder name: so the verdict does not depend
  on the issue, and a row that passes `check` is never refused by `send`.

The HTML part gets its own tags (`%%name:html%%`) whose values are HTML-escaped; the text part and the
subject get the plain value (`%%name%%`). See `pipeline.build.render.html_tags`.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections.abc import Iterable, Mapping

MAX_SUBSTITUTION_BYTES = 10_000
HTML_SUFFIX = ":html"
MAX_FOLDER_BYTES = 255  # an issue is a folder: no file system takes a longer name
#: Characters no value may hold: C0 and C1 controls, DEL, U+2028/2029 (line breaks to some parsers) and
#: the bidi embeddings, overrides and isolates (they reorder what a subject or a name shows).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MAX_TAG = 35  # a language tag's length; RFC 5646 suggests 35 characters suffice
_TAG_OVERHEAD = 4 + 6  # the two %% of a tag, the JSON quotes, colon and comma around key and value


def html_value(value: str) -> str:
    """The value for an HTML tag: markup characters escaped (quotes too, for attributes)."""
    return html.escape(value, quote=True)


def unsafe_char(text: str) -> str:
    """'' if `text` is safe; else the first forbidden character, named (never the whole value)."""
    found = UNSAFE.search(text)
    if found is None:
        return ""
    char = found.group()
    return f"U+{ord(char):04X} {unicodedata.name(char, 'control character')}"


def substitution_bytes(values: Mapping[str, str]) -> int:
    """SendGrid's measure, approximated from above: tag and value bytes plus JSON punctuation."""
    return sum(len(k) + _TAG_OVERHEAD + len(v.encode("utf-8")) for k, v in values.items())


def url_bytes_max(email: str, *, base_url: str, list_name: str, issue: str | None = None) -> int:
    """An upper bound of the %%unsubscribe_url%% substitution: its token grows with the address, list and
    issue (each JSON-escaped, at most 6 bytes a character, then base64). No issue: the longest folder name."""
    issue_chars = len(issue) if issue is not None else MAX_FOLDER_BYTES
    payload = 6 * (len(email) + len(list_name) + issue_chars) + 10
    return len(base_url) + len("/unsubscribe/") + (payload * 4) // 3 + 4 + 23 + len("unsubscribe_url") + _TAG_OVERHEAD


class RowRule:
    """The bad-row rule for one list: `problem(email, name, fields)` is '' or why the row is bad."""

    def __init__(self, *, base_url: str, list_name: str, columns: Iterable[str]) -> None:
        self.base_url, self.list_name = base_url, list_name
        keys = ["name", *columns]
        # Per column: a plain and an HTML tag (the key written twice, one with the suffix).
        self._overhead = sum(2 * (len(k) + _TAG_OVERHEAD) + len(HTML_SUFFIX) for k in keys)
        # url_bytes_max without the address's part (8 bytes a character: 6 JSON-escaped, then base64), +1 each
        self._fixed = self._overhead + url_bytes_max("", base_url=base_url, list_name=list_name) + 2

    def problem(self, email: str, name: str, fields: Mapping[str, str]) -> str:
        """Called for every row of every list read: the common row costs an isprintable() and some sums
        (printable text holds no Cc, Cf, Zl or Zp character, so none that UNSAFE matches)."""
        if not name.isprintable() or (fields and not "".join(fields.values()).isprintable()):
            if bad := unsafe_char(name):
                return f"the name holds a control character ({bad})"
            for column, value in fields.items():
                if bad := unsafe_char(value):
                    return f"column {column!r} holds a control character ({bad})"
        chars = len(name) + (sum(map(len, fields.values())) if fields else 0)
        # Fast path: a character is at most 4 bytes plain and 6 escaped (&quot;), so 10 bytes in all.
        if chars * 10 + 8 * len(email) + self._fixed <= MAX_SUBSTITUTION_BYTES:
            return ""
        size = self.size(email, name, fields)
        if size > MAX_SUBSTITUTION_BYTES:
            return (f"the name and merge fields of this row come to about {size} bytes as SendGrid counts them "
                    f"(each value twice: as text and HTML-escaped, plus the unsubscribe link), over its "
                    f"{MAX_SUBSTITUTION_BYTES} bytes of substitutions per recipient")
        return ""

    def size(self, email: str, name: str, fields: Mapping[str, str]) -> int:
        """An upper bound of the row's substitution bytes, whichever tags an issue uses."""
        values = (name, *fields.values())
        return (self._overhead + url_bytes_max(email, base_url=self.base_url, list_name=self.list_name)
                + sum(len(v.encode("utf-8")) + len(html_value(v).encode("utf-8")) for v in values))


def language_tag_ok(tag: str) -> bool:
    """Whether a list's `language` cell is a language tag Babel knows (`ko`, `en`, `ko-KR`, `en_US`): the
    rule by which pipeline.build.editions.pick_language takes a tag, so a warned-about tag is one that
    gets the default edition. '' is fine (no preference)."""
    if not tag:
        return True
    if len(tag) > MAX_TAG:
        return False
    from babel import Locale, UnknownLocaleError

    try:
        Locale.parse(tag.strip().replace("_", "-"), sep="-")
    except (ValueError, UnknownLocaleError):
        return False
    return True


def outbox_file_name(address: str) -> str:
    """The file of a reader's mail in an outbox folder (`send --outbox DIR`): `<address>.eml`, the address as it
    is where that is a safe file name, else cleaned and made unique by a short hash. Erasing a reader finds
    it by this name."""
    name = address.lower()
    clean = re.sub(r"[^a-z0-9@._+-]", "_", name)[:120]
    if clean == name and not name.startswith("."):
        return f"{clean}.eml"
    return f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:8]}.eml"
