"""Editions in the send: each recipient gets the edition their `language` column picks, exactly once, and the
send log, `status` and the summary count who got which. Against the real stand-in, on both engines."""

from __future__ import annotations

import email
import email.policy
import json
import re
from pathlib import Path

import pytest

from pipeline.errors import SendError
from pipeline.store import Finish, Store
from tests.sendkit import ISSUE, cli, environ, send
from tests.standin import StandIn
from tests.storekit import select, site_store

KO_SUBJECT = "테스트 위클리 제1호: 안녕하세요"
EN_SUBJECT = "Test Weekly No. 1: hello"
# (address, language cell) -> the edition it must get; the newsletter's language (en) is the default
MIXED = [("ko@example.org", "ko", "ko"), ("kokr@example.org", "ko-KR", "ko"), ("en@example.org", "en", "en"),
         ("none@example.org", "", "en"), ("garbage@example.org", "klingon!", "en"), ("upper@example.org", "KO", "ko"),
         ("enus@example.org", "en_US", "en")]


def bilingual(site: Path) -> None:
    """Issue 001-hello with a Korean edition beside the English one (issue.ko.yaml, articles/ko/)."""
    folder = site / ISSUE
    (folder / "issue.ko.yaml").write_text(
        f'subject: "{KO_SUBJECT}"\npreheader: 테스트를 위한 작은 호\nmasthead: 테스터를 위한 소식\n'
        "sections:\n  - title: 첫 소식\n    articles: [hello.md]\n  - title: 읽을거리\n    literature:\n"
        "      - title: 유용한 논문\n        authors: 저자\n        details: 테스트 학회지, 2025\n"
        "        link: https://example.org/paper\n", encoding="utf-8")
    (folder / "articles" / "ko").mkdir()
    (folder / "articles" / "ko" / "hello.md").write_text(
        "---\ntitle: 독자 여러분, 안녕하세요\ndate: 2026-01-14\nsource: 편집부\nlink: https://example.org/hello\n"
        "image: images/square.png\nimage_alt: 파란 정사각형\n---\n첫 호에 오신 것을 환영합니다. "
        "[공지](https://example.org/announce)를 읽어 보세요.\n", encoding="utf-8")


def mixed_list(site: Path, name: str = "mixed", rows: list[tuple[str, str, str]] = MIXED) -> None:
    lines = ["email,name,Language,city"] + [f"{a},{a.split('@')[0]},{lang},Seoul" for a, lang, _ in rows]
    (site / "subscribers" / f"{name}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")




def _got(standin: StandIn, *, once: bool = True) -> dict[str, tuple[str, str, str, str]]:
    """Address -> (subject, <html lang>, Content-Language header, the text part) of the request it was in
    (`once`: asserting that no address was in two)."""
    got = {}
    for accepted in standin.accepted:
        body = accepted.body
        assert body is not None
        html = next(c["value"] for c in body["content"] if c["type"] == "text/html")
        text = next(c["value"] for c in body["content"] if c["type"] == "text/plain")
        lang = re.search(r'<html[^>]*\slang="([^"]+)"', html)
        for person in body["personalizations"]:
            for to in person["to"]:
                assert not once or to["email"] not in got, f"{to['email']} got two mails"
                got[to["email"]] = (body["subject"], lang.group(1) if lang else "", body["headers"]["Content-Language"],
                                    text)
    return got


def _editions(site: Path, env: dict[str, str], list_name: str = "mixed") -> dict[str, str]:
    store = site_store(site, env)
    try:
        found = store.find_send(issue="001-hello", list_name=list_name, transport="sendgrid")
        assert found is not None
        return dict(select(store, "SELECT email, edition FROM deliveries WHERE send_id = ?", (found.id,)))
    finally:
        store.close()


