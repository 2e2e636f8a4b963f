"""One issue in several languages: issue.yaml holds the main edition, issue.<lang>.yaml each other one.

The number, the date and the images are shared. An edition's articles live in `articles/` (the main
edition) or `articles/<lang>/`; the same file name is the same article in another language, so an article
one edition lacks is an error unless that edition lists it under `leaves_out`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError, negotiate_locale

from pipeline.build.issue import ISSUE_FILE, Issue, read_main, read_sections
from pipeline.config import Config
from pipeline.errors import IssueError, Problem, raise_if_blocking
from pipeline.schema import read_yaml

EDITION_FILE = re.compile(r"^issue(?:\.(.+))?\.yaml$")  # issue.yaml, issue.ko.yaml
MAX_TAG = 35  # RFC 5646 suggests tags up to 35 characters suffice
# The shape of a BCP 47 tag (language, then subtags of letters and digits): Babel also reads POSIX locale names
# such as ko.UTF-8 or ko@euro, which would end up in <html lang>, Content-Language and archive paths.
TAG_SHAPE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")


@dataclass(frozen=True)
class Editions:
    """Every edition of one issue folder; `default` is the one for the newsletter's language."""

    all: tuple[Issue, ...]  # the main edition (issue.yaml) first
    default: Issue

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(e.language for e in self.all)

    def get(self, language: str) -> Issue | None:
        return next((e for e in self.all if e.language.lower() == language.lower()), None)

    def pick(self, tag: str | None) -> Issue:
        """The edition for a reader's BCP 47 tag (`ko`, `ko-KR`, `en_US`), else the default edition."""
        found = pick_language(tag, self.languages)
        return (self.get(found) if found else None) or self.default


def pick_language(tag: str | None, languages: tuple[str, ...]) -> str | None:
    """The language among `languages` that serves `tag`: Babel's negotiation (`ko-KR` gets `ko`), then the
    same language subtag (`ko` gets `ko-KR`); None when nothing fits or the tag is not a language tag."""
    if not tag or len(tag) > MAX_TAG:
        return None
    tag = tag.strip().replace("_", "-")
    if not TAG_SHAPE.fullmatch(tag):
        return None
    try:
        wanted = Locale.parse(tag, sep="-")
    except (ValueError, UnknownLocaleError):
        return None
    found = negotiate_locale([tag], list(languages), sep="-") or ""
    exact = next((lang for lang in languages if lang.lower() == found.lower()), None)
    return exact or next((lang for lang in languages if lang.split("-")[0].lower() == wanted.language), None)


def edition_files(folder: Path) -> list[tuple[str, Path]]:
    """(language, file) of every issue.<lang>.yaml, sorted by language."""
    found = []
    for path in sorted(folder.glob("issue.*.yaml")):
        match = EDITION_FILE.match(path.name)
        if match and match.group(1) and path.is_file():
            found.append((match.group(1), path))
    return found


def _valid_tag(language: str, file: Path) -> Problem | None:
    try:
        if TAG_SHAPE.fullmatch(language) and len(language) <= MAX_TAG:
            Locale.parse(language, sep="-")
            return None
    except (ValueError, UnknownLocaleError):
        pass
    return Problem(message=f"{language!r} in the file name is not a language tag Babel knows", file=file,
                       fix="name the file issue.<language>.yaml with a BCP 47 tag, e.g. issue.ko.yaml")


def _missing_articles(found: list[tuple[str, Path, frozenset[str], set[str]]]) -> list[Problem]:
    """(language, file, leaves_out, article names) of each edition -> a problem per article one lacks."""
    problems = []
    everywhere = {name: language for language, _, _, names in reversed(found) for name in names}
    for language, file, leaves_out, names in found:
        folder = "articles" if file.name == ISSUE_FILE else f"articles/{language}"
        for name in sorted(leaves_out & names):
            problems.append(Problem(message=f"{name} is both in a section and under leaves_out", file=file,
                                    fix="remove it from one of the two"))
        for name in sorted(set(everywhere) - names - leaves_out):
            problems.append(Problem(
                message=f"article {name} of the {everywhere[name]!r} edition is missing from the {language!r} "
                "edition", file=file,
                fix=f"add it to a section of {file.name} (translated, as {folder}/{name}), or list it under "
                "leaves_out"))
    return problems


def load_editions(folder: Path, config: Config) -> Editions:
    """Read and validate every edition; raise once with every problem of every edition."""
    folder = folder.resolve()
    data, date, problems = read_main(folder)
    main_language = str(data.get("language", config.language))
    raw: list[tuple[str, Path, dict[str, Any]]] = [(main_language, folder / ISSUE_FILE, data)]
    for language, file in edition_files(folder):
        if problem := _valid_tag(language, file):
            problems.append(problem)
            continue
        if language.lower() in (r[0].lower() for r in raw):
            problems.append(Problem(message=f"a second {language!r} edition", file=file,
                                    fix=f"issue.yaml is already in {main_language!r}: remove this file or "
                                    "change issue.yaml's language"))
            continue
        fields, read_problems = read_yaml(file, schema="edition")
        problems += read_problems
        if isinstance(fields, dict) and not read_problems:
            raw.append((language, file, fields))
    paths = {language: "" if i == 0 else f"{language}/" for i, (language, _, _) in enumerate(raw)}
    sections = {}
    for language, file, fields in raw:
        articles = "articles" if not paths[language] else f"articles/{language}"
        sections[language] = read_sections(folder, file, fields, articles=articles, problems=problems)
    problems += _missing_articles([
        (language, file, frozenset(fields.get("leaves_out", ())),
         {a.file.name for s in sections[language] for a in s.articles}) for language, file, fields in raw])
    raise_if_blocking(problems, IssueError, f"issue {folder.name} is not valid:")
    assert date is not None
    links = tuple(paths.items()) if len(paths) > 1 else ()
    editions = tuple(Issue(
        folder=folder, number=data["number"], date=date, language=language, subject=fields["subject"],
        preheader=fields.get("preheader", ""), masthead=fields.get("masthead", ""), sections=sections[language],
        edition_path=paths[language], editions=links) for language, _, fields in raw)
    chosen = pick_language(config.language, tuple(paths))
    default = next((e for e in editions if e.language == chosen), editions[0])
    return Editions(all=editions, default=default)
