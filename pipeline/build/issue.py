"""Issue folder -> Issue: read issue.yaml and the Markdown articles, validate all, report every problem."""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markdown_it.token import Token

from pipeline.build.cjkmarkdown import make_markdown
from pipeline.config import Config
from pipeline.errors import IssueError, Problem, raise_if_blocking
from pipeline.schema import parse_yaml, read_yaml

ISSUE_FILE = "issue.yaml"
ALLOWED_LINK = re.compile(r"^(https?://[^\s]+|mailto:[^\s@]+@[^\s@]+)$")
_FRONT_MATTER = re.compile(r"\A---\r?\n(.*?)^---\r?\n", re.S | re.M)


@dataclass(frozen=True, kw_only=True)
class Image:
    path: Path  # relative to the issue folder, e.g. images/chart.png
    alt: str


@dataclass(frozen=True, kw_only=True)
class Article:
    file: Path
    title: str
    subtitle: str = ""
    date: dt.date | None = None
    source: str = ""
    link: str = ""
    image: Image | None = None
    body: str  # Markdown source; the renderer turns it into HTML and text


@dataclass(frozen=True, kw_only=True)
class LiteratureEntry:
    title: str
    subtitle: str = ""
    authors: str = ""
    details: str = ""
    link: str = ""


@dataclass(frozen=True, kw_only=True)
class Section:
    title: str
    kicker: str = ""
    numbered: bool = False
    articles: tuple[Article, ...] = ()
    literature: tuple[LiteratureEntry, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Issue:
    folder: Path
    number: int
    date: dt.date
    subject: str
    preheader: str
    language: str
    masthead: str
    sections: tuple[Section, ...]
    edition_path: str = ""  # where this edition is published under the issue's URL: "" or "ko/"
    editions: tuple[tuple[str, str], ...] = ()  # (language, edition_path) of every edition, this one included

    @property
    def slug(self) -> str:
        """The folder name: the build folder, the archive URL and the send log key."""
        return self.folder.name

    @property
    def images(self) -> tuple[Image, ...]:
        return tuple(a.image for s in self.sections for a in s.articles if a.image is not None)

    @property
    def links(self) -> tuple[str, ...]:
        found = [a.link for s in self.sections for a in s.articles if a.link]
        found += [e.link for s in self.sections for e in s.literature if e.link]
        for s in self.sections:
            for a in s.articles:
                found += markdown_links(a.body)
        return tuple(found)


MARKDOWN = make_markdown()  # CommonMark + tables, raw HTML as text, CJK-friendly emphasis


@functools.lru_cache(maxsize=512)
def parse_markdown(text: str) -> tuple[Token, ...]:
    """Parsed once per body: the checks, the HTML and the text part all read the same tokens."""
    return tuple(MARKDOWN.parse(text))


def markdown_links(text: str) -> list[str]:
    links: list[str] = []
    for token in parse_markdown(text):
        for child in token.children or ():
            if child.type == "link_open":
                links.append(str(child.attrGet("href") or ""))
            elif child.type == "image":
                links.append(str(child.attrGet("src") or ""))
    return links


def local_files(article: Article) -> list[str]:
    """The article's own files, as written: its `image:` and the local images its body links."""
    found = [article.image.path.as_posix()] if article.image else []
    return found + [link for link in markdown_links(article.body) if not link.startswith(("http", "mailto:"))]


def unpublishable(folder: Path, rel: str) -> str | None:
    """Why the archive will not publish the file `rel` of an issue folder, or None if it will.

    Only regular files inside the folder are copied, never a symlink (nor a path through one): what it
    points at may be anything on the machine.
    """
    root = folder.resolve()
    current = root
    for part in Path(rel).parts:
        current = current / part
        if current.is_symlink():
            return "is a symlink"
    if not (root / rel).resolve().is_relative_to(root):
        return "lies outside the issue folder"
    return None


def _date(value: str, file: Path, field: str, problems: list[Problem]) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        problems.append(Problem(message=f"{field} {value!r} is not a real date", file=file,
                                fix="write the date as YYYY-MM-DD, e.g. 2022-04-01"))
        return None


def _link_problem(link: str, file: Path, where: str) -> Problem | None:
    if ALLOWED_LINK.match(link):
        return None
    return Problem(message=f"{where}: link {link!r} is not an http(s) or mailto link", file=file,
                   fix="use a full https:// URL or mailto:address")


def _load_article(folder: Path, articles: str, name: str, listed_in: Path,
                  problems: list[Problem]) -> Article | None:
    file = folder / articles / name
    try:
        text = file.read_text("utf-8")
    except FileNotFoundError:
        problems.append(Problem(message=f"article {articles}/{name} does not exist", file=listed_in,
                                fix=f"create {articles}/{name} or remove it from the sections list"))
        return None
    except UnicodeDecodeError as exc:
        problems.append(Problem(message=f"not valid UTF-8 (byte {exc.start})", file=file,
                                fix="save the file as UTF-8"))
        return None
    except OSError as exc:  # a folder where the article should be, no permission
        problems.append(Problem(message=f"article {articles}/{name} is not a file that can be read ({exc.strerror})",
                                file=file, fix=f"make {articles}/{name} a readable Markdown file"))
        return None
    match = _FRONT_MATTER.match(text)
    if not match:
        problems.append(Problem(message="no front matter", file=file, line=1,
                                fix="start the file with a --- block holding at least `title:`"))
        return None
    meta, found = parse_yaml(match.group(1), file=file, schema="article", line_offset=1)
    problems += found
    if not isinstance(meta, dict):
        return None
    image = None
    if isinstance(meta.get("image"), str):
        if not (folder / meta["image"]).is_file():
            problems.append(Problem(message=f"image {meta['image']} does not exist", file=file,
                                    fix="add the file to the issue folder or correct the path"))
        alt = meta.get("image_alt")
        if not isinstance(alt, str) or not alt.strip():  # a wrong type is also the schema's problem
            problems.append(Problem(message=f"image {meta['image']} has no image_alt", file=file,
                                    fix="describe the image in image_alt for screen readers and blocked images"))
        image = Image(path=Path(meta["image"]), alt=alt if isinstance(alt, str) else "")
    body = text[match.end():].strip()
    _check_links(folder, file, [meta["link"]] if isinstance(meta.get("link"), str) else [], body, problems)
    if found:
        return None
    return Article(
        file=file,
        title=meta["title"],
        subtitle=meta.get("subtitle", ""),
        date=_date(meta["date"], file, "date", problems) if "date" in meta else None,
        source=meta.get("source", ""),
        link=meta.get("link", ""),
        image=image,
        body=body,
    )


def _check_links(folder: Path, file: Path, front: list[str], body: str, problems: list[Problem]) -> None:
    for link in front:
        if problem := _link_problem(link, file, "link"):
            problems.append(problem)
    for link in markdown_links(body):
        if not link.startswith(("http", "mailto:")) and (folder / link).is_file():
            continue  # a local image referenced from the body
        if problem := _link_problem(link, file, "body"):
            problems.append(problem)


def read_sections(folder: Path, file: Path, data: dict[str, Any], *, articles: str,
                  problems: list[Problem]) -> tuple[Section, ...]:
    """The sections of one edition file (issue.yaml or issue.<lang>.yaml); articles come from `articles`."""
    sections = []
    for raw in data["sections"]:
        found = [_load_article(folder, articles, name, file, problems) for name in raw.get("articles", [])]
        literature = [LiteratureEntry(**entry) for entry in raw.get("literature", [])]
        for entry in literature:
            if entry.link and (p := _link_problem(entry.link, file, f"literature {entry.title!r}")):
                problems.append(p)
        if not found and not literature:
            problems.append(Problem(message=f"section {raw['title']!r} has no articles and no literature",
                                    file=file, fix="add `articles:` or `literature:` to it, or remove it"))
        sections.append(Section(title=raw["title"], kicker=raw.get("kicker", ""),
                                numbered=raw.get("numbered", False),
                                articles=tuple(a for a in found if a is not None),
                                literature=tuple(literature)))
    return tuple(sections)


def read_main(folder: Path) -> tuple[dict[str, Any], dt.date | None, list[Problem]]:
    """issue.yaml, validated: the number and date every edition shares, and the main edition."""
    if not folder.is_dir():
        raise IssueError(f"{folder} is not a folder — pass the path of an issue folder, e.g. issues/027")
    file = folder / ISSUE_FILE
    data, problems = read_yaml(file, schema="issue")
    raise_if_blocking(problems, IssueError, f"issue {folder.name} is not valid:")
    assert isinstance(data, dict)
    return data, _date(data["date"], file, "date", problems), problems


def load_issue(folder: Path, config: Config) -> Issue:
    """The issue's default edition (see pipeline.build.editions): the one in the newsletter's language, else
    the one in issue.yaml. Everything is read and validated first; one error lists every problem."""
    from pipeline.build.editions import load_editions  # editions builds on this module

    return load_editions(folder, config).default
