"""The web archive: an index (newest first), each issue's web version, its images, and an Atom feed.

One set of functions produces every page as text, so `newsletter serve` and `newsletter archive --out`
publish byte-identical archives. Inside the archive all links are relative (an issue page links its
images as `images/x.png` and the index as `../`), so it works under any path prefix or static host;
only the feed uses absolute URLs built from base_url, as feed readers need them.
"""

from __future__ import annotations

import datetime as dt
import html
import mimetypes
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config
from pipeline.errors import PipelineError, Problem
from pipeline.issue import Issue, load_issue, local_files, unpublishable
from pipeline.message import substitute
from pipeline.render import UNSUBSCRIBE, render_email

# Rendered with this instead of base_url, then replaced by relative links (never a real host: .invalid).
_SENTINEL = "https://archive-base.invalid"
NEUTRAL_UNSUBSCRIBE = "../unsubscribe/"
WRITTEN_LIST = ".archive-files"  # in the --out folder: what the last write put there
ATOM = "http://www.w3.org/2005/Atom"


@dataclass(frozen=True)
class Page:
    body: bytes
    media_type: str


def discover(config: Config, *, slugs: Collection[str] | None = None) -> tuple[list[Issue], list[Problem]]:
    """Every valid issue folder (only those in `slugs` when given), newest first; broken ones as problems."""
    issues: list[Issue] = []
    problems: list[Problem] = []
    folders = sorted(p for p in config.issues_dir.iterdir() if p.is_dir()) if config.issues_dir.is_dir() else []
    for folder in folders:
        if slugs is not None and folder.name not in slugs:
            continue
        if not (folder / "issue.yaml").is_file():
            continue
        try:
            issues.append(load_issue(folder, config))
        except PipelineError as exc:
            problems.append(Problem(message=f"issue {folder.name} left out of the archive: {exc.args[0]}",
                                    file=folder, blocking=False, fix=f"run `newsletter check {folder}`"))
    issues.sort(key=lambda i: (i.date, i.number, i.slug), reverse=True)
    return issues, problems


def issue_files(issue: Issue) -> dict[str, Path]:
    """The issue's own images, by archive-relative path. Nothing else in the folder is ever published."""
    wanted = [rel for section in issue.sections for article in section.articles for rel in local_files(article)]
    root = issue.folder.resolve()
    files: dict[str, Path] = {}
    for rel in wanted:
        path = (root / rel).resolve()
        if unpublishable(root, rel) is None and path.is_file() and path != root / "issue.yaml":
            files[path.relative_to(root).as_posix()] = path
    return files


def issue_page(issue: Issue, config: Config) -> str:
    """The email's HTML as a web page: per-recipient tags emptied, the unsubscribe link made neutral."""
    email = render_email(issue, config, asset_base=_SENTINEL)
    text = email.html.replace(UNSUBSCRIBE, NEUTRAL_UNSUBSCRIBE)
    text = substitute(text, {})
    text = text.replace(f'"{_SENTINEL}/archive/{issue.slug}/"', '"./"')
    text = text.replace(f"{_SENTINEL}/archive/{issue.slug}/", "").replace(f"{_SENTINEL}/archive/", "../")
    return text.replace(_SENTINEL, config.base_url.rstrip("/"))


def _html_page(title: str, body: str, *, lang: str, head: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="{html.escape(lang)}">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n{head}"
            "<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;"
            "line-height:1.5}li{margin:.5rem 0}time{color:#555;margin-right:.5rem}</style>\n"
            f"</head>\n<body>\n{body}\n</body>\n</html>\n")


def index_page(issues: Iterable[Issue], config: Config) -> str:
    items = "\n".join(
        f'<li><time datetime="{i.date.isoformat()}">{i.date.isoformat()}</time>'
        f'<a href="{html.escape(i.slug)}/">{html.escape(i.subject)}</a></li>' for i in issues)
    body = (f"<h1>{html.escape(config.name)}: archive</h1>\n"
            f'<p><a href="feed.xml">Atom feed</a></p>\n<ol class="issues" reversed>\n{items}\n</ol>')
    head = f'<link rel="alternate" type="application/atom+xml" title="{html.escape(config.name)}" href="feed.xml">\n'
    return _html_page(f"{config.name}: archive", body, lang=config.language, head=head)


def unsubscribe_page(config: Config) -> str:
    """Where the web version's unsubscribe link leads: the archive never knows who is reading."""
    contact = config.contact.get("email") or config.reply_to or config.sender_email
    body = (f"<h1>Unsubscribe from {html.escape(config.name)}</h1>\n"
            "<p>This is the public web version, so it cannot know who you are. To unsubscribe, use the "
            "<em>Unsubscribe</em> link at the bottom of the email you received, or write to "
            f'<a href="mailto:{html.escape(contact)}">{html.escape(contact)}</a>.</p>\n'
            '<p><a href="../">Back to the archive</a></p>')
    return _html_page(f"Unsubscribe from {config.name}", body, lang=config.language)


