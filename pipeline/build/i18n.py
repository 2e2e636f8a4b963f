"""The theme's language: gettext catalogues (Babel) per language, and dates and numbers in that language.

A theme carries its strings in `<theme>/locale/<lang>/LC_MESSAGES/messages.po`; a new language is one more
catalogue. The `.po` is compiled to a `.mo` in memory when first needed (and again when it changes), so no
binary is committed. Messages are written in English (SOURCE_LANGUAGE), which therefore needs no catalogue.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import re
import threading
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import PoFileError, read_po
from babel.support import NullTranslations, Translations

from pipeline.errors import IssueError, Problem

SOURCE_LANGUAGE = "en"
DOMAIN = "messages"
PIPELINE_DIR = Path(__file__).parent.parent
# The Python modules with messages of the theme's catalogue: serve's plain-text answers (the pages are templates).
PAGE_MODULES = ("web/app.py",)
_lock = threading.Lock()
_compiled: dict[Path, tuple[int, Translations]] = {}


def catalogue_path(theme_dir: Path, language: str) -> Path:
    return theme_dir / "locale" / locale_name(language) / "LC_MESSAGES" / f"{DOMAIN}.po"


def locale_name(language: str) -> str:
    """`ko-KR` -> `ko_KR`, the folder name gettext uses; an unknown tag is returned as written."""
    try:
        return str(Locale.parse(language, sep="-"))
    except (ValueError, UnknownLocaleError):
        return language.replace("-", "_")


def _read_catalogue(path: Path) -> Catalog:
    """The catalogue; IssueError naming it when it cannot be read (not UTF-8, a folder, no permission)."""
    try:
        with path.open("rb") as fp:
            return read_po(fp, abort_invalid=True)  # else Babel logs "Problem on line N" without the file
    except PoFileError as exc:
        raise IssueError("the theme's catalogue cannot be read:", problems=[Problem(
            message=f"the catalogue is not valid .po syntax: {str(exc).rsplit(' on ', 1)[0]}", file=path,
            line=exc.lineno + 1,  # Babel counts lines from 0, and its message says so
            fix="fix that line (msgid and msgstr in double quotes), or make the file again with pybabel update "
                "(see README, Themes)")]) from None
    except (OSError, UnicodeDecodeError, LookupError) as exc:
        reason = "not valid UTF-8 (nor the charset its header names)" if isinstance(exc, UnicodeDecodeError) else (
            getattr(exc, "strerror", None) or str(exc))
        raise IssueError("the theme's catalogue cannot be read:", problems=[Problem(
            message=f"the catalogue cannot be read: {reason}", file=path,
            fix="save it as UTF-8 text, or make it again with pybabel init or update (see README, Themes)")]) from None


def _formats(msgid: str, msgstr: str) -> bool:
    """Whether a translation survives `%` formatting with the message's placeholders, as Jinja's i18n and the
    pages apply it to every message: a stray `%` or an unknown `%(name)s` would fail at render time."""
    names = dict.fromkeys(re.findall(r"%\((\w+)\)s", msgid), "")
    try:
        msgstr % names
    except (KeyError, ValueError, TypeError):
        return False
    return True


def _bad_translations(catalogue: Catalog) -> set[str]:
    return {m.id for m in catalogue if isinstance(m.id, str) and m.id and isinstance(m.string, str) and m.string
            and not _formats(m.id, m.string)}


def translations(theme_dir: Path, language: str) -> NullTranslations:
    """The theme's gettext translations for a BCP 47 tag (`ko`, `ko-KR`, `en`): its catalogue for the tag,
    else for the tag's language (`ko` for `ko-KR`); without one, the messages as written (English).

    Use it in web pages too: `_ = translations(config.theme_dir, lang).gettext`.
    """
    for path in dict.fromkeys((catalogue_path(theme_dir, language), catalogue_path(theme_dir, primary(language)))):
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            continue
        with _lock:
            cached = _compiled.get(path)
            if cached is None or cached[0] != stamp:
                buffer = io.BytesIO()
                catalogue = _read_catalogue(path)
                for msgid in _bad_translations(catalogue):  # shown in English instead; `check` reports it
                    catalogue.delete(msgid)
                write_mo(buffer, catalogue)
                buffer.seek(0)
                cached = (stamp, Translations(buffer, domain=DOMAIN))
                _compiled[path] = cached
        return cached[1]
    return NullTranslations()


def primary(language: str) -> str:
    """The language subtag: `ko` for `ko-KR`."""
    return language.split("-", 1)[0].lower()


@functools.cache
def _locale(language: str) -> Locale:
    try:
        return Locale.parse(language, sep="-")
    except (ValueError, UnknownLocaleError):
        return Locale.parse(SOURCE_LANGUAGE)


def format_day(value: dt.date | None, pattern: str, language: str) -> str:
    """A date in a CLDR pattern (`yyyy.MM.dd.`, `y년 M월 d일`) with the language's names for months and days."""
    if value is None:
        return ""
    from babel.dates import format_date

    return str(format_date(value, pattern, locale=_locale(language)))


