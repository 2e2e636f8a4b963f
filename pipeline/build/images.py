"""Issue images: how wide the theme may show them, and what `check` says about their size and weight.

An image is never shown wider than half its pixel width (sharp on 2x phone screens): a 120 px badge stays
60 px wide instead of being stretched across the column. Sizes are read from the file header (imagesize),
never by decoding the picture.
"""

from __future__ import annotations

from pathlib import Path

import imagesize

from pipeline.build.issue import Image, Issue
from pipeline.config import Config
from pipeline.errors import Problem

DENSITY = 2  # device pixels per CSS pixel the image must still cover when shown
# The formats every mail client shows (Outlook for Windows shows neither WebP nor SVG), by their first bytes.
MAIL_FORMATS = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF"}


def pixel_width(file: Path) -> int | None:
    """Width in pixels from the header, or None for a format imagesize does not know."""
    try:
        width, _ = imagesize.get(str(file))
    except (OSError, ValueError):
        return None
    return int(width) if width > 0 else None


def _mail_format(file: Path) -> bool:
    with file.open("rb") as fp:
        head = fp.read(8)
    return any(head.startswith(magic) for magic in MAIL_FORMATS)


def shown_width(file: Path, column_px: int) -> int:
    """CSS pixels the theme should show the image at: the column, or less for a small image."""
    width = pixel_width(file)
    return column_px if width is None else max(1, min(column_px, width // DENSITY))


def image_problems(issue: Issue, config: Config) -> list[Problem]:
    """Warnings (never blocking): too small for the column, wider than twice the column, heavier than
    images.max_kb."""
    column, problems = config.image_column_px, []
    seen: set[Path] = set()
    for section in issue.sections:
        for article in section.articles:
            image: Image | None = article.image
            if image is None or image.path in seen:
                continue
            seen.add(image.path)
            file = issue.folder / image.path
            width = pixel_width(file)
            if file.is_file() and not _mail_format(file):
                problems.append(Problem(
                    message=f"image {image.path} is not a PNG, JPEG or GIF file (by its first bytes): some mail "
                    "clients would show a broken image", file=article.file, blocking=False,
                    fix="save it as PNG (drawings, charts) or JPEG (photos)"))
            elif width is not None and width < column:
                problems.append(Problem(
                    message=f"image {image.path} is {width} px wide: it is shown {width // DENSITY} px wide, "
                    f"less than half the {column} px column", file=article.file, blocking=False,
                    fix=f"use an image at least {DENSITY * column} px wide if it should fill the column"))
            elif width is not None and width > DENSITY * column:
                problems.append(Problem(
                    message=f"image {image.path} is {width} px wide, more than twice the {column} px column",
                    file=article.file, blocking=False,
                    fix=f"scale it down to {DENSITY * column} px wide: readers download every extra pixel"))
            kb = file.stat().st_size / 1000 if file.is_file() else 0
            if kb > config.image_max_kb:
                problems.append(Problem(
                    message=f"image {image.path} weighs {kb:.0f} KB, over images.max_kb ({config.image_max_kb:g})",
                    file=article.file, blocking=False,
                    fix="compress it (PNG: fewer colours; photos: JPEG at quality 80) or raise images.max_kb"))
    return problems
