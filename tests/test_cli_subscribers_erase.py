"""`newsletter subscribers erase` as a user runs it, after a real send to the stand-in, on both engines: the
address gone from the send log (the SQLite file's bytes, every PostgreSQL table) and the list, the send's counts
kept, and the reader never mailed or stored again."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.store import Store
from pipeline.web.webhook import process_events
from tests.sendkit import ISSUE, cli, environ
from tests.standin import StandIn
from tests.storekit import select, site_store

ADA = "ada@example.org"
TABLES = ("sends", "batches", "deliveries", "suppressions", "events", "delivery_status", "webhook_rejects", "erased",
          "readmitted")


def _status(site: Path, env: dict[str, str]) -> dict[str, Any]:
    done = cli(site, "status", ISSUE, "--json", env=env)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)["lists"]["sample"]
    return found


def _unsubscribe(store: Store, send_id: int, at: int) -> dict[str, Any]:
    return {"email": "Ada@Example.org", "event": "unsubscribe", "timestamp": at, "nl_send_id": str(send_id),
            "nl_issue": "001-hello", "nl_list": "sample", "ip": "203.0.113.7"}


def _held_by_store(site: Path, env: dict[str, str]) -> bool:
    """Whether the send log holds the address anywhere: the SQLite file's bytes (database and WAL), or any row
    of any PostgreSQL table."""
    if "NEWSLETTER_DATABASE_URL" not in env:
        files = [p for p in (site / ".newsletter").iterdir() if p.name.startswith("sendlog.sqlite3")]
        assert files
        return any(ADA.encode() in p.read_bytes().lower() for p in files)
    store = site_store(site, env)
    try:
        for table in TABLES:
            for row in select(store, f"SELECT * FROM {table}"):
                if any(ADA in (bytes(v).decode("utf-8", "replace") if isinstance(v, bytes | memoryview)
                               else str(v)).lower() for v in row):
                    return True
        return False
    finally:
        store.close()


def test_erase_after_a_real_send(site: Path, env: dict[str, str], standin: StandIn) -> None:
    sent = cli(site, "send", ISSUE, "--list", "sample", "--yes", env=env)
    assert sent.returncode == 0, sent.stderr
    assert standin.recipients()[ADA] == 1
    store = site_store(site, env)
    send = store.find_send(issue="001-hello", list_name="sample", transport="sendgrid")
    assert send is not None
    opened = {"email": ADA, "event": "open", "timestamp": 1_700_000_000, "nl_send_id": str(send.id),
              "nl_issue": "001-hello", "nl_list": "sample"}
    assert process_events(store, [opened, _unsubscribe(store, send.id, 1_700_000_100)]).suppressed == [
        "Ada@Example.org"]
    store.close()
    before = _status(site, env)
    listed = site / "subscribers" / "sample.csv"
    original = listed.read_bytes()

    refused = cli(site, "subscribers", "erase", "ADA@example.org", env=env)  # no terminal, no --yes
    assert refused.returncode == 2 and "add --yes" in refused.stderr and "nothing was erased" in refused.stderr
    assert "1 delivery in 1 send (001-hello to sample), 2 events, 1 suppression" in refused.stdout
    assert f"{listed}:2" in refused.stdout
    assert listed.read_bytes() == original and _held_by_store(site, env)

    done = cli(site, "subscribers", "erase", "ADA@example.org", "--yes", "--json", env=env)
    assert done.returncode == 0, done.stderr
    (erased,) = json.loads(done.stdout)["erased"]
    assert (erased["address"], erased["deliveries"], erased["events"], erased["suppressions"]) == (
        "ADA@example.org", 1, 2, 1)
    assert erased["sends"] == [{"issue": "001-hello", "list": "sample", "transport": "sendgrid"}]
    assert erased["list_rows"] == [{"file": str(listed), "line": 2, "tracked_by_git": False}]
    assert "SendGrid keeps its own copies" in done.stderr
    lines = original.splitlines(keepends=True)
    assert listed.read_bytes() == b"".join(lines[:1] + lines[2:])  # the other rows byte for byte
    assert not _held_by_store(site, env)
    assert _status(site, env) == before  # counts and status as they were

    # the reader back in the list: neither the resumed send nor a send to another list mails it
    listed.write_bytes(original)
    (site / "subscribers" / "again.csv").write_bytes(original.replace(b"Ada@", b"ADA@"))
    rerun = cli(site, "send", ISSUE, "--list", "sample", "--yes", env=env)
    assert rerun.returncode == 0, rerun.stderr
    other = cli(site, "send", ISSUE, "--list", "again", "--yes", env=env)
    assert other.returncode == 0, other.stderr
    assert "1 row(s) of readers erased on request skipped" in other.stdout + other.stderr
    assert standin.recipients()[ADA] == 1 and standin.recipients()["grace@example.org"] == 2
    assert not _held_by_store(site, env)

    # a late unsubscribe by webhook, and a suppression by hand, do not store the address again
    store = site_store(site, env)
    process_events(store, [_unsubscribe(store, send.id, 1_700_000_900)])
    assert [s.email for s in store.list_suppressions()] == []
    store.close()
    added = cli(site, "suppressions", "add", ADA, env=env)
    assert added.returncode == 0 and "erased on request" in added.stdout
    removed = cli(site, "suppressions", "remove", ADA, env=env)
    assert removed.returncode == 1 and "subscribers readmit" in removed.stderr
    assert not _held_by_store(site, env)


def test_a_readmitted_reader_is_mailed_by_sends_created_after_only(site: Path, env: dict[str, str],
                                                                    standin: StandIn) -> None:
    """A reader who asks to be mailed again after an erase: the sends created before (which may have mailed
    them) still skip the address, a new send mails it, and it can be suppressed again."""
    listed = site / "subscribers" / "sample.csv"
    original = listed.read_bytes()
    assert cli(site, "send", ISSUE, "--list", "sample", "--yes", env=env).returncode == 0
    assert cli(site, "subscribers", "erase", ADA, "--yes", env=env).returncode == 0

    never = cli(site, "subscribers", "readmit", "grace@example.org", ADA, "--yes", env=env)
    assert never.returncode == 1 and "grace@example.org: not erased" in never.stderr
    refused = cli(site, "subscribers", "readmit", ADA, env=env)  # no terminal, no --yes
    assert refused.returncode == 2 and "add --yes" in refused.stderr and "nothing was changed" in refused.stderr
    store = site_store(site, env)
    assert store.is_erased(ADA)  # neither changed anything
    store.close()
    done = cli(site, "subscribers", "readmit", "Ada@Example.org", "--yes", env=env)
    assert done.returncode == 0 and "readmitted Ada@example.org" in done.stdout, done.stderr

    listed.write_bytes(original)  # the reader signed up again
    (site / "subscribers" / "later.csv").write_bytes(original)
    rerun = cli(site, "send", ISSUE, "--list", "sample", "--yes", env=env)
    assert rerun.returncode == 0 and "1 row(s) of readers erased on request skipped" in rerun.stdout + rerun.stderr
    assert standin.recipients()[ADA] == 1
    new = cli(site, "send", ISSUE, "--list", "later", "--yes", env=env)
    assert new.returncode == 0, new.stderr
    assert standin.recipients()[ADA] == 2 and standin.recipients()["grace@example.org"] == 2
    added = cli(site, "suppressions", "add", ADA, env=env)
    assert added.returncode == 0 and f"suppressed {ADA}" in added.stdout


def test_an_invalid_address_erases_nothing(site: Path) -> None:
    original = (site / "subscribers" / "sample.csv").read_bytes()
    done = cli(site, "subscribers", "erase", "grace@example.org", "not-an-address", "--yes", env=environ(None))
    assert done.returncode == 2
    assert "'not-an-address' is not an email address" in done.stderr and "nothing was erased" in done.stderr
    assert (site / "subscribers" / "sample.csv").read_bytes() == original
    assert not (site / ".newsletter").exists()  # refused before the send log was opened


def test_readmit_of_an_invalid_address_changes_nothing(site: Path) -> None:
    done = cli(site, "subscribers", "readmit", "not-an-address", "--yes", env=environ(None))
    assert done.returncode == 2
    assert "'not-an-address' is not an email address" in done.stderr and "nothing was changed" in done.stderr
    assert not (site / ".newsletter").exists()  # refused before the send log was opened


def test_a_running_send_refuses_the_erase(site: Path, env: dict[str, str], standin: StandIn) -> None:
    assert cli(site, "send", ISSUE, "--list", "sample", "--yes", env=env).returncode == 0
    store = site_store(site, env)
    with store.lock(issue="001-hello", list_name="sample"):
        done = cli(site, "subscribers", "erase", ADA, "--yes", env=env)
    store.close()
    assert done.returncode == 5 and "another send of issue 001-hello to list sample is running" in done.stderr
    assert _held_by_store(site, env)
    assert b"ada@example.org" in (site / "subscribers" / "sample.csv").read_bytes()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_list_in_git_is_named(site: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=site, check=True, capture_output=True)

    git("init", "-q")
    git("add", "subscribers/sample.csv")
    extra = site / "subscribers" / "local.csv"
    extra.write_text("email\nada@example.org\n", encoding="utf-8")
    done = cli(site, "subscribers", "erase", ADA, "--yes", env=environ(None))
    assert done.returncode == 0, done.stderr
    assert f"{site / 'subscribers' / 'sample.csv'} is tracked by git" in done.stderr
    assert "local.csv is tracked" not in done.stderr and "git filter-repo" in done.stderr
    assert extra.read_text(encoding="utf-8") == "email\n"


def test_each_address_once_whatever_its_case(site: Path) -> None:
    done = cli(site, "subscribers", "erase", "Grace@example.org", "grace@EXAMPLE.org", "--yes", "--json",
               env=environ(None))
    assert done.returncode == 0, done.stderr
    (erased,) = json.loads(done.stdout)["erased"]
    assert erased["address"] == "Grace@example.org" and erased["list_rows"][0]["line"] == 3
    assert b"grace" not in (site / "subscribers" / "sample.csv").read_bytes().lower()


def test_erase_deletes_the_readers_mail_from_outbox_folders(site: Path) -> None:
    env = environ(None)
    sent = cli(site, "send", ISSUE, "--list", "sample", "--outbox", "outbox", "--yes", env=env)
    assert sent.returncode == 0, sent.stderr
    mails = sorted(p.name for p in (site / "outbox").iterdir())
    assert f"{ADA}.eml" in mails and len(mails) > 1
    (site / "kept").mkdir()
    shutil.copy(site / "outbox" / f"{ADA}.eml", site / "kept" / f"{ADA}.eml")

    done = cli(site, "subscribers", "erase", "Ada@Example.org", "--yes", env=env)  # outbox/ by default
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (site / "outbox").iterdir()) == [m for m in mails if m != f"{ADA}.eml"]
    assert (site / "kept" / f"{ADA}.eml").is_file()  # a folder not named is not searched

    done = cli(site, "subscribers", "erase", ADA, "--outbox", "kept", "--yes", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["erased"][0]["outbox_files"] == [str(Path("kept") / f"{ADA}.eml")]
    assert list((site / "kept").iterdir()) == []
