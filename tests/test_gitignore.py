"""Personal data stays out of git: the repository's .gitignore and the one `newsletter init` writes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.scaffold import GITIGNORE

# What a newsletter folder holds that is personal data (lists; exports waiting to be imported, there or at the
# top as `subscribers import --help` shows; an import's temporary file left by a crash; the send log, outbox
# mails, builds): none of it may be committed.
PERSONAL = ("subscribers/members.csv", "subscribers/Members.CSV", "subscribers/old/members.csv",
            "subscribers/mailchimp-export.zip", "subscribers/substack-export.tsv",
            "subscribers/.members.csv.k2j3h4.tmp", ".newsletter/sendlog.sqlite3", "outbox/ada@example.org.eml",
            "build/001/email.html", "mailchimp-subscribed.csv", "substack-export.csv", "audience_export.zip")
TRACKED = ("subscribers/sample.csv", "subscribers/README.md", "newsletter.yaml", "issues/001/issue.yaml")


def _ignored(tmp_path: Path, rules: str, paths: tuple[str, ...]) -> set[str]:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text(rules, "utf-8")
    done = subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "--no-index", "--stdin"],
                          input="\n".join(paths) + "\n", capture_output=True, text=True, check=False)
    return set(done.stdout.split())


@pytest.mark.parametrize("which", ["repository", "init"])
def test_personal_data_is_ignored_and_the_sample_is_not(tmp_path: Path, which: str) -> None:
    rules = (REPO / ".gitignore").read_text("utf-8") if which == "repository" else GITIGNORE
    assert _ignored(tmp_path, rules, PERSONAL) == set(PERSONAL)
    assert _ignored(tmp_path, rules, TRACKED) == set()
