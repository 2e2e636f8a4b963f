"""Commands on a send: send, status, and cancel / pause / resume of scheduled mail."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pipeline.cli.group import issue_dir, main, out_dir, report_errors
from pipeline.cli.output import emit_json, json_option, print_problems

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
@report_errors
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
        print_problems(list(plan.problems))
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
@report_errors
def status(issue_dir: Path, as_json: bool) -> None:
    """Per list: accepted, pending, in doubt and failed recipients, send times, build hash; the in-doubt ones."""
    from pipeline.cli.send_output import editions_line
    from pipeline.config import load_config
    from pipeline.send.schedule import discarded
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
                state = entry["schedule_state"]
                kept = not discarded(state, entry["send_at"])
                gone = "" if kept else ", and SendGrid discarded the mail it held" + (
                    " (paused more than 72 hours past its time)" if state == "paused" else "")
                undo = "resume" if kept else "send"
                extra = "" if kept else " --resend-cancelled"
                click.echo(f"  {state} on {entry['schedule_changed_at']} (SendGrid batch {entry['batch_id']}){gone}; "
                           f"`newsletter {undo} {issue_dir} --list {name}{extra}` sends it")
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
@report_errors
def cancel(issue_dir: Path, list_name: str) -> None:
    """Cancel mail scheduled with `send --at` (up to 10 minutes before its time); SendGrid discards it."""
    _change_schedule(issue_dir, list_name, "cancel")


@main.command(examples=("newsletter pause issues/027-2022-04-01 --list readers",))
@issue_dir
@_list_option
@report_errors
def pause(issue_dir: Path, list_name: str) -> None:
    """Pause mail scheduled with `send --at` (up to 10 minutes before its time) until `resume`."""
    _change_schedule(issue_dir, list_name, "pause")


@main.command(examples=("newsletter resume issues/027-2022-04-01 --list readers",))
@issue_dir
@_list_option
@report_errors
def resume(issue_dir: Path, list_name: str) -> None:
    """Lift a pause (or a cancel, before its time): SendGrid sends at the scheduled time, or now if past."""
    _change_schedule(issue_dir, list_name, "resume")