def test_each_recipient_gets_their_edition_once(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    bilingual(site)
    mixed_list(site)
    summary = send(site, env, list_name="mixed")
    assert summary.finished and summary.accepted == len(MIXED)
    assert standin.recipients() == {a: 1 for a, _, _ in MIXED}
    got = _got(standin)
    for address, _, edition in MIXED:
        subject, lang, header, text = got[address]
        assert (subject, lang, header) == ((KO_SUBJECT, "ko", "ko") if edition == "ko" else (EN_SUBJECT, "en", "en"))
        assert ("환영합니다" in text) == (edition == "ko"), address
    # a request has one content: every request holds one edition's recipients only (batch_size 2: 4 en + 3 ko)
    assert standin.request_count == 4
    assert _editions(site, env) == {a: e for a, _, e in MIXED}
    assert summary.editions == {"en": {"accepted": 4, "pending": 0, "in_doubt": 0, "failed": 0},
                                "ko": {"accepted": 3, "pending": 0, "in_doubt": 0, "failed": 0}}
    assert send(site, env, list_name="mixed").accepted == 0 and standin.request_count == 4


def test_language_is_not_a_merge_field(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    bilingual(site)
    mixed_list(site)
    send(site, env, list_name="mixed")
    for accepted in standin.accepted:
        assert accepted.body is not None
        for person in accepted.body["personalizations"]:
            assert not any("language" in tag.lower() for tag in person["substitutions"])


def test_outbox_files_show_the_edition(site: Path, env: dict[str, str], tmp_path: Path) -> None:
    bilingual(site)
    mixed_list(site)
    outbox = tmp_path / "outbox"
    assert send(site, env, list_name="mixed", outbox=outbox).accepted == len(MIXED)
    for address, _, edition in MIXED:
        message = email.message_from_bytes((outbox / f"{address}.eml").read_bytes(), policy=email.policy.default)
        assert message["Content-Language"] == edition
        assert str(message["Subject"]) == (KO_SUBJECT if edition == "ko" else EN_SUBJECT)
        html = message.get_body(("html",))
        assert html is not None
        assert re.search(rf'<html[^>]*\slang="{edition}"', html.get_content()), address


def test_a_resume_after_a_failure_mid_send_keeps_each_edition(site: Path, standin: StandIn,
                                                                env: dict[str, str]) -> None:
    bilingual(site)
    mixed_list(site)
    standin.script(["ok", "ok", "ok", "400"])  # the English edition (2 requests), then the Korean one's second
    with pytest.raises(SendError, match="SendGrid refused the send \\(400\\)"):
        send(site, env, list_name="mixed")
    first = set(standin.recipients())
    assert len(first) == 6 and "upper@example.org" not in first  # the failed request's recipient: not sent
    summary = send(site, env, list_name="mixed")
    assert summary.finished and summary.accepted == 1
    assert standin.recipients() == {a: 1 for a, _, _ in MIXED}
    assert _got(standin)["upper@example.org"][:3] == (KO_SUBJECT, "ko", "ko")
    assert summary.editions["ko"] == {"accepted": 3, "pending": 0, "in_doubt": 0, "failed": 0}


def test_a_request_without_an_answer_leaves_only_its_edition_in_doubt(site: Path, standin: StandIn,
                                                                       env: dict[str, str]) -> None:
    bilingual(site)
    mixed_list(site)
    standin.script(["ok", "ok", "drop_after"])  # the Korean edition's first request: sent, no answer
    summary = send(site, env, list_name="mixed")
    assert not summary.finished
    assert summary.editions["ko"]["in_doubt"] == 2 and summary.editions["en"]["in_doubt"] == 0
    again = send(site, env, list_name="mixed", resend_in_doubt=True)
    assert again.finished and again.accepted == 2
    got = _got(standin, once=False)  # the in-doubt two went twice (as asked), in Korean the second time too
    assert all(got[a][0] == KO_SUBJECT for a, _, e in MIXED if e == "ko")


def test_status_counts_who_got_which_edition(site: Path, standin: StandIn, env: dict[str, str]) -> None:
    bilingual(site)
    mixed_list(site)
    standin.script(["ok", "ok", "ok", "400"])
    cli(site, "send", ISSUE, "--list", "mixed", "--yes", env=env)
    result = cli(site, "status", ISSUE, "--json", env=env)
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)["lists"]["mixed"]
    assert entry["editions"] == {"en": {"accepted": 4, "pending": 0, "in_doubt": 0, "failed": 0},
                                 "ko": {"accepted": 2, "pending": 0, "in_doubt": 0, "failed": 1}}
    text = cli(site, "status", ISSUE, env=env)
    assert ("by edition: en: 4 accepted, 0 pending, 0 in doubt, 0 failed; "
            "ko: 2 accepted, 0 pending, 0 in doubt, 1 failed") in text.stdout
    done = cli(site, "send", ISSUE, "--list", "mixed", "--yes", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["editions"]["ko"]["accepted"] == 3
    assert "editions:   en, ko" in done.stderr  # the plan names them


def test_a_test_copy_takes_language_or_the_first_rows_edition(site: Path, standin: StandIn,
                                                                env: dict[str, str]) -> None:
    bilingual(site)
    mixed_list(site)  # its first row is Korean
    send(site, env, list_name="mixed", test_address="me@example.net")
    send(site, env, list_name="mixed", test_address="me@example.net", language="en-GB")
    subjects = [a.body["subject"] for a in standin.accepted if a.body is not None]
    assert subjects == [f"[TEST] {KO_SUBJECT}", f"[TEST] {EN_SUBJECT}"]
    with pytest.raises(SendError, match="--language 'fr': issue 001-hello has no such edition — give one of en, ko"):
        send(site, env, list_name="mixed", test_address="me@example.net", language="fr")
    result = cli(site, "send", ISSUE, "--list", "mixed", "--language", "ko", "--yes", env=env)
    assert result.returncode != 0 and "--language picks a test copy's edition and needs --test" in result.stderr
    assert "Traceback" not in result.stderr and len(standin.accepted) == 2


def test_a_single_edition_issue_sends_everyone_the_one_it_has(site: Path, standin: StandIn,
                                                               env: dict[str, str]) -> None:
    mixed_list(site)
    summary = send(site, env, list_name="mixed")
    assert summary.finished and set(summary.editions) == {"en"}
    assert {s for s, _, _, _ in _got(standin).values()} == {EN_SUBJECT}
    assert set(_editions(site, env).values()) == {"en"}


def test_subscribers_check_warns_about_a_language_that_is_not_a_tag(site: Path) -> None:
    mixed_list(site)
    result = cli(site, "subscribers", "check", "mixed", env=environ(None))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("warning: language") == 1  # only the row with "klingon!" (line 6)
    assert "mixed.csv:6: warning: language 'klingon!' is not a language tag" in result.stderr
    assert "1 with a language that is not a tag" in result.stdout
    report = json.loads(cli(site, "subscribers", "check", "mixed", "--json", env=environ(None)).stdout)
    assert report["bad_languages"] == 1 and report["valid"] == len(MIXED) and report["invalid"] == 0


# --- the store: edition filters and counts, on both engines ------------------------------------------------


def test_claims_take_only_the_editions_asked_for(store: Store) -> None:
    send_ = store.create_send(issue="001", list_name="l", transport="sendgrid", content_hash="h", subject="s")
    rows = [(f"r{i}@example.org", "", None, "ko" if i % 3 == 0 else "en") for i in range(9)]
    assert store.add_recipients(send_.id, rows) == 9
    peeked = store.peek_batch(send_.id, size=2, editions=("ko",))
    assert [r[1] for r in peeked.rows] == ["r0@example.org", "r3@example.org"]
    claim = store.claim_peeked(send_.id, peeked, request_id="a", editions=("ko",))
    assert claim is not None and [r[1] for r in claim.rows] == ["r0@example.org", "r3@example.org"]
    other = store.claim_batch(send_.id, size=5, after=claim.last, request_id="b", editions=("ko",))
    assert other is not None and [r[1] for r in other.rows] == ["r6@example.org"]
    assert store.claim_batch(send_.id, size=5, after=other.last, request_id="c", editions=("ko",)) is None
    store.record([Finish(claim=claim, state="accepted", attempts=1, http_status=202),
                  Finish(claim=other, state="in_doubt", attempts=1)])
    english = store.claim_batch(send_.id, size=100, request_id="d", editions=("en",))
    assert english is not None and len(english.rows) == 6
    counts = store.edition_counts(send_.id)
    assert {e: (c["accepted"], c["in_doubt"], c["in_flight"]) for e, c in counts.items()} == {
        "ko": (2, 1, 0), "en": (0, 0, 6)}


def test_rows_recorded_without_an_edition_go_with_the_default(store: Store) -> None:
    send_ = store.create_send(issue="001", list_name="l", transport="sendgrid", content_hash="h", subject="s")
    store.add_recipients(send_.id, [("old@example.org", "", None), ("new@example.org", "", None, "ko")])
    assert store.sync_recipients(send_.id, [("old@example.org", "", None), ("new@example.org", "", None, "ko"),
                                            ("later@example.org", "", None, "ko")]) == 1
    claim = store.claim_batch(send_.id, size=10, request_id="a", editions=("en", ""))
    assert claim is not None and [r[1] for r in claim.rows] == ["old@example.org"]
    assert set(store.edition_counts(send_.id)) == {"", "ko"}


@pytest.mark.parametrize("tag", ["ko", "KO", "ko-kr", "ko-KR", "en_US", "en-GB", "zh-Hant-TW", "pt-BR", "ja",
                                 "garbage", "xx", "ko-XX", "!!", "en-", "1", "k" * 40, " ko "])
def test_a_tag_check_warns_about_is_one_the_edition_pick_does_not_take(tag: str) -> None:
    from pipeline.build.editions import pick_language
    from pipeline.lists.values import language_tag_ok

    own = tag.strip().replace("_", "-").split("-")[0].lower()
    assert language_tag_ok(tag) == (pick_language(tag, (own, "en")) is not None)
