"""Unsubscribe tokens: round trip, and every kind of tampering is refused."""

from __future__ import annotations

import base64

import pytest

from pipeline import tokens
from pipeline.errors import SendError

SECRET = b"0123456789abcdef-test-secret"


def test_round_trip_and_url_safe() -> None:
    token = tokens.sign(SECRET, email="Zoë@example.org", list_name="sample", issue="001-hello")
    assert all(c.isalnum() or c in "-_." for c in token)
    found = tokens.verify(SECRET, token)
    assert found == tokens.UnsubscribeToken(email="Zoë@example.org", list_name="sample", issue="001-hello")
    url = tokens.unsubscribe_url("https://news.example.org/", token)
    assert url == f"https://news.example.org/unsubscribe/{token}"


def test_other_secret_refused() -> None:
    token = tokens.sign(SECRET, email="a@example.org", list_name="l", issue="i")
    assert tokens.verify(b"another-secret-of-enough-length", token) is None


def test_altered_payload_refused() -> None:
    token = tokens.sign(SECRET, email="a@example.org", list_name="l", issue="i")
    payload, mac = token.split(".")
    forged = base64.urlsafe_b64encode(b'["b@example.org","l","i"]').rstrip(b"=").decode()
    assert tokens.verify(SECRET, f"{forged}.{mac}") is None
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    assert tokens.verify(SECRET, f"{flipped}.{mac}") is None


@pytest.mark.parametrize("cut", [1, 2, 5, 10, 21])
def test_truncated_refused(cut: int) -> None:
    token = tokens.sign(SECRET, email="a@example.org", list_name="l", issue="i")
    assert tokens.verify(SECRET, token[:-cut]) is None


@pytest.mark.parametrize("junk", ["", ".", "abc", "a.b.c", "!!!.???", "e30.AAAA", "x" * 5000])
def test_junk_refused(junk: str) -> None:
    assert tokens.verify(SECRET, junk) is None


def test_fields_cannot_be_shifted_between_parts() -> None:
    one = tokens.sign(SECRET, email="a@example.org", list_name="lb", issue="i")
    two = tokens.sign(SECRET, email="a@example.orgl", list_name="b", issue="i")
    assert one != two
    assert tokens.verify(SECRET, one) != tokens.verify(SECRET, two)


def test_secret_from_env() -> None:
    with pytest.raises(SendError, match="NEWSLETTER_SECRET is not set.*secrets.token_urlsafe"):
        tokens.secret_from_env({})
    with pytest.raises(SendError, match="too short"):
        tokens.secret_from_env({"NEWSLETTER_SECRET": "short"})
    assert tokens.secret_from_env({"NEWSLETTER_SECRET": "x" * 32}) == b"x" * 32


def test_secret_never_in_error() -> None:
    with pytest.raises(SendError) as info:
        tokens.secret_from_env({"NEWSLETTER_SECRET": "hush"})
    assert "hush" not in str(info.value)
