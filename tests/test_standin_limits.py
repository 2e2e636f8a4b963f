"""The stand-in's SendGrid limits: the fast `limit_errors` against a plain reference, on generated bodies.

Why: the stand-in checks every body of a benchmark, so its limits are written for speed (tests/standin.py,
`_limits`); speed must not change an answer. `reference_errors` below is the per-personalization rules
written plainly, one address at a time, as they were before (the rules on the message as a whole are one
function, `_message_errors`, that both call); the property test holds the fast version to exactly its
errors, in its order, for bodies that pass and bodies that break every rule.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mailsend_rules import (  # pytest puts tests/ on sys.path
    MAX_ARGS_BYTES,
    MAX_SCHEDULE_SECONDS,
    MAX_SUBSTITUTION_BYTES,
    Error,
    _header_errors,
    _json_bytes,
    _limits,
    _message_errors,
    limit_errors,
    parse_json,
)

NOW = 1_800_000_000.0
LATEST = int(NOW) + MAX_SCHEDULE_SECONDS


def reference_errors(body: dict[str, Any], now: float) -> list[Error]:
    """The Mail Send rules a JSON schema cannot express, written plainly; `body` has passed the schema."""
    errors: list[Error] = []
    latest = now + MAX_SCHEDULE_SECONDS
    top_args = body.get("custom_args", {})
    if _json_bytes(top_args) >= MAX_ARGS_BYTES:
        errors.append(("custom_args", f"custom_args must be less than {MAX_ARGS_BYTES} bytes."))
    errors += _header_errors(body.get("headers", {}), "headers")
    total = 0
    for i, person in enumerate(body["personalizations"]):
        where = f"personalizations.{i}"
        seen: set[str] = set()
        for kind in ("to", "cc", "bcc"):
            for j, address in enumerate(person.get(kind, ())):
                total += 1
                if address["email"].lower() in seen:
                    errors.append((f"{where}.{kind}.{j}.email", "Each email address in the personalization "
                                   "block should be unique between to, cc, and bcc."))
                seen.add(address["email"].lower())
                if any(c in address.get("name", "") for c in ";,"):
                    errors.append((f"{where}.{kind}.{j}.name", "The name cannot contain ';' or ','."))
        errors += _header_errors(person.get("headers", {}), f"{where}.headers")
        substitutions = person.get("substitutions", {})
        if sum(len(k.encode()) + len(v.encode()) for k, v in substitutions.items()) > MAX_SUBSTITUTION_BYTES:
            errors.append((f"{where}.substitutions",
                           f"substitutions may not exceed {MAX_SUBSTITUTION_BYTES} bytes per personalization."))
        if "custom_args" in person and _json_bytes({**top_args, **person["custom_args"]}) >= MAX_ARGS_BYTES:
            errors.append((f"{where}.custom_args", f"custom_args must be less than {MAX_ARGS_BYTES} bytes."))
        if person.get("send_at", 0) > latest:
            errors.append((f"{where}.send_at", "send_at cannot be more than 72 hours in the future."))
    return errors + _message_errors(body, latest, total)  # once per body: the same code in both


# --- generated bodies: shaped as the schema lets through, near every limit ---------------------------------

# a few addresses in several cases, so that duplicates (in any case) across to, cc and bcc come often
emails = st.sampled_from(["ada@example.org", "ADA@example.org", "Ada@Example.org", "grace@example.org",
                          "zoë@example.org", "ZOË@example.org"])
names = st.one_of(st.sampled_from(["", "Ada", "Doe; John", "Hopper, Grace", "김민지", "a;", ",", "O'Neil"]),
                  st.text(alphabet="ab ;,김", max_size=6))
address = st.fixed_dictionaries({"email": emails}, optional={"name": names})
addresses = st.lists(address, max_size=3)
header_names = st.sampled_from(["List-Unsubscribe", "List-Unsubscribe-Post", "X-Tag", "Content-Language", "To", "TO",
                                "Dkim-Signature", "reply-to", "X-SG-ID", "Content-Type", "bcc"])
headers = st.dictionaries(header_names, st.just("v"), max_size=3)
# long texts near 10,000 bytes, ASCII and not (Hangul is 3 bytes a character in UTF-8)
long_text = st.builds(lambda char, n: char * n, st.sampled_from(["a", "가", "é"]),
                      st.sampled_from([0, 1, 10, 1666, 3330, 3334, 4990, 5000, 9960, 9990, 10_000]))
string_map = st.dictionaries(st.sampled_from(["%%name%%", "%%url%%", "k", "키"]), long_text, max_size=3)
send_at = st.sampled_from([LATEST - 1, LATEST, LATEST + 1, int(NOW)])
person = st.fixed_dictionaries(
    {"to": st.lists(address, min_size=1, max_size=3)},
    optional={"cc": addresses, "bcc": addresses, "headers": headers, "substitutions": string_map,
              "custom_args": string_map, "send_at": send_at, "subject": st.just("Hi")})
content_types = st.lists(st.sampled_from(["text/plain", "text/html", "text/x-amp-html", "text/calendar"]),
                         min_size=1, max_size=4, unique=True)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    people = draw(st.lists(person, min_size=1, max_size=5))
    # sometimes many personalizations (one address each, as the product sends), around the 1000-recipient limit
    many = draw(st.sampled_from([0, 0, 0, 995, 999, 1000]))
    people += [{"to": [{"email": f"r{n}@example.org", "name": f"R {n}"}],
                "headers": {"List-Unsubscribe": f"<u{n}>"}} for n in range(many)]
    body: dict[str, Any] = {"personalizations": people, "from": {"email": "news@example.org"}}
    optional = {"subject": st.just("Issue 1"), "template_id": st.just("d-1"), "headers": headers,
                "custom_args": string_map, "send_at": send_at, "reply_to": address, "reply_to_list": addresses,
                "content": content_types.map(lambda types: [{"type": t, "value": "x"} for t in types])}
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


def _plain(body: dict[str, Any]) -> dict[str, Any]:
    return {"personalizations": [{"to": [{"email": "ada@example.org", "name": "Ada"}]}],
            "from": {"email": "news@example.org"}, "subject": "s", "content": [{"type": "text/plain", "value": "x"}],
            **body}


@given(body=bodies())
@example(body=_plain({}))
@example(body=_plain({"personalizations": [{"to": [{"email": "a@x.org", "name": "A, B"}],
                                            "cc": [{"email": "A@X.ORG"}], "headers": {"To": "x", "X-Ok": "y"}}]}))
@example(body=_plain({"personalizations": [{"to": [{"email": "a@x.org"}], "headers": {"X-Ok": "y"}},
                                           {"to": [{"email": "b@x.org"}], "headers": {"X-Ok": "y", "To": "x"}}]}))
@example(body=_plain({"personalizations": [{"to": [{"email": "a@x.org"}], "substitutions": {"k": "가" * 3333}},
                                           {"to": [{"email": "a@x.org"}], "substitutions": {"k": "가" * 3334}}]}))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_fast_limits_give_exactly_the_reference_errors(body: dict[str, Any]) -> None:
    emails: list[str] = []
    assert _limits(body, NOW, emails) == reference_errors(body, NOW)
    assert limit_errors(body, NOW) == reference_errors(body, NOW)
    # parse mode tallies what the fast pass collects: every address, in order
    assert emails == [a["email"] for p in body["personalizations"] for kind in ("to", "cc", "bcc")
                      for a in p.get(kind, ())]


def test_generated_bodies_break_every_rule() -> None:
    """The generator reaches every error the reference knows (else the property above proves little)."""
    fields: set[str] = set()

    @given(body=bodies())
    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def collect(body: dict[str, Any]) -> None:
        for field, _ in reference_errors(body, NOW):
            fields.add(".".join(p for p in field.split(".") if not p.isdigit()) if field else "")

    collect()
    assert {"custom_args", "headers", "personalizations.to.email", "personalizations.cc.email",
            "personalizations.to.name", "personalizations.headers", "personalizations.substitutions",
            "personalizations.custom_args", "personalizations.send_at", "personalizations", "send_at",
            "reply_to_list", "content", "subject"} <= fields, fields


@pytest.mark.parametrize("check", [reference_errors, limit_errors], ids=["reference", "fast"])
def test_a_lone_surrogate_in_substitutions_fails_alike(check: Any) -> None:
    """JSON may carry "\\ud800", which has no UTF-8 bytes to count: both versions fail alike on it, as before."""
    body = _plain({"personalizations": [{"to": [{"email": "a@x.org"}], "substitutions": {"k": "\ud800"}}]})
    with pytest.raises(UnicodeEncodeError):
        check(body, NOW)


# --- JSON: orjson where it gives json's answer, json otherwise ---------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.text() | st.floats(allow_nan=True) |
    st.integers() | st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from([2**63, -(2**63) - 1, 2**64]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)
# what json takes and orjson does not (or the other way round), and plain garbage
raw_texts = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: b"\xef\xbb\xbf" + json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v).encode("utf-16")),
    st.sampled_from([b'"\\ud800"', b"1e400", b"-1e400", b"[NaN, Infinity]", b"", b"{", b"01", b'{"a":1,"a":2}',
                     b"9223372036854775808", b"-9223372036854775809", b"18446744073709551616", b"1" * 400]),
    st.binary(max_size=30))


@given(raw=raw_texts)
@settings(max_examples=500, deadline=None)
def test_parse_json_reads_every_text_as_json_does(raw: bytes) -> None:
    """Same value and same types (repr tells 1e+20 from 10**20), or both refuse."""
    try:
        expected = repr(json.loads(raw))
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            parse_json(raw)
        return
    assert repr(parse_json(raw)) == expected
