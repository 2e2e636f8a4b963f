"""`suppressions sync` against the SendGrid stand-in on 127.0.0.1, with the real `sendgrid` client."""

from __future__ import annotations

from typing import Any

import pytest
from standin import StandIn

from pipeline.errors import ConfigError
from pipeline.lists.suppressions import KINDS, SyncError, client_fetch, fetch_all, normalise_address, sync
from pipeline.store import Store

KEY = "SG.test-suppressions"


def env(sg: StandIn, key: str = KEY) -> dict[str, str]:
    return {"SENDGRID_API_KEY": key, "SENDGRID_API_HOST": sg.url}


def seed(sg: StandIn) -> None:
    sg.suppressions["bounces"] = [{"created": 1_700_000_000 + i, "email": f"bounce{i}@example.org",
                                   "reason": "550 5.1.1 unknown user", "status": "5.1.1"} for i in range(1203)]
    sg.suppressions["blocks"] = [{"created": 1_700_000_000, "email": "blocked@example.org", "reason": "IP blocked",
                                  "status": "4.0.0"}]
    sg.suppressions["spam_reports"] = [{"created": 1_700_000_000, "email": "Spam@Example.org", "ip": "10.0.0.1"}]
    sg.suppressions["invalid_emails"] = [{"created": 1_700_000_000, "email": "invalid@example.org",
                                          "reason": "Mail domain mentioned in email address is unknown"}]
    sg.suppressions["unsubscribes"] = [{"created": 1_700_000_000, "email": "left@example.org"},
                                       {"created": 1_700_000_000, "email": "bounce0@example.org"}]
    sg.suppressions["asm_suppressions"] = [
        {"email": "group7@example.org", "group_id": 7, "group_name": "Newsletter", "created_at": 1_700_000_000},
        {"email": "group9@example.org", "group_id": 9, "group_name": "Product news", "created_at": 1_700_000_000},
    ]


def test_sync_pulls_every_list_page_by_page_and_twice_changes_nothing(store: Store) -> None:
    with StandIn(api_key=KEY) as sg:
        seed(sg)
        result = sync(store, client_fetch(env(sg)), page_size=500)
        pages = sg.request_count
        again = sync(store, client_fetch(env(sg)), page_size=500)
    assert result.fetched == {"bounces": 1203, "blocks": 1, "spam_reports": 1, "invalid_emails": 1,
                              "unsubscribes": 2, "group_unsubscribes": 2}
    assert result.added["unsubscribes"] == 1  # bounce0 was already suppressed as a bounce: first reason kept
    assert pages == 3 + 5  # bounces in three pages of 500, the other five lists in one each
    assert sum(again.added.values()) == 0
    found = {s.email.lower(): (s.reason, s.source) for s in store.list_suppressions()}
    assert len(found) == 1203 + 6
    assert found["bounce0@example.org"] == ("bounced", "sendgrid bounces")
    assert found["spam@example.org"] == ("complained", "sendgrid spam_reports")
    assert found["group9@example.org"] == ("unsubscribed", "sendgrid group_unsubscribes group 9")
    assert store.is_suppressed("SPAM@example.org")


def test_only_our_group_when_one_is_configured(store: Store) -> None:
    with StandIn(api_key=KEY) as sg:
        seed(sg)
        sync(store, client_fetch(env(sg)), group_id=7)
    assert store.is_suppressed("group7@example.org")
    assert not store.is_suppressed("group9@example.org")


def test_a_refused_key_is_a_clear_error_without_the_key(store: Store) -> None:
    with StandIn(api_key=KEY) as sg:
        seed(sg)
        with pytest.raises(SyncError, match="401") as caught:
            sync(store, client_fetch(env(sg, "SG.wrong-key")))
    assert "SG.wrong-key" not in str(caught.value) and "Suppressions" in str(caught.value)
    assert store.list_suppressions() == []


def test_a_failing_page_adds_nothing(store: Store) -> None:
    with StandIn(api_key=KEY) as sg:
        seed(sg)
        sg.script(["ok", "ok", "503"])  # the third page of bounces fails
        with pytest.raises(SyncError, match="503"):
            sync(store, client_fetch(env(sg)))
    assert store.list_suppressions() == []


def test_missing_key() -> None:
    with pytest.raises(ConfigError, match="SENDGRID_API_KEY is not set"):
        client_fetch({})


def test_a_server_ignoring_offset_cannot_loop_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.lists.suppressions as module

    monkeypatch.setattr(module, "MAX_PAGES", 3)

    def same_page(kind: Any, limit: int, offset: int) -> list[dict[str, Any]]:
        return [{"email": f"x{i}@example.org"} for i in range(limit)]

    with pytest.raises(SyncError, match="offset"):
        fetch_all(same_page, KINDS[0], page_size=2)


def test_normalise_address() -> None:
    assert normalise_address(" Ada@Example.ORG ") == "Ada@example.org"
    with pytest.raises(ConfigError, match="not an email address"):
        normalise_address("ada at example")


def test_the_clients_debug_log_never_shows_the_key_or_addresses(store: Store,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """python_http_client logs request headers (the key) and response bodies (the addresses) at DEBUG; a sync
    in a process that logs at DEBUG (or after no send has silenced the client yet) must not let it."""
    import logging

    client_log = logging.getLogger("python_http_client")
    before = client_log.level
    client_log.setLevel(logging.NOTSET)  # as in a process where no send ran before
    caplog.set_level(logging.DEBUG)
    try:
        with StandIn(api_key=KEY) as sg:
            seed(sg)
            sync(store, client_fetch(env(sg)))
    finally:
        client_log.setLevel(before)
    assert KEY not in caplog.text
    assert "blocked@example.org" not in caplog.text
