"""Which characters of a page no installed font can draw: a screenshot would show them as empty boxes.

fontconfig already knows every installed font's coverage; one `fc-list` call lists it as hex ranges.
"""

from __future__ import annotations

import bisect
import functools
import shutil
import subprocess
import unicodedata

_INVISIBLE = ("Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Me")  # controls, joiners, spaces, combining marks


@functools.cache
def covered() -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(starts, ends) of the code point ranges some installed font covers; None without fontconfig."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return None
    try:
        listing = subprocess.run([fc_list, "--format", "%{charset}\n"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    ranges = []
    for part in listing.split():
        first, _, last = part.partition("-")
        try:
            ranges.append((int(first, 16), int(last or first, 16)))
        except ValueError:
            continue
    merged: list[list[int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return tuple(r[0] for r in merged), tuple(r[1] for r in merged)


def missing(text: str) -> list[str] | None:
    """The distinct visible characters of text that no installed font covers, in order; None if unknown."""
    ranges = covered()
    if ranges is None:
        return None
    starts, ends = ranges
    found: list[str] = []
    for ch in dict.fromkeys(text):
        if unicodedata.category(ch) in _INVISIBLE or 0xFE00 <= ord(ch) <= 0xFE0F:
            continue
        at = bisect.bisect_right(starts, ord(ch)) - 1
        if at < 0 or ord(ch) > ends[at]:
            found.append(ch)
    return found


def font_warning(text: str) -> str | None:
    """One warning line for `preview --screenshot`, or None when every character has a font."""
    absent = missing(text)
    if absent is None:
        return "warning: fontconfig (fc-list) not found: cannot tell whether every character has a font"
    if not absent:
        return None
    shown = ", ".join(f"{ch} (U+{ord(ch):04X})" for ch in absent[:10]) + (" …" if len(absent) > 10 else "")
    return (f"warning: no installed font has {len(absent)} character(s) of this issue, so the screenshots show "
            f"empty boxes for them: {shown} — install a font that covers them (Debian: fonts-noto-cjk for "
            "Korean, fonts-noto-color-emoji for emoji); subscribers' devices may have one")
