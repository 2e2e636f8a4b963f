"""Subscriber lists: reading, validation, deduplication, suppression, and the regex fast path."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from email_validator import EmailNotValidError, validate_email

from pipeline.config import load_config
from pipeline.errors import SubscriberError
from pipeline.lists import subscribers
from pipeline.lists.subscribers import (
    _PLAIN,
    MAX_DETAILED_PROBLEMS,
    ListReader,
    Recipient,
    check_list,
    clean_name,
    dedupe_key,
    import_export,
    list_path,
    normalise,
)

LISTS = Path(__file__).parent / "fixtures" / "lists"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- reading ----------------------------------------------------------------------------------------


def test_sample_list_is_read_in_file_order(site: Path) -> None:
    recipients = list(ListReader(site / "subscribers" / "sample.csv"))
    assert recipients[0] == Recipient(email="ada@example.org", name="Ada Lovelace", fields={"city": "London"},
                                      line=2)
    assert [r.email for r in recipients] == ["ada@example.org", "grace@example.org", "alan@example.org"]
    assert [r.line for r in recipients] == [2, 3, 4]


def test_mixed_list_reports_each_bad_row_and_yields_the_rest() -> None:
    reader = ListReader(LISTS / "mixed.csv")
    recipients = list(reader)
    assert [(r.email, r.line) for r in recipients] == [
        ("ada@example.org", 2), ("grace@example.org", 4), ("katherine@example.org", 7), ("edsger@example.org", 11)]
    assert recipients[1].name == "Hopper Grace RADM"  # ';' and ',' removed
    assert recipients[2].name == "Katherine Johnson"  # a quoted line break folded
    assert recipients[0].fields == {"first_name": "Ada"}  # 'favourite colour' is no tag name
    assert (reader.total, reader.invalid, reader.duplicates, reader.suppressed, reader.valid) == (8, 3, 1, 0, 4)
    errors = [p for p in reader.problems if p.blocking]
    assert [(p.file, p.line) for p in errors] == [(LISTS / "mixed.csv", 3), (LISTS / "mixed.csv", 6),
                                                  (LISTS / "mixed.csv", 10)]
    assert "not-an-address" in errors[0].message and "5 cells" in errors[1].message
    assert all("--skip-invalid" in p.fix for p in errors)
    [warning] = [p for p in reader.problems if not p.blocking]
    assert warning.line == 1 and "favourite colour" in warning.message


def test_duplicates_are_dropped_without_regard_to_case(tmp_path: Path) -> None:
    path = write(tmp_path / "l.csv", "email\nAda@example.org\nada@EXAMPLE.org\nADA@example.org\nbob@example.org\n")
    reader = ListReader(path)
    assert [r.email for r in reader] == ["Ada@example.org", "bob@example.org"]
    assert reader.duplicates == 2


def test_suppressed_addresses_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "l.csv", "email,name\nada@example.org,A\nBob@Example.ORG,B\ncy@example.org,C\n")
    asked: list[str] = []

    def suppressed(email: str) -> bool:
        asked.append(email)
        return email.lower() == "bob@example.org"

    reader = ListReader(path, suppressed=suppressed)
    assert [r.email for r in reader] == ["ada@example.org", "cy@example.org"]
    assert asked == ["ada@example.org", "Bob@example.org", "cy@example.org"]  # normalised, once each
    assert reader.suppressed == 1 and reader.valid == 2


def test_only_the_first_problems_are_detailed(tmp_path: Path) -> None:
    rows = "".join(f"bad-{i}\n" for i in range(MAX_DETAILED_PROBLEMS + 25))
    reader = check_list(write(tmp_path / "l.csv", "email\nok@example.org\n" + rows))
    assert reader.invalid == MAX_DETAILED_PROBLEMS + 25 and reader.valid == 1
    assert len(reader.problems) == MAX_DETAILED_PROBLEMS + 1
    assert reader.problems[-1].message.startswith("25 more invalid row(s)")


def test_short_rows_get_empty_fields_and_bom_header_is_understood(tmp_path: Path) -> None:
    [ada] = ListReader(LISTS / "bom.csv")
    assert ada.email == "ada@example.org" and ada.name == "Ada"
    [bob] = ListReader(write(tmp_path / "l.csv", "email,name,city\nbob@example.org\n"))
    assert bob.name == "" and bob.fields == {"city": ""}


def test_a_column_cannot_replace_the_unsubscribe_link(tmp_path: Path) -> None:
    reader = ListReader(write(tmp_path / "l.csv", "email,unsubscribe_url,city\nada@example.org,https://evil.example,X\n"))
    [ada] = reader
    assert ada.fields == {"city": "X"}
    assert [(p.line, p.blocking) for p in reader.problems] == [(1, False)]
    assert "unsubscribe_url" in reader.problems[0].message


def test_a_reader_iterates_once(site: Path) -> None:
    reader = ListReader(site / "subscribers" / "sample.csv")
    list(reader)
    with pytest.raises(RuntimeError):
        list(reader)


def test_counts_are_kept_when_iteration_stops_early(tmp_path: Path) -> None:
    path = write(tmp_path / "l.csv", "email\n" + "".join(f"r{i}@example.org\n" for i in range(100)))
    reader = ListReader(path)
    iterator = iter(reader)
    for _ in range(10):
        next(iterator)
    iterator.close()  # type: ignore[attr-defined]
    assert reader.total == 10


# --- files that cannot be read at all ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("empty.csv", "empty.csv:1: the file is empty"),
    ("no_email_column.csv", "no_email_column.csv:1: no 'email' column"),
    ("semicolon.csv", "separated by ';'"),
    ("latin1.csv", "latin1.csv:2: the file is not UTF-8"),
    ("utf16.csv", "not a CSV text file"),
])
def test_unreadable_files_fail_at_once_with_file_line_and_fix(name: str, expected: str) -> None:
    with pytest.raises(SubscriberError) as exc:
        ListReader(LISTS / name)
    assert expected in str(exc.value) and " — " in str(exc.value)
    assert exc.value.exit_code == 4


@pytest.mark.parametrize("content", [b"\xef\xbb\xbf", b" \r\n\n", b"\xef\xbb\xbf\n"])
def test_blank_files_are_empty(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "l.csv"
    path.write_bytes(content)
    with pytest.raises(SubscriberError, match="the file is empty"):
        ListReader(path)


def test_spreadsheet_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00")
    with pytest.raises(SubscriberError, match="not a CSV text file"):
        ListReader(path)


def test_repeated_column_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SubscriberError, match="city appear more than once"):
        ListReader(write(tmp_path / "l.csv", "email,city,city\n"))


def test_bad_bytes_far_into_the_file_are_a_row_problem(tmp_path: Path) -> None:
    good = "".join(f"reader{i}@example.org,Reader {i}\n" for i in range(4000))  # > 64 KB sniffed at once
    path = tmp_path / "l.csv"
    path.write_bytes(b"email,name\n" + good.encode() + b"late@example.org,Ren\xe9e\nlast@example.org,Last\n")
    reader = ListReader(path)
    emails = [r.email for r in reader]
    assert len(emails) == 4001 and emails[-1] == "last@example.org"
    assert reader.invalid == 1 and reader.problems[0].line == 4002 and "UTF-8" in reader.problems[0].message


# --- addresses --------------------------------------------------------------------------------------


def test_normalise_strips_and_lowercases_the_domain_only() -> None:
    assert normalise("  Ada.Lovelace@Example.ORG ") == "Ada.Lovelace@example.org"
    assert normalise("jose@bücher.example") == "jose@bücher.example"
    with pytest.raises(ValueError, match="@-sign"):
        normalise("nobody")
    with pytest.raises(ValueError, match="special-use"):
        normalise("someone@localhost.test")


def test_dedupe_key_ignores_case_only() -> None:
    assert dedupe_key("Ada@Example.org") == dedupe_key("ada@example.org") != dedupe_key("ada@example.com")


def test_clean_name_removes_what_sendgrid_refuses() -> None:
    assert clean_name(" Doe, Jane; Dr ") == "Doe Jane Dr"
    assert clean_name("Ada\r\n Lovelace\t") == "Ada Lovelace"
    assert clean_name("Renée") == "Renée"


def _pick(rng: random.Random, common: str, odd: str, rare: str, length: int) -> str:
    return "".join(rng.choice(common) if (x := rng.random()) < 0.8 else rng.choice(odd) if x < 0.97
                   else rng.choice(rare) for _ in range(length))


def _samples(count: int, seed: int) -> list[str]:
    """Addresses near the edges of the fast path: odd characters, dots, hyphens, case, lengths, TLDs."""
    rng = random.Random(seed)
    tlds = ["org", "com", "io", "c", "x1", "123", "test", "local", "localhost", "onion", "invalid", "arpa",
            "ORG", "photography", "a" * 63, "a" * 64, "xn--p1ai", "ex-ample", "Test"]
    samples = []
    for _ in range(count):
        local = _pick(rng, "abcxyz019", "!#$%&'*+/=?^_`{|}~-.ABC", "\"(),:;<>@[\\] é\t", rng.choice([1, 3, 8, 20, 64]))
        labels = [_pick(rng, "abcxyz019", "-", "A_é.", rng.choice([1, 2, 5, 12, 63]))
                  for _ in range(rng.choice([1, 2, 3]))]
        samples.append(f"{local}@{'.'.join(labels)}.{rng.choice(tlds)}")
    edge = ["a@b.co", "a.b@c.org", ".a@b.org", "a.@b.org", "a..b@c.org", "a@-b.org", "a@b-.org", "a@b--c.org",
            "a@xn--abc.org", "a@b.c.d.org", "a@b..org", "a@b.org.", "A@B.ORG", "x" * 64 + "@example.org",
            "x" * 50 + "@" + "y" * 10 + ".org", "a@" + "b" * 63 + ".org", "a+tag@example.org", "a@b.test",
            "user@sub.domain.invalid", "q@localhost", "'quote'@example.org", "a@b_c.org", "a@1.org"]
    return edge + samples


def _validator(address: str) -> str | None:
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def test_fast_path_accepts_only_what_email_validator_accepts_unchanged() -> None:
    samples = _samples(30_000, seed=7)
    fast = [a for a in samples if len(a) <= 64 and _PLAIN(a)]
    assert len(fast) > 1000  # the samples do reach the fast path, edges included:
    assert sum("-" in a.split("@")[1] for a in fast) > 100 and sum(not a.split("@")[0].isalnum() for a in fast) > 100
    for address in fast:
        assert _validator(address) == address, address


def test_normalise_agrees_with_email_validator() -> None:
    for address in _samples(5_000, seed=11):
        expected = _validator(address.strip())
        if expected is None:
            with pytest.raises(ValueError):
                normalise(address)
        else:
            assert normalise(address) == expected, address


# --- list names -------------------------------------------------------------------------------------


def test_list_path_finds_lists_by_name(site: Path) -> None:
    config = load_config(site)
    assert list_path(config, "sample") == site / "subscribers" / "sample.csv"
    assert list_path(config, "sample.csv") == site / "subscribers" / "sample.csv"
    assert list_path(config, "new", must_exist=False) == site / "subscribers" / "new.csv"


@pytest.mark.parametrize("name", ["../secrets", "a/b", "..", ".hidden", "", "a\\b"])
def test_list_path_refuses_folders(site: Path, name: str) -> None:
    with pytest.raises(SubscriberError, match="invalid list name"):
        list_path(load_config(site), name)


def test_missing_list_names_the_available_ones(site: Path) -> None:
    shutil.copy(site / "subscribers" / "sample.csv", site / "subscribers" / "friends.csv")
    with pytest.raises(SubscriberError) as exc:
        list_path(load_config(site), "weekly")
    assert "available lists: friends, sample" in str(exc.value)


# --- importing exports ------------------------------------------------------------------------------


def test_mailchimp_export_becomes_a_list_without_system_columns(tmp_path: Path) -> None:
    dest = tmp_path / "news.csv"
    result = import_export(LISTS / "mailchimp_subscribed.csv", dest)
    assert isinstance(result, subscribers.ImportResult)
    assert (result.source_format, result.added, result.already_present, result.invalid) == ("mailchimp", 3, 1, 1)
    assert result.to_suppress == [] and result.problems[0].line == 5 and "alan@example" in result.problems[0].message
    rows = dest.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "email,name,first_name,last_name,address,phone_number,company"  # no OPTIN_IP etc.
    assert rows[2] == "grace@example.org,Grace Hopper,Grace,Hopper,,,Navy; Research"
    reader = check_list(dest)
    assert (reader.valid, reader.problems) == (3, [])


def test_unsubscribed_and_cleaned_members_are_to_be_suppressed_not_added(tmp_path: Path) -> None:
    dest = tmp_path / "news.csv"
    unsubscribed = import_export(LISTS / "mailchimp_unsubscribed.csv", dest)
    cleaned = import_export(LISTS / "mailchimp_cleaned.csv", dest)
    assert unsubscribed.to_suppress == [("edsger@example.org", "unsubscribed"), ("barbara@example.org", "unsubscribed")]
    assert cleaned.to_suppress == [("john@example.org", "bounced")]
    assert unsubscribed.added == cleaned.added == 0 and not dest.exists()


def test_substack_export_subscribes_only_active_readers(tmp_path: Path) -> None:
    result = import_export(LISTS / "substack.csv", tmp_path / "news.csv")
    assert (result.source_format, result.added, result.already_present) == ("substack", 2, 1)
    assert result.to_suppress == [("dennis@example.org", "unsubscribed"), ("ken@example.org", "unsubscribed")]
    assert [r.email for r in ListReader(tmp_path / "news.csv")] == ["margaret@example.org", "linus@example.org"]


def test_import_appends_only_new_addresses_and_widens_the_header(site: Path) -> None:
    dest = site / "subscribers" / "sample.csv"
    write(dest, "email,name,city\nada@example.org,Ada Lovelace,London\ngrace@example.org,Grace Hopper,Arlington\n")
    dest.chmod(0o640)
    result = import_export(LISTS / "mailchimp_subscribed.csv", dest)
    assert (result.added, result.already_present) == (1, 3)  # grace (other case) and ada twice were there
    lines = dest.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "email,name,city,first_name,last_name,address,phone_number,company"
    assert lines[1] == "ada@example.org,Ada Lovelace,London,,,,,"
    assert lines[3].startswith("katherine@example.org,Katherine Johnson,,Katherine,Johnson")
    assert dest.stat().st_mode & 0o777 == 0o640  # kept, not the temporary file's 0600
    again = import_export(LISTS / "mailchimp_subscribed.csv", dest)
    assert again.added == 0 and dest.read_text(encoding="utf-8").splitlines() == lines


def test_failed_write_leaves_the_old_list_and_no_temporary_file(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = site / "subscribers" / "sample.csv"
    before = dest.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("pipeline.lists.importing.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        import_export(LISTS / "substack.csv", dest)
    assert dest.read_bytes() == before
    assert sorted(p.name for p in dest.parent.iterdir()) == ["sample.csv"]


def test_plain_csv_import_keeps_safe_merge_field_names(tmp_path: Path) -> None:
    src = write(tmp_path / "in.csv", "E-mail,Name,Favourite Colour,2nd choice\nada@example.org,Ada,blue,red\n")
    with pytest.raises(SubscriberError, match="no 'email' column"):
        import_export(src, tmp_path / "news.csv")
    src = write(tmp_path / "in.csv", "Email,Name,Favourite Colour,2nd choice\nada@example.org,Ada,blue,red\n")
    result = import_export(src, tmp_path / "news.csv")
    assert result.source_format == "csv" and result.added == 1
    [ada] = ListReader(tmp_path / "news.csv")
    assert ada.fields == {"favourite_colour": "blue", "f_2nd_choice": "red"} and ada.name == "Ada"
