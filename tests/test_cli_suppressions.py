"""`newsletter suppressions sync|list|add|remove` as real processes; sync against the stand-in."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli
from standin import StandIn

KEY = "SG.cli-suppressions"


def test_sync_then_list(site: Path) -> None:
    with StandIn(api_key=KEY) as sg:
        sg.suppressions["bounces"] = [{"created": 1_700_000_000, "email": "gone@example.org", "reason": "550",
                                       "status": "5.1.1"}]
        sg.suppressions["unsubscribes"] = [{"created": 1_700_000_000, "email": "left@example.org"}]
        result = run_cli(site, "suppressions", "sync", env={"SENDGRID_API_KEY": KEY, "SENDGRID_API_HOST": sg.url})
    assert result.returncode == 0, result.stderr
    assert "bounces" in result.stdout and "1 new here" in result.stdout
    listed = run_cli(site, "suppressions", "list")
    rows = sorted(line.split("\t")[:3] for line in listed.stdout.splitlines())
    assert rows == [["gone@example.org", "bounced", "sendgrid bounces"],
                    ["left@example.org", "unsubscribed", "sendgrid unsubscribes"]]
    assert "2 suppressed address(es)" in listed.stderr
    only = run_cli(site, "suppressions", "list", "--reason", "bounced")
    assert only.stdout.startswith("gone@example.org\t") and len(only.stdout.splitlines()) == 1


def test_sync_without_a_key_or_with_a_refused_one(site: Path) -> None:
    result = run_cli(site, "suppressions", "sync", env={"SENDGRID_API_KEY": ""})
    assert result.returncode == 2 and "SENDGRID_API_KEY is not set" in result.stderr
    with StandIn(api_key=KEY) as sg:
        result = run_cli(site, "suppressions", "sync",
                         env={"SENDGRID_API_KEY": "SG.wrong", "SENDGRID_API_HOST": sg.url})
    assert result.returncode == 5 and "401" in result.stderr and "SG.wrong" not in result.stderr
    assert "Traceback" not in result.stderr


def test_add_and_remove(site: Path) -> None:
    assert run_cli(site, "suppressions", "add", "Ada@Example.org").stdout == "suppressed Ada@example.org\n"
    again = run_cli(site, "suppressions", "add", "ada@example.org", "--reason", "bounced")
    assert again.returncode == 0 and "already suppressed" in again.stdout
    assert run_cli(site, "suppressions", "list").stdout.startswith("Ada@example.org\tmanual\tcli\t")
    removed = run_cli(site, "suppressions", "remove", "ada@example.org")
    assert removed.returncode == 0 and "was manual" in removed.stdout
    missing = run_cli(site, "suppressions", "remove", "ada@example.org")
    assert missing.returncode == 1 and "is not suppressed" in missing.stderr
    bad = run_cli(site, "suppressions", "add", "not-an-address")
    assert bad.returncode == 2 and "not an email address" in bad.stderr


def test_list_json(site: Path) -> None:
    import json

    assert run_cli(site, "suppressions", "add", "Someone@Example.org", "--reason", "complained").returncode == 0
    done = run_cli(site, "suppressions", "list", "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert (row["email"], row["reason"], row["source"]) == ("Someone@example.org", "complained", "cli")
    assert isinstance(row["created_at"], str | int | float)
    assert json.loads(run_cli(site, "suppressions", "list", "--json", "--reason", "bounced").stdout) == []
    bad = run_cli(site, "suppressions", "add", "x@example.org", "--reason", "because")
    assert bad.returncode == 2 and "'manual'" in bad.stderr
