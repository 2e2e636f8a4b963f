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

from pipeline import __version__
from pipeline.cli.help import Group, no_color
from pipeline.cli.output import emit_json, json_option, print_problems, problem_json
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
            click.echo("interrupted (Ctrl-C) — run the same command again to start over", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _print_problems(problems: list[Problem]) -> None:
    print_problems(problems)


def run() -> None:
    """The `newsletter` process (console script and `python -m pipeline`).

    After `build` or `check` has written and closed everything, the process ends at once instead of
    letting the interpreter tear down the few hundred modules a build imports: that teardown costs
    35–40 ms, a sixth of a cold build. Other commands (and tests that invoke `main`) exit normally.
    """
    try:
        main(prog_name="newsletter")
    except SystemExit as exc:
        if not (_finished and exc.code in (None, 0)):
            raise
    if _finished:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say anyway
                stream.flush()
        os._exit(0)


issue_dir = click.argument("issue_dir", type=click.Path(path_type=Path, file_okay=False))
# One metavar per concept: ISSUE_DIR, DIR (a folder), FILE, NAME (a list), ADDRESS, PORT, TIME.
out_dir = click.Path(path_type=Path, file_okay=False)
SUPPRESSION_REASONS = ("unsubscribed", "bounced", "blocked", "invalid", "complained", "manual")  # sendlog.REASONS
WORKFLOW = ("init", "new", "check", "build", "preview", "send", "status", "pause", "resume", "cancel", "serve",
            "report", "archive", "subscribers", "suppressions")


@click.group(cls=Group, order=WORKFLOW, context_settings={"help_option_names": ["-h", "--help"]}, examples=(
    "newsletter init mynews && cd mynews      # a newsletter of your own",
    "newsletter check issues/001-*            # then build, preview, send --outbox",
    "newsletter build issues/001-* --debug    # --debug works before or after the command",
))
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line error messages.")
@click.version_option(__version__, "-V", "--version", prog_name="newsletter", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Compile newsletter issues into email and send them exactly once.

    Every command finds the newsletter by looking for newsletter.yaml from the current folder upward.
    Colour only on a terminal, and never with NO_COLOR set.
    """
    ctx.obj = {**(ctx.obj or {}), "debug": debug or (ctx.obj or {}).get("debug", False)}
    if no_color():
        ctx.color = False


# --- init, new (issue #13) ----------------------------------------------------------------------------


@main.command(examples=("newsletter init mynews",
                        "newsletter init . --name 'Smart City Weekly' --sender me@example.org"))
@click.argument("folder", metavar="DIR", type=out_dir)
@click.option("--name", metavar="TITLE", help="The newsletter's name (default: from DIR).")
@click.option("--sender", metavar="ADDRESS", default="editor@example.org", show_default=True,
              help="The From address.")
@_report_errors
def init(folder: Path, name: str | None, sender: str) -> None:
    """Create a working newsletter in DIR: config, the default theme, a first issue, a sample list, .gitignore."""
    from pipeline.scaffold import init_newsletter

    written = init_newsletter(folder, name=name, sender=sender)
    issue = next(p.parent for p in written if p.name == "issue.yaml").relative_to(folder)
    click.echo(f"created {folder} ({len(written)} files). Next:\n  cd {folder}\n  newsletter check {issue}\n"
               f"  newsletter preview {issue}\n  newsletter send {issue} --list sample --outbox outbox")


@main.command(examples=("newsletter new",))
@_report_errors
def new() -> None:
    """Create the next issue folder: issues/<next number>-<today>/, with an issue.yaml and one article to edit."""
    from pipeline.config import load_config
    from pipeline.scaffold import new_issue

    config = load_config()
    folder = new_issue(config)
    click.echo(f"created {folder.relative_to(config.root)} — edit its issue.yaml and articles/, then run "
               f"`newsletter preview {folder.relative_to(config.root)}`")


# --- build (issue #2) -------------------------------------------------------------------------------


@main.command(examples=("newsletter build issues/027-2022-04-01",
                        "newsletter build issues/027-2022-04-01 --out /tmp/build --debug"))
@issue_dir
@click.option("--out", metavar="DIR", type=out_dir, help="Output folder (default: build/<issue folder name>).")
@_report_errors
def build(issue_dir: Path, out: Path | None) -> None:
    """Compile ISSUE_DIR into email.html, email.txt, email.mjml and manifest.json."""
    from pipeline.build.builder import build_issue
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


@main.command(examples=("newsletter check issues/027-2022-04-01",
                        "newsletter check issues/027-2022-04-01 --json"))
@issue_dir
@json_option
@_report_errors
def check(issue_dir: Path, as_json: bool) -> None:
    """Report every problem of ISSUE_DIR at once; exit 3 on blocking ones."""
    from pipeline.build.checks import check_issue
    from pipeline.config import load_config

    problems = check_issue(issue_dir, load_config())
    _print_problems(problems)
    blocking = sum(p.blocking for p in problems)
    if as_json:
        emit_json({"issue": issue_dir.resolve().name, "ok": not blocking, "errors": blocking,
                   "warnings": len(problems) - blocking, "problems": [problem_json(p) for p in problems]})
    if blocking:
        raise IssueError(f"{blocking} blocking problem(s) in {issue_dir}; fix them and run check again")
    if not as_json:
        click.echo(f"{issue_dir}: ok ({len(problems)} warning(s))")
    _finished.append(True)


@main.command(examples=("newsletter preview issues/027-2022-04-01",
                        "newsletter preview issues/027-2022-04-01 --screenshot shots"))
@issue_dir
@click.option("--port", metavar="PORT", default=8025, show_default=True, help="Port on 127.0.0.1.")
@click.option("--screenshot", metavar="DIR", type=out_dir,
              help="Write PNGs at 375 and 600 px wide to DIR with headless Chromium, then exit "
                   "(needs the screenshots extra).")
@_report_errors
def preview(issue_dir: Path, port: int, screenshot: Path | None) -> None:
    """Serve the built email on 127.0.0.1 and rebuild when the issue or templates change."""
    from pipeline.build.preview import screenshots, serve
    from pipeline.config import load_config

    config = load_config()
    if screenshot is not None:
        import importlib.util

        if importlib.util.find_spec("playwright") is None:
            raise PipelineError("--screenshot needs Playwright, which is not installed — add it with "
                                "pip install 'newsletter-pipeline[screenshots]' (or .venv/bin/pip install -e "
                                "'.[screenshots]' in a clone)")
        for path in screenshots(issue_dir, config, screenshot, warn=lambda message: click.echo(message, err=True)):
            click.echo(f"wrote {path}")
        return
    serve(issue_dir, config, port=port, echo=click.echo)


# --- send (issue #3) ------------------------------------------------------------------------------------


@main.command(examples=("newsletter send issues/027-2022-04-01 --list sample --outbox outbox",
                        "newsletter send issues/027-2022-04-01 --list sample --test me@example.net",
                        "newsletter send issues/027-2022-04-01 --list readers --yes --json"))
@issue_dir
@click.option("--list", "list_name", required=True, metavar="NAME", help="The list: subscribers/NAME.csv.")
@click.option("--yes", is_flag=True, help="Send without asking (required for a real send without a terminal).")
@click.option("--outbox", metavar="DIR", type=out_dir,
              help="Write one personalised .eml per recipient to DIR instead of sending (no key, no question).")
@click.option("--test", "test_address", metavar="ADDRESS",
              help="Send one copy marked [TEST] to ADDRESS; not logged as a delivery.")
@click.option("--language", metavar="TAG",
              help="With --test: the edition to send (e.g. ko); default: the list's first recipient's.")
@click.option("--at", metavar="TIME", help="Schedule: ISO 8601 with offset, at most 72 h ahead.")
@click.option("--resend-in-doubt", is_flag=True, help="Also send to recipients whose request got no answer.")
@click.option("--resend-cancelled", is_flag=True,
              help="Send again what a cancelled scheduled send held (a new batch; add --at for a new time).")
@click.option("--skip-invalid", is_flag=True, help="Leave out bad rows of the list instead of stopping.")
@click.option("--allow-changed-content", is_flag=True,
              help="Resume a send even though the issue changed since it began.")
@json_option
@_report_errors
def send(issue_dir: Path, list_name: str, yes: bool, outbox: Path | None, test_address: str | None,
         language: str | None, at: str | None, resend_in_doubt: bool, resend_cancelled: bool, skip_invalid: bool,
         allow_changed_content: bool, as_json: bool) -> None:
    """Send ISSUE_DIR to a list exactly once; run it again to resume (see `newsletter status`)."""
    from pipeline.cli.send_output import (
        EXIT_CODES,
        Progress,
        editions_line,
        interrupted,
        log_to_stderr,
        show_plan,
        stop_on_signals,
        summary_json,
    )
    from pipeline.config import load_config
    from pipeline.errors import SendError
    from pipeline.send.job import SendJob
    from pipeline.send.plan import SendOptions, Summary

    if language is not None and test_address is None:
        raise SendError("--language picks a test copy's edition and needs --test ADDRESS; a send to a list gives "
                        "each recipient the edition of their `language` column — drop --language, or add --test")
    ask = not yes and outbox is None  # an outbox run only writes files: nothing to confirm
    if ask and not (sys.stdin.isatty() and (sys.stderr if as_json else sys.stdout).isatty()):
        raise SendError("there is no terminal to confirm on — add --yes to send without asking")
    log_to_stderr()
    config = load_config()
    options = SendOptions(list_name=list_name, outbox=outbox, test_address=test_address, at=at,
                          resend_in_doubt=resend_in_doubt, skip_invalid=skip_invalid,
                          allow_changed_content=allow_changed_content, language=language,
                          resend_cancelled=resend_cancelled)
    summary: Summary | None = None
    stopped = ""
    with SendJob(issue_dir, config, options) as job:
        plan = job.prepare()
        _print_problems(list(plan.problems))
        show_plan(plan, outbox, err=as_json)
        if plan.to_send == 0:
            click.echo("nothing to send", err=as_json)
            in_doubt = plan.in_doubt
        elif ask and not click.confirm(f"Send to {plan.to_send} recipient(s)?", default=False, err=as_json):
            job.cancel()
            click.echo("nothing sent", err=as_json)
            return
        else:
            progress = Progress()
            with stop_on_signals(job.request_stop) as received:
                try:
                    summary = job.run(progress)
                except KeyboardInterrupt:
                    stopped = received[0] if received else "Ctrl-C"
                finally:
                    progress.close()
            if summary is not None:
                verb = "written" if outbox else "accepted"
                click.echo(f"{summary.accepted} {verb} in {summary.requests} request(s), {summary.seconds:.1f} s",
                           err=as_json)
                if len(summary.editions) > 1:
                    click.echo(editions_line(summary.editions), err=as_json)
                in_doubt = summary.remaining.get("in_doubt", 0)
    if stopped:  # the lock is released and the send log closed: what is recorded is final
        click.echo(interrupted(config, plan, issue_dir, outbox, progress.done, by=stopped), err=True)
        sys.exit(EXIT_CODES.get(stopped, 130))
    if as_json:
        emit_json(summary_json(plan, summary))
    if in_doubt:
        raise SendError(f"{in_doubt} recipient(s) are in doubt (their request got no answer; they may have been "
                        f"sent) — list them with `newsletter status {issue_dir}`, then run this command again with "
                        "--resend-in-doubt to send them again, or leave them")


@main.command(examples=("newsletter status issues/027-2022-04-01",
                        "newsletter status issues/027-2022-04-01 --json"))
@issue_dir
@json_option
@_report_errors
def status(issue_dir: Path, as_json: bool) -> None:
    """Per list: accepted, pending, in doubt and failed recipients, send times, build hash; the in-doubt ones."""
    from pipeline.cli.send_output import editions_line
    from pipeline.config import load_config
    from pipeline.send.status import COUNTED, issue_status

    report = issue_status(load_config(), issue_dir)
    if as_json:
        emit_json(report)
        return
    if not report["lists"] and not report["outbox"]:
        click.echo(f"issue {report['issue']}: not sent to any list yet")
    for kind, lists in (("list", report["lists"]), ("outbox run for list", report["outbox"])):
        for name, entry in lists.items():
            counts = ", ".join(f"{entry[k]} {k.replace('_', ' ')}" for k in COUNTED)
            click.echo(f"{kind} {name}: {counts}")
            if len(entry["editions"]) > 1:
                click.echo("  " + editions_line(entry["editions"]))
            click.echo(f"  first sent {entry['first_sent_at'] or '-'}, last sent {entry['last_sent_at'] or '-'}, "
                       f"build {entry['content_hash'][:12]}, {'finished' if entry['finished_at'] else 'not finished'}")
            if entry.get("schedule_state"):
                undo = "resume" if entry["schedule_state"] == "paused" else "send"
                extra = "" if undo == "resume" else " --resend-cancelled"
                click.echo(f"  {entry['schedule_state']} on {entry['schedule_changed_at']} (SendGrid batch "
                           f"{entry['batch_id']}); `newsletter {undo} {issue_dir} --list {name}{extra}` sends it")
            if entry["in_doubt_recipients"]:
                click.echo(f"  in doubt ({entry['in_doubt']}): their request got no answer (a crash leaves at most "
                           "sending.concurrency requests so); they may have received "
                           f"it. Check SendGrid's activity feed, then resend with `newsletter send {issue_dir} "
                           f"--list {name} --resend-in-doubt`, or leave them:")
                for address in entry["in_doubt_recipients"]:
                    click.echo(f"    {address}")


# --- cancel, pause, resume scheduled mail (issue #12) ----------------------------------------------------


def _change_schedule(issue_dir: Path, list_name: str, action: str) -> None:
    from pipeline.config import load_config
    from pipeline.send.schedule import change_schedule

    changed = change_schedule(load_config(), issue_dir, list_name, action, environ=os.environ)
    click.echo(f"{changed.send.issue} to list {list_name}: {changed.message}")


_list_option = click.option("--list", "list_name", required=True, metavar="NAME",
                            help="The list the issue was sent to with --at.")


@main.command(examples=("newsletter cancel issues/027-2022-04-01 --list readers",))
@issue_dir
@_list_option
@_report_errors
def cancel(issue_dir: Path, list_name: str) -> None:
    """Cancel mail scheduled with `send --at` (up to 10 minutes before its time); SendGrid discards it."""
    _change_schedule(issue_dir, list_name, "cancel")


@main.command(examples=("newsletter pause issues/027-2022-04-01 --list readers",))
@issue_dir
@_list_option
@_report_errors
def pause(issue_dir: Path, list_name: str) -> None:
    """Pause mail scheduled with `send --at` (up to 10 minutes before its time) until `resume`."""
    _change_schedule(issue_dir, list_name, "pause")


@main.command(examples=("newsletter resume issues/027-2022-04-01 --list readers",))
@issue_dir
@_list_option
@_report_errors
def resume(issue_dir: Path, list_name: str) -> None:
    """Lift a pause (or a cancel, before its time): SendGrid sends at the scheduled time, or now if past."""
    _change_schedule(issue_dir, list_name, "resume")


# --- subscribers (issue #3) -------------------------------------------------------------------------


@main.group(examples=("newsletter subscribers check sample",))
def subscribers() -> None:
    """Check and import subscriber lists (subscribers/NAME.csv, personal data kept out of git)."""


@subscribers.command("check", examples=("newsletter subscribers check sample",
                                        "newsletter subscribers check sample --json"))
@click.argument("name")
@click.option("--skip-invalid", is_flag=True, help="Report invalid rows but do not fail on them.")
@json_option
@_report_errors
def subscribers_check(name: str, skip_invalid: bool, as_json: bool) -> None:
    """Validate list NAME: addresses, duplicates, column names; exit 4 on invalid rows."""
    from pipeline.config import load_config
    from pipeline.errors import SubscriberError
    from pipeline.lists.subscribers import check_list, list_path

    config = load_config()
    path = list_path(config, name)
    reader = check_list(path, base_url=config.base_url)
    _print_problems(reader.problems)
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
@_report_errors
def subscribers_import(file: Path, list_name: str) -> None:
    """Add the subscribed addresses of a Mailchimp or Substack export (or a CSV with an email column)."""
    from pipeline.config import load_config
    from pipeline.lists.subscribers import import_export, list_path

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


@main.command(examples=("NEWSLETTER_SECRET=... newsletter serve --no-webhook",
                        "newsletter serve --host 127.0.0.1 --port 8080 --root-path /news"))
@click.option("--host", metavar="HOST", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", metavar="PORT", default=8080, show_default=True, help="Port to listen on.")
@click.option("--root-path", metavar="PREFIX", default="",
              help="Path prefix the reverse proxy publishes us under (and strips).")
@click.option("--forwarded-allow-ips", metavar="IPS", default="127.0.0.1", show_default=True,
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
    from pipeline.web.app import Settings
    from pipeline.web.app import serve as run
    from pipeline.web.webhook import public_key_from_env

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


@main.group(examples=("newsletter suppressions list --reason bounced",))
def suppressions() -> None:
    """Addresses never mailed again, on any list: sync from SendGrid, list, add, remove."""


@suppressions.command("sync", examples=("SENDGRID_API_KEY=... newsletter suppressions sync",))
@_report_errors
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
@_report_errors
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
@_report_errors
def suppressions_add(address: str, reason: str) -> None:
    """Never mail ADDRESS again, on any list."""
    from pipeline.config import load_config
    from pipeline.lists.suppressions import normalise_address
    from pipeline.store import open_store

    email = normalise_address(address)
    added = open_store(load_config()).add_suppression(email, reason=reason, source="cli")
    click.echo(f"suppressed {email}" if added else f"{email} was already suppressed (its first reason is kept)")


@suppressions.command("remove", examples=("newsletter suppressions remove someone@example.org",))
@click.argument("address")
@_report_errors
def suppressions_remove(address: str) -> None:
    """Allow mail to ADDRESS again (a later sync re-adds it while SendGrid still suppresses it)."""
    from pipeline.config import load_config
    from pipeline.lists.suppressions import normalise_address
    from pipeline.store import open_store

    email = normalise_address(address)
    store = open_store(load_config())
    before = next((s for s in store.list_suppressions() if s.email.lower() == email.lower()), None)
    if before is None or not store.remove_suppression(email):
        raise PipelineError(f"{email} is not suppressed — check the spelling with `newsletter suppressions list`")
    click.echo(f"removed {email} (was {before.reason}, from {before.source})")


@main.command(examples=("newsletter archive --out site/archive",))
@click.option("--out", metavar="DIR", type=out_dir, required=True,
              help="Folder to write; publish it as <base_url>/archive/.")
@all_issues_option
@_report_errors
def archive(out: Path, all_issues: bool) -> None:
    """Write the web archive as static files: index, one page per issue, images, feed.xml."""
    from pipeline.config import load_config
    from pipeline.store import database_url, open_store
    from pipeline.web.archive import Archive

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


@main.command(examples=("newsletter report issues/027-2022-04-01 --html report.html",
                        "newsletter report issues/027-2022-04-01 --json"))
@issue_dir
@click.option("--html", "html_file", metavar="FILE", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write a one-page HTML report with a chart of opens and clicks.")
@json_option
@_report_errors
def report(issue_dir: Path, html_file: Path | None, as_json: bool) -> None:
    """What happened to an issue, per list: delivered, bounced, opened, clicked (per link), unsubscribed."""
    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.report.stats import build_report, html_report, report_json, text_report
    from pipeline.store import database_url, open_store

    config = load_config()
    path = config.sendlog_path
    if not database_url() and not path.is_file():
        raise ConfigError(f"no send log at {path} — run the report where the issue was sent from, or set "
                          "NEWSLETTER_DATABASE_URL to the shared database")
    result = build_report(open_store(config), issue_dir.resolve().name)
    if as_json:
        emit_json(report_json(result))
    else:
        click.echo(text_report(result), nl=False)
    if html_file is not None:
        html_file.write_text(html_report(result), "utf-8")
        click.echo(f"wrote {html_file}", err=as_json)


# --- the database: migrations and moving to PostgreSQL ---------------------------------------------------


@main.group(examples=(
    "NEWSLETTER_DATABASE_URL=postgresql://newsletter@db.example.org/newsletter newsletter db migrate",))
def db() -> None:
    """The store: SQLite in .newsletter/ (default) or PostgreSQL at NEWSLETTER_DATABASE_URL."""


@db.command("migrate", examples=(
    "NEWSLETTER_DATABASE_URL=postgresql://newsletter@db.example.org/newsletter newsletter db migrate",))
@_report_errors
def db_migrate() -> None:
    """Apply the store's pending migrations (PostgreSQL needs this once per release; SQLite does it itself)."""
    from pipeline.config import load_config
    from pipeline.store import open_store

    store = open_store(load_config(), migrate=True)
    applied = store.applied_migrations()
    click.echo(f"{store.where}: {len(applied)} migration(s) applied, none pending ({applied[-1]})")


@db.command("copy", examples=("newsletter db copy --to postgresql://newsletter@db.example.org/newsletter",))
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
