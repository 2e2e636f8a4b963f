"""Checks on the rendered Email: what a valid issue folder can still get wrong once templates have run."""

from __future__ import annotations

import dataclasses
from email.headerregistry import Address
from html.parser import HTMLParser
from pathlib import Path

from pipeline.build.images import image_problems
from pipeline.build.issue import ALLOWED_LINK, Issue, local_files, unpublishable
from pipeline.build.message import encoded_size
from pipeline.build.render import PLACEHOLDER_RE, UNSUBSCRIBE, Email, render_email
from pipeline.config import Config
from pipeline.errors import IssueError, Problem
from pipeline.lists.values import HTML_SUFFIX, html_value


class _Scan(HTMLParser):
    """Collects every <img> without alt text and every href of the final HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images_without_alt: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img" and not (found.get("alt") or "").strip():
            self.images_without_alt.append(found.get("src") or "?")
        if tag == "a" and found.get("href") is not None:
            self.links.append(found["href"] or "")


def sample_values(email: Email, config: Config) -> dict[str, str]:
    """Realistic per-recipient values, so the size check counts what a real subscriber receives."""
    plain = {"name": "Sample Subscriber", "unsubscribe_url": f"{config.base_url}/unsubscribe/{'x' * 120}"}
    values = {}
    for tag in email.placeholders | set(plain):
        field = tag.removesuffix(HTML_SUFFIX)
        value = plain.get(field, "x" * 20)
        values[tag] = html_value(value) if field != tag else value
    return values


def message_size(email: Email, config: Config) -> int:
    """Encoded bytes of the real MIME message with realistic per-recipient values."""
    return encoded_size(email, sender=Address(config.sender_name, addr_spec=config.sender_email),
                        sample_values=sample_values(email, config))


def check_email(issue: Issue, email: Email, config: Config, *, size: int | None = None) -> list[Problem]:
    """Every problem of a rendered email; `size` is message_size's answer when the caller has it."""
    theme = config.theme_dir
    problems: list[Problem] = []
    for part, name in ((email.html, "email.mjml.j2"), (email.text, "email.txt.j2")):
        if UNSUBSCRIBE not in part:
            problems.append(Problem(
                message=f"the template has no unsubscribe link ({{{{ unsubscribe_url }}}} renders {UNSUBSCRIBE})",
                file=theme / name, fix="add a visible link to {{ unsubscribe_url }} in the footer"))
    scan = _Scan()
    scan.feed(email.html)
    for src in scan.images_without_alt:
        problems.append(Problem(message=f"image {src} has no alt text in the HTML", file=theme / "email.mjml.j2",
                                fix="give every mj-image an alt attribute"))
    for href in scan.links:
        if not (ALLOWED_LINK.match(href) or PLACEHOLDER_RE.fullmatch(href)):
            problems.append(Problem(message=f"link {href!r} is not an http(s) or mailto link",
                                    file=theme / "email.mjml.j2", fix="use full https:// URLs or mailto: links"))
    problems += image_warnings(issue)
    problems += image_problems(issue, config)
    kb = (message_size(email, config) if size is None else size) / 1000
    if kb > config.size_budget_kb:
        problems.append(Problem(
            message=f"the encoded message is {kb:.1f} KB, over the {config.size_budget_kb:g} KB budget "
            "(Gmail clips messages above about 100 KB)", file=issue.folder / "issue.yaml",
            fix="shorten the issue, move long articles to the web version, or raise size_budget_kb"))
    elif kb > config.size_warning_kb:
        problems.append(Problem(
            message=f"the encoded message is {kb:.1f} KB, above the {config.size_warning_kb:g} KB warning "
            f"(budget {config.size_budget_kb:g} KB)", file=issue.folder / "issue.yaml", blocking=False,
            fix="shorten the issue before it gets clipped by Gmail"))
    return problems


def image_warnings(issue: Issue) -> list[Problem]:
    """Article images the archive will not publish (symlinks, files outside the folder): they would show
    as broken images in the web version and in the mail, which loads its images from there."""
    problems = []
    for section in issue.sections:
        for article in section.articles:
            for rel in local_files(article):
                reason = unpublishable(issue.folder, rel)
                if reason:
                    problems.append(Problem(
                        message=f"image {rel} {reason}, so it is not published and shows as a broken image",
                        file=article.file, blocking=False,
                        fix="copy the image itself into the issue folder (e.g. images/) and point to that copy"))
    return problems


def check_issue(folder: Path, config: Config) -> list[Problem]:
    """Every problem of the folder, its templates and every edition's rendered email, and every theme string
    that would stay in English in an edition's language; raises nothing for bad input."""
    from pipeline.build.editions import load_editions
    from pipeline.build.i18n import missing_messages

    problems: list[Problem] = []
    try:
        editions = load_editions(folder, config)
        for issue in editions.all:
            email = render_email(issue, config)
            found = check_email(issue, email, config)
            if len(editions.all) > 1:  # say which edition, as the same template serves them all
                found = [dataclasses.replace(p, message=f"[{issue.language}] {p.message}") for p in found]
            problems += found
    except IssueError as exc:
        return list(exc.problems) or [Problem(message=str(exc))]
    for language in dict.fromkeys(e.language for e in editions.all):
        problems += missing_messages(config.theme_dir, language)
    return problems
