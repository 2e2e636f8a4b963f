"""`newsletter init` and `newsletter new`: a newsletter of one's own, and its next issue, from nothing.

`init` writes a folder on which check, build, preview and `send --outbox` work at once: the config, the
default theme (shipped inside the package as `pipeline/themes/default`, a link to the repository's
`templates/default` that the wheel stores as files), a first issue, a made-up sample list and a
`.gitignore` that keeps personal data out of git. Nothing is overwritten: every path is checked first.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import yaml

from pipeline.config import CONFIG_NAME, Config
from pipeline.errors import ConfigError, IssueError, Problem


def bundled_theme(link: Path) -> Path:
    """The default theme's folder from its link. A checkout made without symbolic links (Windows, or git's
    `core.symlinks` false) holds the link as a small file whose text is the target: followed by hand."""
    if link.is_file() and link.stat().st_size < 256:
        return (link.parent / link.read_text("utf-8").strip()).resolve()
    return link


BUNDLED_THEME = bundled_theme(Path(__file__).resolve().parent / "themes" / "default")

CONFIG = """\
# Newsletter-wide settings (README: Configuration). Secrets never go here:
# SENDGRID_API_KEY and NEWSLETTER_SECRET come from the environment.
name: {name}
sender:
  email: {sender}
  name: {name}
reply_to: {sender}
# Where `newsletter archive` is published; images and "view in browser" links point here.
base_url: https://news.example.org
theme: default
language: en
contact:
  email: {sender}
sending:
  categories: [newsletter]
"""

ISSUE = """\
number: {number}
date: {date}
subject: {subject}
preheader: What this issue is about, in a line the inbox shows after the subject
sections:
  - title: News
    articles: [{article}]
"""

WELCOME = """\
---
title: Welcome to {name}
date: {date}
link: https://example.org/
---
This is the first article. Edit it in `{path}`, then run `newsletter preview {issue}`
to see the email change as you save.

- one article per Markdown file in `articles/`, listed in `issue.yaml`
- pictures go in `images/` and into an article's `image:` field, with `image_alt`
"""

ARTICLE = """\
---
title: The first story of issue {number}
date: {date}
---
Write the story here, in Markdown. Full `https://` links only, such as [an example](https://example.org/).
"""

SAMPLE_LIST = """\
email,name
ada@example.org,Ada Lovelace
grace@example.org,Grace Hopper
jiwoo.kim@example.org,김지우
"""

GITIGNORE = """\
/build/
/outbox/
# The send log holds subscriber addresses.
/.newsletter/
# Real subscriber lists are personal data: only the made-up sample list is tracked.
/subscribers/*.csv
# ... and anything else put there: exports to import, subfolders, an import's temporary file
/subscribers/*
!/subscribers/sample.csv
!/subscribers/README.md
# Exports to import (Mailchimp's ZIP, its CSVs, Substack's CSV) put at the top of the folder
/*.csv
/*.zip
"""


def _slug(number: int, date: dt.date) -> str:
    return f"{number:03d}-{date.isoformat()}"


def _issue_files(number: int, date: dt.date, name: str, *, first: bool) -> dict[str, str]:
    slug = _slug(number, date)
    article = "welcome.md" if first else "first-story.md"
    subject = json.dumps(f"{name} No. {number}", ensure_ascii=False)  # a JSON string is a YAML string
    texts = {"issue.yaml": ISSUE.format(number=number, date=date, subject=subject, article=article)}
    if first:
        texts[f"articles/{article}"] = WELCOME.format(name=name, date=date, issue=f"issues/{slug}",
                                                      path=f"issues/{slug}/articles/{article}")
    else:
        texts[f"articles/{article}"] = ARTICLE.format(number=number, date=date)
    return {f"issues/{slug}/{rel}": text for rel, text in texts.items()}


def _write_new(root: Path, files: dict[str, str | bytes]) -> list[Path]:
    """Write every file, or none if any of them exists already."""
    taken = [rel for rel in files if (root / rel).exists()]
    if taken:
        raise ConfigError(f"{root} already has {', '.join(taken[:3])}" + (" …" if len(taken) > 3 else "")
                          + " — choose an empty or new folder; nothing was written")
    written = []
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, "utf-8")
        written.append(path)
    return written


def init_newsletter(root: Path, *, name: str | None = None, sender: str = "editor@example.org",
                    today: dt.date | None = None) -> list[Path]:
    """Create a newsletter in `root` (made if missing); returns the files written."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} is a file — give a folder to create the newsletter in")
    if not (BUNDLED_THEME / "email.mjml.j2").is_file():
        raise ConfigError(f"the default theme is missing from the installed package ({BUNDLED_THEME}) — "
                          "reinstall newsletter-pipeline")
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", sender):
        raise ConfigError(f"--sender {sender!r} is not an email address — give the From address, e.g. "
                          "--sender editor@example.org")
    name = name or root.resolve().name.replace("-", " ").replace("_", " ").strip().title() or "My Newsletter"
    quoted = json.dumps(name, ensure_ascii=False)
    files: dict[str, str | bytes] = {
        CONFIG_NAME: CONFIG.format(name=quoted, sender=sender),
        ".gitignore": GITIGNORE,
        "subscribers/sample.csv": SAMPLE_LIST,
    }
    for path in sorted(BUNDLED_THEME.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files[f"templates/default/{path.relative_to(BUNDLED_THEME).as_posix()}"] = path.read_bytes()
    files.update(_issue_files(1, today or dt.date.today(), name, first=True))
    return _write_new(root, files)


def _number_of(folder: Path) -> int:
    """The issue's number from issue.yaml, else from the folder name's leading digits, else 0."""
    try:
        data = yaml.safe_load((folder / "issue.yaml").read_text("utf-8"))
        if isinstance(data, dict) and isinstance(data.get("number"), int):
            return int(data["number"])
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        pass
    digits = re.match(r"\d+", folder.name)
    return int(digits.group()) if digits else 0


def new_issue(config: Config, *, today: dt.date | None = None) -> Path:
    """Create issues/<next number>-<today>/ with an issue.yaml and one article; returns the folder."""
    folders = [p for p in config.issues_dir.iterdir() if p.is_dir()] if config.issues_dir.is_dir() else []
    number = max((_number_of(p) for p in folders), default=0) + 1
    date = today or dt.date.today()
    folder = config.issues_dir / _slug(number, date)
    if folder.exists():
        raise IssueError(f"{folder} already exists", problems=[Problem(
            message="an issue folder of that name exists", file=folder, fix="edit it, or rename it and run new again")])
    _write_new(config.root, dict(_issue_files(number, date, config.name, first=False)))
    return folder
