"""The web archive: an index (newest first), each edition's web version, its images, and an Atom feed per language.

One set of functions produces every page as text, so `newsletter serve` and `newsletter archive --out`
publish byte-identical archives. Inside the archive all links are relative (an issue page links its
images as `images/x.png` and the index as `../`), so it works under any path prefix or static host;
only the feeds and the hreflang links use absolute URLs built from base_url, as their readers need them.
An issue's main edition is at `<slug>/`, each other edition at `<slug>/<lang>/`; images are shared.
The pages are the theme's templates (pipeline.web.pages), in the newsletter's language or the edition's.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import posixpath
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from markupsafe import Markup

from pipeline.build.editions import EDITION_FILE, Editions, load_editions
from pipeline.build.i18n import language_name
from pipeline.build.issue import Issue, local_files, unpublishable
from pipeline.build.message import substitute
from pipeline.build.render import UNSUBSCRIBE, render_email
from pipeline.config import Config
from pipeline.errors import PipelineError, Problem
from pipeline.web.pages import render_page

# Rendered with this instead of base_url, then replaced by relative links (never a real host: .invalid).
_SENTINEL = "https://archive-base.invalid"
_SENTINEL_URL = re.compile(re.escape(_SENTINEL) + r"/archive/([^\"'\s<>]*)")
WRITTEN_LIST = ".archive-files"  # in the --out folder: what the last write put there
ATOM = "http://www.w3.org/2005/Atom"
XML = "http://www.w3.org/XML/1998/namespace"
_HEAD = re.compile(r"<head>(.*)</head>", re.S)
_BODY = re.compile(r"<body([^>]*)>(.*)</body>", re.S)
_STYLE = re.compile(r'\sstyle="([^"]*)"')


@dataclass(frozen=True)
class Page:
    body: bytes
    media_type: str


def discover_editions(config: Config, *,
                     slugs: Collection[str] | None = None) -> tuple[list[Editions], list[Problem]]:
    """Every valid issue folder (only those in `slugs` when given), newest first; broken ones as problems."""
    found: list[Editions] = []
    problems: list[Problem] = []
    folders = sorted(p for p in config.issues_dir.iterdir() if p.is_dir()) if config.issues_dir.is_dir() else []
    for folder in folders:
        if slugs is not None and folder.name not in slugs:
            continue
        if not (folder / "issue.yaml").is_file():
            continue
        try:
            found.append(load_editions(folder, config))
        except PipelineError as exc:
            problems.append(Problem(message=f"issue {folder.name} left out of the archive: {exc.args[0]}",
                                    file=folder, blocking=False, fix=f"run `newsletter check {folder}`"))
    found.sort(key=lambda e: (e.default.date, e.default.number, e.default.slug), reverse=True)
    return found, problems


def discover(config: Config, *, slugs: Collection[str] | None = None) -> tuple[list[Issue], list[Problem]]:
    """discover_editions, each issue as its default edition."""
    found, problems = discover_editions(config, slugs=slugs)
    return [e.default for e in found], problems


def all_files(editions: Editions) -> dict[str, Path]:
    """The images of every edition (they share the issue folder), by archive-relative path."""
    return {rel: path for edition in editions.all for rel, path in issue_files(edition).items()}


def issue_files(issue: Issue) -> dict[str, Path]:
    """The edition's own images, by archive-relative path. Nothing else in the folder is ever published."""
    wanted = [image.path.as_posix() for image in issue.images]
    wanted += [rel for section in issue.sections for article in section.articles for rel in local_files(article)]
    root = issue.folder.resolve()
    files: dict[str, Path] = {}
    for rel in wanted:
        path = (root / rel).resolve()
        if (unpublishable(root, rel) is None and path.is_file()
                and not EDITION_FILE.match(path.relative_to(root).as_posix())):
            files[path.relative_to(root).as_posix()] = path
    return files


def page_path(issue: Issue) -> str:
    """An edition's archive-relative folder: `027/` for the main edition, `027/ko/` for another."""
    return f"{issue.slug}/{issue.edition_path}"


