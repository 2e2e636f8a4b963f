"""The `newsletter` command: the only module that knows about click, messages and exit codes.

Commands stay thin: parse options, call the library, print. Heavy packages (mjml, premailer, sendgrid,
starlette) are imported inside the commands so that `--help` and `build` start fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from pipeline.errors import IssueError, PipelineError, Problem

F = TypeVar("F", bound=Callable[..., Any])
_finished: list[bool] = []  # set by commands that end with everything written and closed (see `run`)


def _report_errors(func: F) -> F:
    """Turn a PipelineError into its message and exit code; a traceback only with --debug."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            if click.get_current_context().find_root().obj.get("debug"):
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _print_problems(problems: list[Problem]) -> None:
    for problem in problems:
        click.secho(str(problem), fg="red" if problem.blocking else "yellow", err=True)


def run() -> None:
    """The `newsletter` process (console script and `python -m pipeline`).

    After `build` or `check` has written and closed everything, the process ends at once instead of
    letting the interpreter tear down the few hundred modules a build imports: that teardown costs
    35–40 ms, a sixth of a cold build. Other commands (and tests that invoke `main`) exit normally.
    """
    try:
        main()
    except SystemExit as exc:
        if not (_finished and exc.code in (None, 0)):
            raise
    if _finished:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say anyway
                stream.flush()
        os._exit(0)


