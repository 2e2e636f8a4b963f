"""`newsletter status`: counts per list, times, build hash, the in-doubt recipients and the way forward."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sendkit import ISSUE, KEY, cli, environ
from tests.standin import StandIn


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(api_key=KEY, retry_after=0) as sg:
        yield sg


def test_nothing_sent_yet(site: Path) -> None:
    done = cli(site, "status", ISSUE, env=environ(None))
    assert done.returncode == 0 and "not sent to any list yet" in done.stdout
    data = json.loads(cli(site, "status", ISSUE, "--json", env=environ(None)).stdout)
    assert data == {"issue": "001-hello", "lists": {}, "outbox": {}}


def test_counts_times_hash_and_in_doubt(site: Path, standin: StandIn) -> None:
    env = environ(standin.url)
    standin.script(["drop_after"])  # the first request (ada, grace) goes out, its answer is lost
    sent = cli(site, "send", ISSUE, "--list", "sample", "--yes", env=env)
    assert sent.returncode == 5 and "2 recipient(s) are in doubt" in sent.stderr
    data = json.loads(cli(site, "status", ISSUE, "--json", env=env).stdout)
    entry = data["lists"]["sample"]
    assert {k: entry[k] for k in ("accepted", "pending", "in_doubt", "failed")} == {
        "accepted": 1, "pending": 0, "in_doubt": 2, "failed": 0}
    assert entry["first_sent_at"] and entry["last_sent_at"] and len(entry["content_hash"]) == 64
    assert entry["in_doubt_recipients"] == ["ada@example.org", "grace@example.org"]
    text = cli(site, "status", ISSUE, env=env).stdout
    assert "list sample: 1 accepted, 0 pending, 2 in doubt, 0 failed" in text
    assert "ada@example.org" in text and "--resend-in-doubt" in text
    again = cli(site, "send", ISSUE, "--list", "sample", "--yes", "--resend-in-doubt", env=env)
    assert again.returncode == 0, again.stderr
    entry = json.loads(cli(site, "status", ISSUE, "--json", env=env).stdout)["lists"]["sample"]
    assert (entry["accepted"], entry["in_doubt"], entry["in_doubt_recipients"]) == (3, 0, [])
    assert "finished" in cli(site, "status", ISSUE, env=env).stdout