def issue_page(issue: Issue, config: Config) -> str:
    """The issue's web version: the e-mail rendered with `web` (the templates leave out what only makes sense in
    a mailbox), per-recipient tags emptied, archive links relative to the page, put into the theme's
    pages/issue.html.j2 with hreflang links to the issue's other editions."""
    email = render_email(issue, config, asset_base=_SENTINEL, web=True)
    here = page_path(issue)
    text = email.html.replace(UNSUBSCRIBE, f"{_SENTINEL}/archive/unsubscribe/")  # a theme that ignores `web`
    text = substitute(text, {})
    text = _SENTINEL_URL.sub(lambda m: _relative(m.group(1), here), text)
    text = text.replace(_SENTINEL, config.base_url.rstrip("/"))
    head, body = _HEAD.search(text), _BODY.search(text)
    style = _STYLE.search(body.group(1)) if body else None
    base = config.base_url.rstrip("/") + f"/archive/{issue.slug}/"
    alternates = [{"language": lang, "url": base + path} for lang, path in issue.editions]
    if issue.editions:
        alternates.append({"language": "x-default", "url": base + dict(issue.editions).get(config.language, "")})
    editions = [{"language": lang, "name": language_name(lang), "url": _relative(f"{issue.slug}/{path}", here)}
                for lang, path in issue.editions if lang != issue.language]
    return render_page(config, "issue.html.j2", language=issue.language, archive_url=_relative("", here),
                       issue=issue, alternates=alternates, editions=editions,
                       body_style=style.group(1) if style else "",
                       email_head=Markup(head.group(1) if head else ""),
                       email_body=Markup(body.group(2) if body else text))


def _relative(target: str, here: str) -> str:
    """The link from the page at archive path `here` (a folder) to archive path `target`."""
    if target == here:
        return "./"
    folder, _, rest = target.partition("?")
    link = posixpath.relpath(folder or ".", here or ".")
    if folder.endswith("/") or not folder:
        link += "/"
    return link + (f"?{rest}" if rest else "")


def feed_name(language: str, config: Config) -> str:
    """feed.xml in the newsletter's language, feed.<lang>.xml in each other one."""
    return "feed.xml" if language == config.language else f"feed.{language}.xml"


def feed_languages(found: Iterable[Editions], config: Config) -> list[str]:
    """The newsletter's language first, then every other language an edition is written in."""
    languages = {config.language: None}
    for editions in found:
        languages.update(dict.fromkeys(editions.languages))
    return list(languages)


def index_page(found: Iterable[Editions], config: Config) -> str:
    """Each issue once, in its default edition, with links to its other editions (pages/index.html.j2)."""
    found = list(found)
    entries = [{"issue": editions.default, "url": page_path(editions.default),
                "editions": [{"language": e.language, "name": language_name(e.language), "url": page_path(e)}
                             for e in editions.all if e is not editions.default]} for editions in found]
    feeds = [{"language": lang, "name": language_name(lang), "url": feed_name(lang, config)}
             for lang in feed_languages(found, config)]
    return render_page(config, "index.html.j2", archive_url="./", entries=entries, feeds=feeds)


def unsubscribe_page(config: Config) -> str:
    """Where the web version's unsubscribe link leads in a theme that keeps it: the archive never knows who
    is reading."""
    return render_page(config, "message.html.j2", archive_url="../", kind="public_unsubscribe")


def not_found_page(config: Config, path: str) -> str:
    """The archive's 404 page; its link to the index is relative to the folder of the path asked for."""
    folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    return render_page(config, "message.html.j2", archive_url=_relative("", folder), kind="not_found")


def _stamp(day: dt.date) -> str:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


def feed(found: list[Editions], config: Config, language: str | None = None) -> str:
    """Atom 1.0 in one language, built with ElementTree so it is always well-formed.

    The newsletter's language gets every issue (in its default edition); another language gets the
    editions written in it. The feed and each entry carry their language in xml:lang."""
    language = language or config.language
    base = config.base_url.rstrip("/") + "/archive/"
    ET.register_namespace("", ATOM)
    lang_attr = f"{{{XML}}}lang"
    if language == config.language:
        issues = [e.default for e in found]
    else:
        issues = [e for editions in found if (e := editions.get(language)) is not None]

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
        element.text = text
        return element

    root = ET.Element(f"{{{ATOM}}}feed", {lang_attr: language})
    sub(root, "title", config.name)
    sub(root, "id", base if language == config.language else f"{base}{feed_name(language, config)}")
    sub(root, "link", href=base)
    sub(root, "link", rel="self", href=base + feed_name(language, config))
    sub(root, "updated", _stamp(issues[0].date) if issues else _stamp(dt.date(2000, 1, 1)))
    sub(sub(root, "author"), "name", config.sender_name or config.name)
    for issue in issues:
        entry = sub(root, "entry", **{lang_attr: issue.language})
        sub(entry, "title", issue.subject)
        sub(entry, "id", f"{base}{page_path(issue)}")
        sub(entry, "link", href=f"{base}{page_path(issue)}", hreflang=issue.language)
        sub(entry, "updated", _stamp(issue.date))
        headlines = [a.title for s in issue.sections for a in s.articles]
        summary = issue.preheader or "; ".join(headlines)
        sub(entry, "summary", summary)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


