"""Commands on issues: init, new, build, check, preview."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.group import finished, issue_dir, main, out_dir, report_errors
from pipeline.cli.output import emit_json, json_option, print_problems, problem_json
from pipeline.errors import IssueError, PipelineError

# --- init, new (issue #13) ----------------------------------------------------------------------------


@main.command(examples=("newsletter init mynews",
                        "newsletter init . --name 'Smart City Weekly' --sender me@example.org"))
@click.argument("folder", metavar="DIR", type=out_dir)
@click.option("--name", metavar="TITLE", help="The newsletter's name (default: from DIR).")
@click.option("--sender", metavar="ADDRESS", default="editor@example.org", show_default=True,
              help="The From address.")
@report_errors
def init(folder: Path, name: str | None, sender: str) -> None:
    """Create a working newsletter in DIR: config, the default theme, a first issue, a sample list, .gitignore."""
    from pipeline.scaffold import init_newsletter

    written = init_newsletter(folder, name=name, sender=sender)
    issue = next(p.parent for p in written if p.name == "issue.yaml").relative_to(folder)
    click.echo(f"created {folder} ({len(written)} files). Next:\n  cd {folder}\n  newsletter check {issue}\n"
               f"  newsletter preview {issue}\n  newsletter send {issue} --list sample --outbox outbox")


@main.command(examples=("newsletter new",))
@report_errors
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
@report_errors
def build(issue_dir: Path, out: Path | None) -> None:
    """Compile ISSUE_DIR into email.html, email.txt, email.mjml and manifest.json."""
    from pipeline.build.builder import build_issue
    from pipeline.config import load_config

    result = build_issue(issue_dir, load_config(), out=out)
    print_problems([p for p in result.problems if not p.blocking])
    sizes = [f"{language} {data['sizes']['encoded_message_bytes'] / 1000:.1f} KB"
             for language, (_, data) in result.editions.items()]
    if len(sizes) == 1:
        click.echo(f"built {result.out} ({sizes[0].split(' ', 1)[1]} encoded)")
    else:
        click.echo(f"built {result.out}: {len(sizes)} editions ({', '.join(sizes)} encoded)")
    finished.append(True)


@main.command(examples=("newsletter check issues/027-2022-04-01",
                        "newsletter check issues/027-2022-04-01 --json"))
@issue_dir
@json_option
@report_errors
def check(issue_dir: Path, as_json: bool) -> None:
    """Report every problem of ISSUE_DIR at once; exit 3 on blocking ones."""
    from pipeline.build.checks import check_issue
    from pipeline.config import load_config

    problems = check_issue(issue_dir, load_config())
    print_problems(problems)
    blocking = sum(p.blocking for p in problems)
    if as_json:
        emit_json({"issue": issue_dir.resolve().name, "ok": not blocking, "errors": blocking,
                   "warnings": len(problems) - blocking, "problems": [problem_json(p) for p in problems]})
    if blocking:
        raise IssueError(f"{blocking} blocking problem(s) in {issue_dir}; fix them and run check again")
    if not as_json:
        click.echo(f"{issue_dir}: ok ({len(problems)} warning(s))")
    finished.append(True)


@main.command(examples=("newsletter preview issues/027-2022-04-01",
                        "newsletter preview issues/027-2022-04-01 --screenshot shots"))
@issue_dir
@click.option("--port", metavar="PORT", default=8025, show_default=True, help="Port on 127.0.0.1.")
@click.option("--screenshot", metavar="DIR", type=out_dir,
              help="Write PNGs at 375 and 600 px wide to DIR with headless Chromium, then exit "
                   "(needs the screenshots extra).")
@report_errors
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