def format_number(value: int | float, language: str) -> str:
    from babel.numbers import format_decimal

    return str(format_decimal(value, locale=_locale(language)))


def language_name(language: str) -> str:
    """The language's name in itself, for a link to that edition: `한국어`, `English`."""
    name = _locale(language).get_display_name(_locale(language))
    return str(name or language)


def _extract(folder: Path, method_map: list[tuple[str, str]]) -> dict[str, tuple[Path, int]]:
    """Every message used under `folder`, with the first file and line using it (Babel's extractors)."""
    from babel.messages.extract import extract_from_dir

    found: dict[str, tuple[Path, int]] = {}
    options = {"**.j2": {"trimmed": "true"}}
    for filename, line, message, _comments, _context in extract_from_dir(str(folder), method_map, options):
        msgid = message if isinstance(message, str) else message[0]
        found.setdefault(msgid, (folder / filename, line))
    return found


def used_messages(theme_dir: Path) -> dict[str, tuple[Path, int]]:
    """The messages the theme's templates and the pipeline's own pages show."""
    found = _extract(theme_dir, [("**.j2", "jinja2")])
    for name, where in _extract(PIPELINE_DIR, [(name, "python") for name in PAGE_MODULES]).items():
        found.setdefault(name, where)
    return found


def missing_messages(theme_dir: Path, language: str) -> list[Problem]:
    """Warnings for the messages that would show in English in an issue of this language."""
    if primary(language) == SOURCE_LANGUAGE:
        return []
    used = used_messages(theme_dir)
    if not used:
        return []
    paths = [catalogue_path(theme_dir, language), catalogue_path(theme_dir, primary(language))]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        return [Problem(message=f"the theme has no catalogue for {language!r}: its {len(used)} fixed strings "
                        "stay in English", file=paths[-1], blocking=False,
                        fix="add the catalogue (pybabel init, see README, Themes) and translate it")]
    try:
        catalogue = _read_catalogue(path)
    except IssueError as exc:
        return list(exc.problems)
    broken = _bad_translations(catalogue)
    problems = [Problem(message=f"the translation of {msgid!r} does not fit its placeholders (a stray % or an "
                        "unknown %(name)s), so it shows in English", file=path, blocking=False,
                        fix="write the placeholders exactly as in msgid, and a literal percent sign as %%")
                for msgid in sorted(broken)]
    for msgid, (where, line) in sorted(used.items(), key=lambda item: (str(item[1][0]), item[1][1])):
        message = catalogue.get(msgid)
        if message is None:
            reason = "is not in the catalogue"
        elif message.fuzzy:
            reason = "is marked fuzzy"
        elif not message.string or (isinstance(message.string, tuple) and not all(message.string)):
            reason = "is not translated"
        elif msgid in broken:
            continue
        else:
            continue
        problems.append(Problem(message=f"string {msgid!r} ({where.name}:{line}) {reason}, so it shows in "
                                "English", file=path, blocking=False,
                                fix="run pybabel update (see README, Themes) and translate it"))
    return problems