issue_dir = click.argument("issue_dir", type=click.Path(path_type=Path, file_okay=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line error messages.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Compile newsletter issues into email and send them exactly once."""
    ctx.obj = {"debug": debug}


# --- build (issue #2) -------------------------------------------------------------------------------


@main.command()
@issue_dir
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Output folder (default: build/<issue folder name>).")
@_report_errors
def build(issue_dir: Path, out: Path | None) -> None:
    """Compile ISSUE_DIR into email.html, email.txt, email.mjml and manifest.json."""
    from pipeline.build import build_issue
    from pipeline.config import load_config

    result = build_issue(issue_dir, load_config(), out=out)
    _print_problems([p for p in result.problems if not p.blocking])
    sizes = [f"{language} {data['sizes']['encoded_message_bytes'] / 1000:.1f} KB"
             for language, (_, data) in result.editions.items()]
    if len(sizes) == 1:
        click.echo(f"built {result.out} ({sizes[0].split(' ', 1)[1]} encoded)")
    else:
        click.echo(f"built {result.out}: {len(sizes)} editions ({', '.join(sizes)} encoded)")
    _finished.append(True)


@main.command()
@issue_dir
@_report_errors
def check(issue_dir: Path) -> None:
    """Report every problem of ISSUE_DIR; exit non-zero on blocking ones."""
    from pipeline.checks import check_issue
    from pipeline.config import load_config

    problems = check_issue(issue_dir, load_config())
    _print_problems(problems)
    blocking = sum(p.blocking for p in problems)
    if blocking:
        raise IssueError(f"{blocking} blocking problem(s) in {issue_dir}; fix them and run check again")
    click.echo(f"{issue_dir}: ok ({len(problems)} warning(s))")
    _finished.append(True)


@main.command()
@issue_dir
@click.option("--port", default=8025, show_default=True, help="Port on 127.0.0.1.")
@click.option("--screenshot", type=click.Path(path_type=Path, file_okay=False),
              help="Write PNGs at 375 and 600 px wide to this folder with headless Chromium, then exit.")
@_report_errors
def preview(issue_dir: Path, port: int, screenshot: Path | None) -> None:
    """Serve the built email on 127.0.0.1 and rebuild when the issue or templates change."""
    from pipeline.config import load_config
    from pipeline.preview import screenshots, serve

    config = load_config()
    if screenshot is not None:
        for path in screenshots(issue_dir, config, screenshot, warn=lambda message: click.echo(message, err=True)):
            click.echo(f"wrote {path}")
        return
    serve(issue_dir, config, port=port, echo=click.echo)


# --- send (issue #3) ------------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar with counts and ETA on a terminal; plain log lines (every 10 %) otherwise."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.total = self.done = self.step = 0

    def start(self, total: int) -> None:
        self.total, self.step = total, max(1, total // 10)
        if sys.stderr.isatty() and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="rcpt", file=sys.stderr, dynamic_ncols=True)

    def advance(self, sent: int) -> None:
        before, self.done = self.done, self.done + sent
        if self.bar is not None:
            self.bar.update(sent)
        elif self.done // self.step != before // self.step or self.done == self.total:
            click.echo(f"sent {self.done}/{self.total}", err=True)

    def note(self, message: str) -> None:
        (self.bar.write if self.bar is not None else lambda m: click.echo(m, err=True))(f"warning: {message}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _log_to_stderr() -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("pipeline")
    if not logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


@main.command()
@issue_dir
@click.option("--list", "list_name", required=True, metavar="NAME", help="The list: subscribers/NAME.csv.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@click.option("--outbox", type=click.Path(path_type=Path, file_okay=False),
              help="Write one personalised .eml per recipient to this folder instead of sending (no key needed).")
@click.option("--test", "test_address", metavar="ADDRESS",
              help="Send one copy marked [TEST] to ADDRESS; not logged as a delivery.")
@click.option("--at", metavar="TIME", help="Schedule: ISO 8601 with offset, at most 72 h ahead.")
@click.option("--resend-in-doubt", is_flag=True, help="Also send to recipients whose request got no answer.")
@click.option("--skip-invalid", is_flag=True, help="Leave out bad rows of the list instead of stopping.")
@click.option("--allow-changed-content", is_flag=True,
              help="Resume a send even though the issue changed since it began.")
@_report_errors
def send(issue_dir: Path, list_name: str, yes: bool, outbox: Path | None, test_address: str | None,
         at: str | None, resend_in_doubt: bool, skip_invalid: bool, allow_changed_content: bool) -> None:
    """Send ISSUE_DIR to a list exactly once (resumable; see `newsletter status`)."""
    from pipeline.config import load_config
    from pipeline.errors import SendError
    from pipeline.plan import SendOptions
    from pipeline.send import SendJob

    if not yes and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise SendError("there is no terminal to confirm on — add --yes to send without asking")
    _log_to_stderr()
    config = load_config()
    options = SendOptions(list_name=list_name, outbox=outbox, test_address=test_address, at=at,
                          resend_in_doubt=resend_in_doubt, skip_invalid=skip_invalid,
                          allow_changed_content=allow_changed_content)
    with SendJob(issue_dir, config, options) as job:
        plan = job.prepare()
        _print_problems(list(plan.problems))
        target = f"outbox {outbox}" if outbox else "SendGrid"
        click.echo(f"issue:      {plan.issue}\nsubject:    {plan.subject}\nsender:     {plan.sender}")
        if plan.test_address:
            click.echo(f"test copy:  to {plan.test_address} via {target} (not logged as a delivery)")
        else:
            click.echo(f"list:       {plan.list_name} ({plan.listed} recipients)\nvia:        {target}")
            if plan.resumed:
                click.echo(f"resuming:   {plan.accepted} already accepted, {plan.in_doubt} in doubt")
            click.echo(f"to send:    {plan.to_send}")
        if plan.send_at:
            import datetime as dt

            click.echo(f"scheduled:  {dt.datetime.fromtimestamp(plan.send_at, dt.UTC).isoformat()}")
        if plan.to_send == 0:
            click.echo("nothing to send")
            in_doubt = plan.in_doubt
        elif not yes and not click.confirm(f"Send to {plan.to_send} recipient(s)?", default=False):
            job.cancel()
            click.echo("nothing sent")
            return
        else:
            progress = _Progress()
            try:
                summary = job.run(progress)
            finally:
                progress.close()
            verb = "written" if outbox else "accepted"
            click.echo(f"{summary.accepted} {verb} in {summary.requests} request(s), {summary.seconds:.1f} s")
            in_doubt = summary.remaining.get("in_doubt", 0)
    if in_doubt:
        raise SendError(f"{in_doubt} recipient(s) are in doubt (their request got no answer; they may have been "
                        f"sent) — list them with `newsletter status {issue_dir}`, then run this command again with "
                        "--resend-in-doubt to send them again, or leave them")


@main.command()
@issue_dir
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_report_errors
def status(issue_dir: Path, as_json: bool) -> None:
    """Per list: accepted / pending / in doubt / failed, send times, build hash; in-doubt recipients."""
    import json

    from pipeline.config import load_config
    from pipeline.status import COUNTED, issue_status

    report = issue_status(load_config(), issue_dir)
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    if not report["lists"] and not report["outbox"]:
        click.echo(f"issue {report['issue']}: not sent to any list yet")
    for kind, lists in (("list", report["lists"]), ("outbox run for list", report["outbox"])):
        for name, entry in lists.items():
            counts = ", ".join(f"{entry[k]} {k.replace('_', ' ')}" for k in COUNTED)
            click.echo(f"{kind} {name}: {counts}")
            click.echo(f"  first sent {entry['first_sent_at'] or '-'}, last sent {entry['last_sent_at'] or '-'}, "
                       f"build {entry['content_hash'][:12]}, {'finished' if entry['finished_at'] else 'not finished'}")
            if entry["in_doubt_recipients"]:
                click.echo(f"  in doubt ({entry['in_doubt']}): their request got no answer (a crash leaves at most "
                           "sending.concurrency requests so); they may have received "
                           f"it. Check SendGrid's activity feed, then resend with `newsletter send {issue_dir} "
                           f"--list {name} --resend-in-doubt`, or leave them:")
                for address in entry["in_doubt_recipients"]:
                    click.echo(f"    {address}")


# --- subscribers (issue #3) -------------------------------------------------------------------------


@main.group()
def subscribers() -> None:
    """Check and import subscriber lists (subscribers/NAME.csv, personal data kept out of git)."""


@subscribers.command("check")
@click.argument("name")
@click.option("--skip-invalid", is_flag=True, help="Report invalid rows but do not fail on them.")
@_report_errors
def subscribers_check(name: str, skip_invalid: bool) -> None:
    """Validate list NAME: addresses, duplicates, column names; exit non-zero on invalid rows."""
    from pipeline.config import load_config
    from pipeline.errors import SubscriberError
    from pipeline.subscribers import check_list, list_path

    config = load_config()
    path = list_path(config, name)
    reader = check_list(path, base_url=config.base_url)
    _print_problems(reader.problems)
    click.echo(f"{path.name}: {reader.valid} recipient(s) from {reader.total} row(s); "
               f"{reader.invalid} invalid, {reader.duplicates} duplicate(s)")
    if reader.invalid and not skip_invalid:
        raise SubscriberError(f"{reader.invalid} invalid row(s) in {path} — correct or delete them, "
                              f"or pass --skip-invalid to send to the valid rows only")


@subscribers.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--list", "list_name", required=True, help="List to add to: subscribers/NAME.csv (created if new).")
@_report_errors
def subscribers_import(file: Path, list_name: str) -> None:
    """Add the subscribed addresses of a Mailchimp or Substack export (or a CSV with an email column)."""
    from pipeline.config import load_config
    from pipeline.subscribers import import_export, list_path

    config = load_config()
    dest = list_path(config, list_name, must_exist=False)
    result = import_export(file, dest)
    _print_problems(result.problems)
    suppressed = 0
    if result.to_suppress:
        from pipeline.store import open_store

        suppressed = open_store(config).add_suppressions(result.to_suppress, source=f"import {file.name}")
    click.echo(f"{file.name} ({result.source_format}) -> {dest.name}: {result.added} added, "
               f"{result.already_present} already present, {result.invalid} invalid, "
               f"{len(result.to_suppress)} unsubscribed or bounced in the export "
               f"({suppressed} newly suppressed for every list)")


# --- serve, suppressions, archive, report (issue #4) ------------------------------------------------


all_issues_option = click.option("--all-issues", is_flag=True,
                                  help="Publish every valid issue, not only those the send log has sent.")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, help="Port to listen on.")
@click.option("--root-path", default="", help="Path prefix the reverse proxy publishes us under (and strips).")
@click.option("--forwarded-allow-ips", default="127.0.0.1", show_default=True,
              help="Proxies whose X-Forwarded-For/-Proto headers are trusted (comma-separated, or *).")
@click.option("--no-webhook", is_flag=True, help="Run without SENDGRID_WEBHOOK_PUBLIC_KEY (the webhook answers 503).")
@all_issues_option
@_report_errors
def serve(host: str, port: int, root_path: str, forwarded_allow_ips: str, no_webhook: bool, all_issues: bool) -> None:
    """Serve unsubscribe links, the SendGrid Event Webhook and the archive (NEWSLETTER_SECRET required)."""
    import os

    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.tokens import SECRET_ENV, secret_from_env
    from pipeline.web import Settings
    from pipeline.web import serve as run
    from pipeline.webhook import public_key_from_env

    config = load_config()
    if not os.environ.get(SECRET_ENV):
        raise ConfigError(f"{SECRET_ENV} is not set — serve checks unsubscribe links with the secret the send "
                          f"signed them with: export {SECRET_ENV}=<the same value> (see README, Deploying serve)")
    secret = secret_from_env()
    key = None if no_webhook else public_key_from_env()
    from pipeline.store import open_store

    settings = Settings(config=config, secret=secret, webhook_key=key, open_store=lambda: open_store(config),
                        published=(lambda: None) if all_issues else None)
    run(settings, host=host, port=port, root_path=root_path.rstrip("/"), forwarded_allow_ips=forwarded_allow_ips,
        echo=click.echo)


@main.group()
def suppressions() -> None:
    """Addresses never mailed again, on any list: sync from SendGrid, list, add, remove."""


@suppressions.command("sync")
@_report_errors
def suppressions_sync() -> None:
    """Pull bounces, blocks, spam reports, invalid emails and (group) unsubscribes from SendGrid."""
    from pipeline.config import load_config
    from pipeline.store import open_store
    from pipeline.suppressions import client_fetch, sync

    config = load_config()
    fetch = client_fetch(timeout=config.sending.timeout_seconds)
    result = sync(open_store(config), fetch, group_id=config.sending.unsubscribe_group_id)
    for kind, fetched in result.fetched.items():
        click.echo(f"{kind:<20} {fetched:>7} at SendGrid, {result.added[kind]:>7} new here")


@suppressions.command("list")
@click.option("--reason", help="Only this reason (unsubscribed, bounced, blocked, complained, invalid, manual).")
@_report_errors
def suppressions_list(reason: str | None) -> None:
    """Print every suppression: address, reason, source, time (tab-separated)."""
    from pipeline.config import load_config
    from pipeline.store import open_store

    rows = [s for s in open_store(load_config()).list_suppressions() if reason in (None, s.reason)]
    for s in rows:
        click.echo(f"{s.email}\t{s.reason}\t{s.source}\t{s.created_at}")
    click.echo(f"{len(rows)} suppressed address(es)", err=True)


@suppressions.command("add")
@click.argument("address")
@click.option("--reason", default="manual", show_default=True, help="Why the address is suppressed.")
@_report_errors
def suppressions_add(address: str, reason: str) -> None:
    """Never mail ADDRESS again, on any list."""
    from pipeline.config import load_config
    from pipeline.store import open_store
    from pipeline.suppressions import normalise_address

    email = normalise_address(address)
    added = open_store(load_config()).add_suppression(email, reason=reason, source="cli")
    click.echo(f"suppressed {email}" if added else f"{email} was already suppressed (its first reason is kept)")


@suppressions.command("remove")
@click.argument("address")
@_report_errors
def suppressions_remove(address: str) -> None:
    """Allow mail to ADDRESS again (a later sync re-adds it while SendGrid still suppresses it)."""
    from pipeline.config import load_config
    from pipeline.store import open_store
    from pipeline.suppressions import normalise_address

    email = normalise_address(address)
    store = open_store(load_config())
    before = next((s for s in store.list_suppressions() if s.email.lower() == email.lower()), None)
    if before is None or not store.remove_suppression(email):
        raise PipelineError(f"{email} is not suppressed — check the spelling with `newsletter suppressions list`")
    click.echo(f"removed {email} (was {before.reason}, from {before.source})")


@main.command()
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder to write; publish it as <base_url>/archive/.")
@all_issues_option
@_report_errors
def archive(out: Path, all_issues: bool) -> None:
    """Write the web archive as static files: index, one page per issue, images, feed.xml."""
    from pipeline.archive import Archive
    from pipeline.config import load_config
    from pipeline.store import database_url, open_store

    config = load_config()

    def published() -> set[str] | None:  # None: every valid issue; no send log yet: nothing is public
        if all_issues or not (database_url() or config.sendlog_path.is_file()):
            return None if all_issues else set()
        return open_store(config).sent_issues()

    written, problems = Archive(config, published=published).write(out)
    _print_problems(problems)
    pages = sum(p.name == "index.html" for p in written) - 2  # the index and the unsubscribe page
    click.echo(f"wrote {len(written)} files to {out} ({pages} issue(s))")
    if pages == 0 and not all_issues:
        click.secho("no issue has been sent yet: pass --all-issues to publish every valid issue", fg="yellow",
                    err=True)


@main.command()
@issue_dir
@click.option("--html", "html_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write a one-page HTML report with a chart of opens and clicks.")
@_report_errors
def report(issue_dir: Path, html_file: Path | None) -> None:
    """Delivered, bounced, dropped, spam reports, unsubscribes, opens and clicks per link, per list."""
    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.report import build_report, html_report, text_report
    from pipeline.store import database_url, open_store

    config = load_config()
    path = config.sendlog_path
    if not database_url() and not path.is_file():
        raise ConfigError(f"no send log at {path} — run the report where the issue was sent from, or set "
                          "NEWSLETTER_DATABASE_URL to the shared database")
    result = build_report(open_store(config), issue_dir.resolve().name)
    click.echo(text_report(result), nl=False)
    if html_file is not None:
        html_file.write_text(html_report(result), "utf-8")
        click.echo(f"wrote {html_file}")


# --- the database: migrations and moving to PostgreSQL ---------------------------------------------------


@main.group()
def db() -> None:
    """The store: SQLite in .newsletter/ (default) or PostgreSQL at NEWSLETTER_DATABASE_URL."""


@db.command("migrate")
@_report_errors
def db_migrate() -> None:
    """Apply the store's pending migrations (PostgreSQL needs this once per release; SQLite does it itself)."""
    from pipeline.config import load_config
    from pipeline.store import open_store

    store = open_store(load_config(), migrate=True)
    applied = store.applied_migrations()
    click.echo(f"{store.where}: {len(applied)} migration(s) applied, none pending ({applied[-1]})")


@db.command("copy")
@click.option("--to", "url", required=True, metavar="URL",
              help="PostgreSQL URL of the new, empty database, e.g. postgresql://newsletter@db.example.org/newsletter.")
@_report_errors
def db_copy(url: str) -> None:
    """Move this machine's SQLite send log, suppressions and events into PostgreSQL, and verify the counts."""
    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.store import open_store
    from pipeline.store._copy import copy_store
    from pipeline.store._sqlite import SQLiteStore

    config = load_config()
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("--to must be a PostgreSQL URL (postgresql://user@host/database) — the password can "
                          "come from PGPASSWORD or ~/.pgpass instead of the URL")
    if not config.sendlog_path.is_file():
        raise ConfigError(f"no SQLite send log at {config.sendlog_path} — run the copy in the newsletter folder "
                          "that sent the issues")
    source = SQLiteStore(config.sendlog_path, state_dir=config.state_dir)
    target = open_store(config, url=url, migrate=True)
    counts = copy_store(source, target)
    click.echo(f"copied to {target.where}: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
    click.echo("set NEWSLETTER_DATABASE_URL to that URL (with its password) wherever the newsletter sends or "
               "serves; keep the SQLite file as a backup")