class Archive:
    """The archive of one newsletter, as pages by archive-relative path (`""`, `feed.xml`, `027/`, ...).

    `published` says which issue folders are public (the store decides: `Store.sent_issues`). Rendering
    an edition takes tens of milliseconds, so pages are cached until a file of the issue or theme changes.
    """

    def __init__(self, config: Config, *, published: Callable[[], Collection[str] | None] = lambda: None) -> None:
        self.config = config
        self.published = published
        self._cache: dict[str, tuple[tuple[int, ...], str]] = {}
        self._found: tuple[object, tuple[list[Editions], list[Problem]]] | None = None

    def editions(self) -> tuple[list[Editions], list[Problem]]:
        """discover_editions(), again only when the selection or a file under issues/ changed."""
        slugs = self.published()
        root = self.config.issues_dir
        files = sorted(root.rglob("*")) if root.is_dir() else []
        key = (None if slugs is None else frozenset(slugs), self.config.config_file.stat().st_mtime_ns,
               tuple((f.as_posix(), f.stat().st_mtime_ns) for f in files))
        if self._found is None or self._found[0] != key:
            self._found = (key, discover_editions(self.config, slugs=slugs))
        return self._found[1]

    def issues(self) -> tuple[list[Issue], list[Problem]]:
        """The published issues, each in its default edition."""
        found, problems = self.editions()
        return [e.default for e in found], problems

    def _fingerprint(self, issue: Issue) -> tuple[int, ...]:
        files = [self.config.config_file, *self.config.theme_dir.rglob("*"), *issue.folder.rglob("*")]
        return tuple(sorted(f.stat().st_mtime_ns for f in files if f.is_file()))

    def issue_html(self, issue: Issue) -> str:
        stamp = self._fingerprint(issue)
        key = page_path(issue)
        cached = self._cache.get(key)
        if cached is None or cached[0] != stamp:
            cached = (stamp, issue_page(issue, self.config))
            self._cache[key] = cached
        return cached[1]

    def _feeds(self, found: list[Editions]) -> dict[str, str]:
        return {feed_name(lang, self.config): lang for lang in feed_languages(found, self.config)}

    def get(self, path: str) -> Page | None:
        """The page or image at an archive-relative path, or None: unknown paths, unpublished issues."""
        found, _ = self.editions()
        if path == "":
            return Page(index_page(found, self.config).encode(), "text/html; charset=utf-8")
        feeds = self._feeds(found)
        if path in feeds:
            return Page(feed(found, self.config, feeds[path]).encode(), "application/atom+xml; charset=utf-8")
        if path == "unsubscribe/":
            return Page(unsubscribe_page(self.config).encode(), "text/html; charset=utf-8")
        slug, slash, rest = path.partition("/")
        editions = next((e for e in found if e.default.slug == slug), None)
        if editions is None or not slash:  # `027` is not the page: its relative image links need `027/`
            return None
        edition = next((e for e in editions.all if e.edition_path == rest), None)
        if edition is not None:
            return Page(self.issue_html(edition).encode(), "text/html; charset=utf-8")
        source = all_files(editions).get(rest)
        if source is None:
            return None
        return Page(source.read_bytes(), mimetypes.guess_type(source.name)[0] or "application/octet-stream")

    def write(self, out: Path) -> tuple[list[Path], list[Problem]]:
        """Write the whole archive as static files under `out` (which is published as /archive/).

        Every page is rendered before the first file is written. Files an earlier write put there and this
        one does not (an issue no longer published, an image no longer used) are removed; other files in
        `out` are left alone."""
        found, problems = self.editions()
        pages = {"index.html": index_page(found, self.config), "unsubscribe/index.html": unsubscribe_page(self.config)}
        pages.update({name: feed(found, self.config, lang) for name, lang in self._feeds(found).items()})
        copies: dict[str, Path] = {}
        for editions in found:
            for edition in editions.all:
                pages[f"{page_path(edition)}index.html"] = self.issue_html(edition)
            copies.update({f"{editions.default.slug}/{rel}": source for rel, source in all_files(editions).items()})
        for rel in [*pages, *copies]:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
        for rel, text in pages.items():
            (out / rel).write_text(text, "utf-8")
        for rel, source in copies.items():
            shutil.copyfile(source, out / rel)
        prune(out, {*pages, *copies})
        return [out / rel for rel in [*pages, *copies]], problems


def prune(out: Path, current: set[str]) -> None:
    """Remove what the previous write listed and this one did not write, then list this write's files."""
    listing = out / WRITTEN_LIST
    previous = listing.read_text("utf-8").splitlines() if listing.is_file() else []
    for rel in sorted(set(previous) - current):
        target = out / rel
        if ".." in Path(rel).parts or not target.is_file():
            continue
        target.unlink()
        for folder in target.parents:
            if folder == out or any(folder.iterdir()):
                break
            folder.rmdir()
    listing.write_text("".join(f"{rel}\n" for rel in sorted(current)), "utf-8")
