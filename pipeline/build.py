"""Issue folder -> build/<slug>/: everything is read, rendered and checked before one atomic write.

The output is deterministic (no timestamps), so the same folder builds to the same bytes and the
manifest's content hash identifies exactly what a send will deliver.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from email.headerregistry import Address
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.checks import check_email, sample_values
from pipeline.config import Config
from pipeline.errors import IssueError, Problem, raise_if_blocking
from pipeline.issue import Issue, load_issue
from pipeline.message import encoded_size
from pipeline.render import Email, render_email

PACKAGES = ("newsletter-pipeline", "mjml-python", "premailer", "jinja2", "markdown-it-py")


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    out: Path
    email: Email
    manifest: dict[str, Any]
    problems: tuple[Problem, ...]  # warnings only: blocking problems raise


def tree_hash(folder: Path) -> str:
    """Hash of every file's relative path and bytes: tells whether a theme or issue folder changed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def manifest(issue: Issue, email: Email, config: Config) -> dict[str, Any]:
    sender = Address(config.sender_name, addr_spec=config.sender_email)
    return {
        "issue": issue.slug,
        "number": issue.number,
        "date": issue.date.isoformat(),
        "subject": email.subject,
        "preheader": email.preheader,
        "language": email.language,
        "content_hash": email.content_hash,
        "placeholders": sorted(email.placeholders),
        "sizes": {
            "html_bytes": len(email.html.encode()),
            "text_bytes": len(email.text.encode()),
            "mjml_bytes": len(email.mjml.encode()),
            "encoded_message_bytes": encoded_size(email, sender=sender,
                                                  sample_values=sample_values(email, config)),
        },
        "template": {"theme": config.theme, "hash": tree_hash(config.theme_dir)},
        "source_hash": tree_hash(issue.folder),
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _write_atomically(out: Path, files: dict[str, str]) -> None:
    """Write into a temporary sibling folder, then swap it in: a reader never sees half a build."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, "utf-8", newline="")
        old = out.parent / f".{out.name}.old"
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def render_checked(issue: Issue, config: Config, *, failed_mjml: Path | None = None,
                   asset_base: str | None = None) -> tuple[Email, list[Problem]]:
    """Render and check; raise IssueError with every blocking problem, return the warnings."""
    email = render_email(issue, config, failed_mjml=failed_mjml, asset_base=asset_base)
    problems = check_email(issue, email, config)
    raise_if_blocking(problems, IssueError, f"issue {issue.slug} cannot be built:")
    return email, problems


def build_issue(folder: Path, config: Config, *, out: Path | None = None) -> BuildResult:
    folder = folder.resolve()
    out = (out or config.build_dir / folder.name).resolve()
    failed = out.parent / f"{out.name}.failed.mjml"
    failed.unlink(missing_ok=True)
    issue = load_issue(folder, config)
    email, problems = render_checked(issue, config, failed_mjml=failed)
    data = manifest(issue, email, config)
    _write_atomically(out, {
        "email.html": email.html,
        "email.txt": email.text,
        "email.mjml": email.mjml,
        "manifest.json": json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
    })
    return BuildResult(out=out, email=email, manifest=data, problems=tuple(problems))
