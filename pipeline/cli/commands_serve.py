"""Commands after the send: serve, archive, report, and the database (db migrate, db copy)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pipeline.cli.group import issue_dir, main, out_dir, report_errors
from pipeline.cli.output import emit_json, json_option, print_problems

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
@report_errors
def serve(host: str, port: int, root_path: str, forwarded_allow_ips: str, no_webhook: bool, all_issues: bool) -> None:
    """Serve unsubscribe links, the SendGrid Event Webhook and the archive (NEWSLETTER_SECRET required)."""

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




@main.command(examples=("newsletter archive --out site/archive",))
@click.option("--out", metavar="DIR", type=out_dir, required=True,
              help="Folder to write; publish it as <base_url>/archive/.")
@all_issues_option
@report_errors
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
    print_problems(problems)
    # <slug>/index.html is an issue's page (other editions' are one folder deeper); unsubscribe/ is not an issue
    issues = sum(p.name == "index.html" and len(p.relative_to(out).parts) == 2 for p in written) - 1
    click.echo(f"wrote {len(written)} files to {out} ({issues} issue(s))")
    if issues == 0 and not all_issues:
        click.secho("no issue has been sent yet: pass --all-issues to publish every valid issue", fg="yellow",
                    err=True)


@main.command(examples=("newsletter report issues/027-2022-04-01 --html report.html",
                        "newsletter report issues/027-2022-04-01 --json"))
@issue_dir
@click.option("--html", "html_file", metavar="FILE", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write a one-page HTML report with a chart of opens and clicks.")
@json_option
@report_errors
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
@report_errors
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
@report_errors
def db_copy(url: str) -> None:
    """Move this machine's SQLite send log, suppressions and events into PostgreSQL, and verify the counts.

    Refused while a send runs here; the sends copied are locked until it is done."""
    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.store import open_store, readable_url
    from pipeline.store._copy import copy_store
    from pipeline.store._sqlite import SQLiteStore

    config = load_config()
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("--to must be a PostgreSQL URL (postgresql://user@host/database) — the password can "
                          "come from PGPASSWORD or ~/.pgpass instead of the URL")
    if not readable_url(url):  # libpq's message would quote the URL, password and all: not shown
        raise ConfigError("--to is not a readable PostgreSQL URL (a bracket, a %-escape or a parameter after ? "
                          "that PostgreSQL does not know) — write it as postgresql://user@host:port/database")
    if not config.sendlog_path.is_file():
        raise ConfigError(f"no SQLite send log at {config.sendlog_path} — run the copy in the newsletter folder "
                          "that sent the issues")
    source = SQLiteStore(config.sendlog_path, state_dir=config.state_dir)
    target = open_store(config, url=url, migrate=True)
    counts = copy_store(source, target)
    click.echo(f"copied to {target.where}: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
    click.echo("the copy holds the SQLite send log as it was when the copy began: what is written to the SQLite "
               "file from now on (a send, an unsubscribe) is not in it — set NEWSLETTER_DATABASE_URL to that URL "
               "(with its password) wherever the newsletter sends or serves before the next send; keep the SQLite "
               "file as a backup")
