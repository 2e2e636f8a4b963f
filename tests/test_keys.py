"""Keys are checked for shape before anything is recorded or sent, and never echoed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import keys
from pipeline.errors import ConfigError, SendError
from pipeline.web.webhook import public_key_from_env
from tests.sendkit import ISSUE, KEY, SECRET, cli, environ
from tests.standin import StandIn

BROKEN = ["SG.half-of-it\nSG.other-half", "SG.key with-space", "SG.key\x1bnul", " SG.leading-space",
          "SG.trailing-newline\n", "SG.kéy-not-ascii"]


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(api_key=KEY, retry_after=0) as sg:
        yield sg


@pytest.mark.parametrize("key", BROKEN)
def test_a_malformed_api_key_stops_before_anything_is_recorded(site: Path, standin: StandIn, key: str) -> None:
    env = environ(standin.url, SENDGRID_API_KEY=key)
    done = cli(site, "send", ISSUE, "--list", "sample", "--yes", env=env)
    assert done.returncode == 5 and "SENDGRID_API_KEY holds" in done.stderr and "Traceback" not in done.stderr
    debug = cli(site, "--debug", "send", ISSUE, "--list", "sample", "--yes", env=env)  # a traceback by design
    assert debug.returncode != 0 and "SENDGRID_API_KEY holds" in debug.stderr
    for part in key.split():
        assert part not in done.stdout + done.stderr + debug.stdout + debug.stderr
    assert standin.request_count == 0
    db = site / ".newsletter" / "sendlog.sqlite3"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM batches").fetchone() == (0,)


@pytest.mark.parametrize("secret", [SECRET + "\r\n", "two words make a long enough secret"])
def test_a_malformed_secret_is_refused_by_send_and_serve(site: Path, secret: str) -> None:
    done = cli(site, "send", ISSUE, "--list", "sample", "--yes", env=environ(None, NEWSLETTER_SECRET=secret))
    assert done.returncode == 5 and "NEWSLETTER_SECRET holds" in done.stderr
    served = cli(site, "serve", "--no-webhook", "--port", "9", env=environ(None, NEWSLETTER_SECRET=secret), timeout=30)
    assert served.returncode != 0 and "NEWSLETTER_SECRET holds" in served.stderr
    for output in (done.stderr, served.stderr):
        assert secret.strip() not in output and "Traceback" not in output


def test_the_checker_names_the_position_never_the_value() -> None:
    with pytest.raises(ConfigError) as caught:
        keys.checked("X", "abc\ndef", ConfigError)
    assert "a line break (character 4 of 7)" in str(caught.value) and "abc" not in str(caught.value)
    assert keys.checked("X", "SG.ok-key", ConfigError, ascii_only=True) == "SG.ok-key"
    assert keys.from_env("X", SendError, environ={}) == ""


def test_the_webhook_key_must_be_a_p256_key_without_stray_characters() -> None:
    good = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE" + "A" * 86 + "=="
    with pytest.raises(ConfigError, match="SENDGRID_WEBHOOK_PUBLIC_KEY holds a control character"):
        public_key_from_env({"SENDGRID_WEBHOOK_PUBLIC_KEY": "MFkw\x1bEwYH"})
    with pytest.raises(ConfigError, match="holds whitespace") as caught:
        public_key_from_env({"SENDGRID_WEBHOOK_PUBLIC_KEY": good[:40] + " " + good[40:]})
    assert good[:20] not in str(caught.value)