def _stamp(day: dt.date) -> str:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


def feed(issues: list[Issue], config: Config) -> str:
    """Atom 1.0, built with ElementTree so it is always well-formed."""
    base = config.base_url.rstrip("/") + "/archive/"
    ET.register_namespace("", ATOM)

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
        element.text = text
        return element

    root = ET.Element(f"{{{ATOM}}}feed")
    sub(root, "title", config.name)
    sub(root, "id", base)
    sub(root, "link", href=base)
    sub(root, "link", rel="self", href=base + "feed.xml")
    sub(root, "updated", _stamp(issues[0].date) if issues else _stamp(dt.date(2000, 1, 1)))
    sub(sub(root, "author"), "name", config.sender_name or config.name)
    for issue in issues:
        entry = sub(root, "entry")
        sub(entry, "title", issue.subject)
        sub(entry, "id", f"{base}{issue.slug}/")
        sub(entry, "link", href=f"{base}{issue.slug}/")
        sub(entry, "updated", _stamp(issue.date))
        headlines = [a.title for s in issue.sections for a in s.articles]
        summary = issue.preheader or "; ".join(headlines)
        sub(entry, "summary", summary)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


class Archive:
    """The archive of one newsletter, as pages by archive-relative path (`""`, `feed.xml`, `027/`, ...).

    `published` says which issue folders are public (the store decides: `Store.sent_issues`). Rendering
    an issue takes tens of milliseconds, so pages are cached until a file of the issue or theme changes.
    """

    def __init__(self, config: Config, *, published: Callable[[], Collection[str] | None] = lambda: None) -> None:
        self.config = config
        self.published = published
        self._cache: dict[str, tuple[tuple[int, ...], str]] = {}
        self._found: tuple[object, tuple[list[Issue], list[Problem]]] | None = None

    def issues(self) -> tuple[list[Issue], list[Problem]]:
        """discover(), again only when the selection or a file under issues/ changed."""
        slugs = self.published()
        root = self.config.issues_dir
        files = sorted(root.rglob("*")) if root.is_dir() else []
        key = (None if slugs is None else frozenset(slugs), self.config.config_file.stat().st_mtime_ns,
               tuple((f.as_posix(), f.stat().st_mtime_ns) for f in files))
        if self._found is None or self._found[0] != key:
            self._found = (key, discover(self.config, slugs=slugs))
        return self._found[1]

    def _fingerprint(self, issue: Issue) -> tuple[int, ...]:
        files = [self.config.config_file, *self.config.theme_dir.rglob("*"), *issue.folder.rglob("*")]
        return tuple(sorted(f.stat().st_mtime_ns for f in files if f.is_file()))

    def issue_html(self, issue: Issue) -> str:
        stamp = self._fingerprint(issue)
        cached = self._cache.get(issue.slug)
        if cached is None or cached[0] != stamp:
            cached = (stamp, issue_page(issue, self.config))
            self._cache[issue.slug] = cached
        return cached[1]

    def get(self, path: str) -> Page | None:
        """The page or image at an archive-relative path, or None: unknown paths, unpublished issues."""
        issues, _ = self.issues()
        if path == "":
            return Page(index_page(issues, self.config).encode(), "text/html; charset=utf-8")
        if path == "feed.xml":
            return Page(feed(issues, self.config).encode(), "application/atom+xml; charset=utf-8")
        if path == "unsubscribe/":
            return Page(unsubscribe_page(self.config).encode(), "text/html; charset=utf-8")
        slug, slash, rest = path.partition("/")
        issue = next((i for i in issues if i.slug == slug), None)
        if issue is None or not slash:  # `027` is not the page: its relative image links need `027/`
            return None
        if rest == "":
            return Page(self.issue_html(issue).encode(), "text/html; charset=utf-8")
        source = issue_files(issue).get(rest)
        if source is None:
            return None
        return Page(source.read_bytes(), mimetypes.guess_type(source.name)[0] or "application/octet-stream")

    def write(self, out: Path) -> tuple[list[Path], list[Problem]]:
        """Write the whole archive as static files under `out` (which is published as /archive/).

        Every page is rendered before the first file is written. Files an earlier write put there and this
        one does not (an issue no longer published, an image no longer used) are removed; other files in
        `out` are left alone."""
        issues, problems = self.issues()
        pages = {"index.html": index_page(issues, self.config), "feed.xml": feed(issues, self.config),
                 "unsubscribe/index.html": unsubscribe_page(self.config)}
        copies: dict[str, Path] = {}
        for issue in issues:
            pages[f"{issue.slug}/index.html"] = self.issue_html(issue)
            copies.update({f"{issue.slug}/{rel}": source for rel, source in issue_files(issue).items()})
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
