"""Commands on who may be mailed: subscribers (check, import) and suppressions."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.cli.group import SUPPRESSION_REASONS, main, report_errors
from pipeline.cli.output import emit_json, json_option, print_problems, problem_json
from pipeline.errors import ConfigError, PipelineError

# --- subscribers (issue #3) -------------------------------------------------------------------------


@main.group(examples=("newsletter subscribers check sample",))
def subscribers() -> None:
    """Check and import subscriber lists (subscribers/NAME.csv, personal data kept out of git); erase a reader."""


@subscribers.command("check", examples=("newsletter subscribers check sample",
                                        "newsletter subscribers check sample --json"))
@click.argument("name")
@click.option("--skip-invalid", is_flag=True, help="Report invalid rows but do not fail on them.")
@json_option
@report_errors
def subscribers_check(name: str, skip_invalid: bool, as_json: bool) -> None:
    """Validate list NAME: addresses, duplicates, column names; exit 4 on invalid rows."""
    from pipeline.config import load_config
    from pipeline.errors import SubscriberError
    from pipeline.lists.subscribers import check_list, list_path

    config = load_config()
    path = list_path(config, name)
    reader = check_list(path, base_url=config.base_url)
    print_problems(reader.problems)
    if as_json:
        emit_json({"list": name, "file": str(path), "rows": reader.total, "valid": reader.valid,
                   "invalid": reader.invalid, "duplicates": reader.duplicates, "bad_languages": reader.bad_languages,
                   "problems": [problem_json(p) for p in reader.problems]})
    else:
        bad_languages = f", {reader.bad_languages} with a language that is not a tag" if reader.bad_languages else ""
        click.echo(f"{path.name}: {reader.valid} recipient(s) from {reader.total} row(s); "
                   f"{reader.invalid} invalid, {reader.duplicates} duplicate(s){bad_languages}")
    if reader.invalid and not skip_invalid:
        raise SubscriberError(f"{reader.invalid} invalid row(s) in {path} — correct or delete them, "
                              f"or pass --skip-invalid to send to the valid rows only")


@subscribers.command("import", examples=("newsletter subscribers import mailchimp-subscribed.csv --list readers",))
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--list", "list_name", required=True, metavar="NAME",
              help="List to add to: subscribers/NAME.csv (created if new).")
@report_errors
def subscribers_import(file: Path, list_name: str) -> None:
    """Add the subscribed addresses of a Mailchimp or Substack export (or a CSV with an email column)."""
    from pipeline.config import load_config
    from pipeline.lists.subscribers import import_export, list_path

    config = load_config()
    dest = list_path(config, list_name, must_exist=False)
    result = import_export(file, dest, base_url=config.base_url)
    print_problems(result.problems)
    suppressed = 0
    if result.to_suppress:
        from pipeline.store import open_store

        suppressed = open_store(config).add_suppressions(result.to_suppress, source=f"import {file.name}")
    click.echo(f"{file.name} ({result.source_format}) -> {dest.name}: {result.added} added, "
               f"{result.already_present} already present, {result.invalid} invalid, "
               f"{len(result.to_suppress)} unsubscribed or bounced in the export "
               f"({suppressed} newly suppressed for every list)")


@subscribers.command("erase", examples=("newsletter subscribers erase ada@example.org",
                                        "newsletter subscribers erase ada@example.org grace@example.org --yes --json"))
@click.argument("addresses", metavar="ADDRESS...", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="Erase without asking (required without a terminal).")
@click.option("--outbox", "outboxes", multiple=True, metavar="DIR",
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="An outbox folder of earlier `send --outbox` runs to delete the reader's .eml from (repeatable; "
                   "default: outbox/ of the newsletter, if it exists).")
@json_option
@report_errors
def subscribers_erase(addresses: tuple[str, ...], yes: bool, outboxes: tuple[Path, ...], as_json: bool) -> None:
    """Erase every trace of ADDRESS (a reader's request): send log, suppressions, events, list rows."""
    from pipeline.cli.erase_output import erased_json, show_erased, show_found
    from pipeline.config import load_config
    from pipeline.lists import erasure
    from pipeline.store import open_store

    once: dict[str, str] = {}  # each address once, whatever its case; every one checked before anything is read
    for address in (erasure.checked_address(a) for a in addresses):
        once.setdefault(address.lower(), address)
    wanted = list(once.values())
    config = load_config()
    store = open_store(config)
    try:
        folders = erasure.outbox_folders(config, outboxes)
        found = [erasure.find(config, store, address, outboxes=folders) for address in wanted]
        show_found(found, err=as_json)
        if not yes:
            if not (sys.stdin.isatty() and (sys.stderr if as_json else sys.stdout).isatty()):
                raise ConfigError("there is no terminal to confirm on; nothing was erased — add --yes to erase "
                                  "without asking")
            if not click.confirm(f"Erase {len(found)} address(es) as listed? This cannot be undone", default=False,
                                 err=as_json):
                click.echo("nothing erased", err=as_json)
                return
        done = erasure.erase_all(config, store, found)
    finally:
        store.close()
    show_erased(done, err=as_json)
    if as_json:
        emit_json(erased_json(done))


@subscribers.command("readmit", examples=("newsletter subscribers readmit ada@example.org --yes",))
@click.argument("addresses", metavar="ADDRESS...", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="Readmit without asking (required without a terminal).")
@report_errors
def subscribers_readmit(addresses: tuple[str, ...], yes: bool) -> None:
    """Lift the erase of ADDRESS, on the reader's new request to be mailed: sends created from now on mail it."""
    from pipeline.config import load_config
    from pipeline.lists import erasure
    from pipeline.store import open_store

    wanted = list({a.lower(): a for a in (erasure.checked_address(a, unchanged="nothing was changed")
                                          for a in addresses)}.values())
    store = open_store(load_config())
    try:
        unknown = [a for a in wanted if not store.is_erased(a)]
        if unknown:
            raise PipelineError(f"{', '.join(unknown)}: not erased (the send log has no erase marker of it); nothing "
                                "was changed — check the spelling, or leave it out")
        if not yes:
            if not (sys.stdin.isatty() and sys.stdout.isatty()):
                raise ConfigError("there is no terminal to confirm on; nothing was changed — add --yes to readmit "
                                  "without asking")
            if not click.confirm(f"Readmit {len(wanted)} address(es)? Only on the reader's own new request to be "
                                 "mailed", default=False):
                click.echo("nothing changed")
                return
        for address in wanted:
            store.readmit(address)
            click.echo(f"readmitted {address}: sends created from now on mail it once a list has it again; sends "
                       "created before (which may have mailed it) still skip it")
    finally:
        store.close()


@main.group(examples=("newsletter suppressions list --reason bounced",))
def suppressions() -> None:
    """Addresses never mailed again, on any list: sync from SendGrid, list, add, remove."""


@suppressions.command("sync", examples=("SENDGRID_API_KEY=... newsletter suppressions sync",))
@report_errors
def suppressions_sync() -> None:
    """Pull bounces, blocks, spam reports, invalid emails and (group) unsubscribes from SendGrid."""
    from pipeline.config import load_config
    from pipeline.lists.suppressions import client_fetch, sync
    from pipeline.store import open_store

    config = load_config()
    fetch = client_fetch(timeout=config.sending.timeout_seconds)
    result = sync(open_store(config), fetch, group_id=config.sending.unsubscribe_group_id)
    for kind, fetched in result.fetched.items():
        click.echo(f"{kind:<20} {fetched:>7} at SendGrid, {result.added[kind]:>7} new here")


@suppressions.command("list", examples=("newsletter suppressions list", "newsletter suppressions list --json",
                                        "newsletter suppressions list --reason bounced"))
@click.option("--reason", metavar="REASON", type=click.Choice(SUPPRESSION_REASONS), help="Only this reason.")
@json_option
@report_errors
def suppressions_list(reason: str | None, as_json: bool) -> None:
    """Print every suppression: address, reason, source, time (tab-separated)."""
    from pipeline.config import load_config
    from pipeline.store import open_store

    rows = [s for s in open_store(load_config()).list_suppressions() if reason in (None, s.reason)]
    if as_json:
        emit_json([{"email": s.email, "reason": s.reason, "source": s.source, "created_at": s.created_at}
                   for s in rows])
        return
    for s in rows:
        click.echo(f"{s.email}\t{s.reason}\t{s.source}\t{s.created_at}")
    click.echo(f"{len(rows)} suppressed address(es)", err=True)


@suppressions.command("add", examples=("newsletter suppressions add someone@example.org",))
@click.argument("address")
@click.option("--reason", metavar="REASON", type=click.Choice(SUPPRESSION_REASONS), default="manual",
              show_default=True, help="Why the address is suppressed.")
@report_errors
def suppressions_add(address: str, reason: str) -> None:
    """Never mail ADDRESS again, on any list."""
    from pipeline.config import load_config
    from pipeline.lists.suppressions import normalise_address
    from pipeline.store import open_store

    email = normalise_address(address)
    store = open_store(load_config())
    if store.is_erased(email):  # its marker suppresses it: the address itself is not stored again
        click.echo(f"{email} was erased on request and is never mailed; its address is not stored again")
        return
    added = store.add_suppression(email, reason=reason, source="cli")
    click.echo(f"suppressed {email}" if added else f"{email} was already suppressed (its first reason is kept)")


@suppressions.command("remove", examples=("newsletter suppressions remove someone@example.org",))
@click.argument("address")
@report_errors
def suppressions_remove(address: str) -> None:
    """Allow mail to ADDRESS again (a later sync re-adds it while SendGrid still suppresses it)."""
    from pipeline.config import load_config
    from pipeline.lists.suppressions import normalise_address
    from pipeline.store import open_store

    email = normalise_address(address)
    store = open_store(load_config())
    before = next((s for s in store.list_suppressions() if s.email.lower() == email.lower()), None)
    if before is None and store.is_erased(email):
        raise PipelineError(f"{email} was erased on request: its erase marker, not a suppression, keeps it from being "
                            f"mailed — if the reader asked to be mailed again, run `newsletter subscribers readmit "
                            f"{email}`")
    if before is None or not store.remove_suppression(email):
        raise PipelineError(f"{email} is not suppressed — check the spelling with `newsletter suppressions list`")
    click.echo(f"removed {email} (was {before.reason}, from {before.source})")
