"""Themes are data, not code: a template that reaches for Python objects or files is refused, with its line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.build.issue import load_issue
from pipeline.build.render import render_email
from pipeline.config import load_config
from pipeline.errors import IssueError, Problem
from tests.conftest import run_cli

ATTACKS = [
    "{{ cycler.__init__.__globals__.os.popen('touch pwned').read() }}",
    "{{ joiner.__init__.__globals__['__builtins__']['open']('newsletter.yaml').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ asset_url.__globals__ }}",
    "{{ config.root.joinpath('newsletter.yaml').read_text() }}",
    "{{ config.sending }}",
    "{{ issue.folder }}",
    "{{ issue.sections[0].articles[0].file.read_text() }}",
    "{% include '../../newsletter.yaml' %}",
    "{% import '../default/email.txt.j2' as x %}",
    "{{ config.contact.update(email='x@evil.example') }}",
]


def _add_line(site: Path, template: str, line: str) -> int:
    path = site / "templates" / "plain" / template
    text = path.read_text("utf-8").rstrip("\n") + "\n"
    path.write_text(text + line + "\n", "utf-8")
    return text.count("\n") + 1


def _render_problems(site: Path) -> list[Problem]:
    """The problems of rendering issue 001 with the site's theme, which must fail."""
    config = load_config(site)
    with pytest.raises(IssueError) as caught:
        render_email(load_issue(site / "issues" / "001-hello", config), config)
    return list(caught.value.problems)


@pytest.mark.parametrize("attack", ATTACKS)
def test_an_attribute_walk_or_a_file_outside_is_refused_with_file_and_line(site: Path, attack: str) -> None:
    line = _add_line(site, "email.txt.j2", attack)
    problem = _render_problems(site)[0]
    assert problem.file == site / "templates" / "plain" / "email.txt.j2" and problem.line == line
    assert "sandbox" in problem.message and "README (Themes, Context)" in problem.fix
    assert not (site / "pwned").exists()


def test_build_reports_it_without_a_traceback_and_runs_nothing(site: Path) -> None:
    line = _add_line(site, "email.mjml.j2", "{{ cycler.__init__.__globals__.os.popen('touch pwned').read() }}")
    done = run_cli(site, "build", "issues/001-hello")
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert f"templates/plain/email.mjml.j2:{line}: error: template refused by the theme sandbox" in done.stderr
    assert not (site / "pwned").exists()


def test_a_symbolic_link_out_of_the_theme_is_refused(site: Path) -> None:
    os.symlink(site / "newsletter.yaml", site / "templates" / "plain" / "leak.j2")
    _add_line(site, "email.txt.j2", "{% include 'leak.j2' %}")
    assert "outside the theme folder" in _render_problems(site)[0].message


def test_what_the_readme_documents_still_works(site: Path) -> None:
    documented = ("{{ config.name }} {{ config.sender_email }} {{ config.sender_name }} {{ config.reply_to }} "
                  "{{ config.base_url }} {{ config.contact.get('email') }} {{ issue.slug }} {{ issue.masthead }} "
                  "{{ issue.language }} {{ issue.preheader }} {{ issue.subject }} {{ issue.date | dotdate }} "
                  "{% for s in issue.sections %}{{ s.title }}{{ s.kicker }}{{ s.numbered }}"
                  "{% for a in s.articles %}{{ a.title }}{{ a.subtitle }}{{ a.source }}{{ a.link }}{{ a.date }}"
                  "{{ a.body | plaintext }}{% if a.image %}{{ a.image.path }}{{ a.image.alt }}{% endif %}{% endfor %}"
                  "{% for e in s.literature %}{{ e.title }}{{ e.subtitle }}{{ e.authors }}{{ e.details }}"
                  "{{ e.link }}{% endfor %}{% endfor %} {{ recipient.city }} {{ web_url }} {{ archive_url }}")
    _add_line(site, "email.txt.j2", documented)
    config = load_config(site)
    email = render_email(load_issue(site / "issues" / "001-hello", config), config)
    assert "Test Weekly editor@example.org" in email.text and "%%city%%" in email.text


RUNTIME_ERRORS = [
    "{{ 1 / 0 }}",
    "{{ 'a' + 1 }}",
    "{{ range(1000000) | list | length }}",  # the sandbox's own limit on range()
    "{{ issue.date | localdate('qqqqqqqqqq') }}",
    "{{ 'x' | localnumber }}",
    "{{ '%d' % 'x' }}",
]


@pytest.mark.parametrize("expression", RUNTIME_ERRORS)
def test_a_template_that_fails_while_rendering_is_named_with_its_line(site: Path, expression: str) -> None:
    line = _add_line(site, "email.txt.j2", expression)
    [problem] = _render_problems(site)
    assert problem.file == site / "templates" / "plain" / "email.txt.j2" and problem.line == line


def test_build_names_a_theme_file_that_is_not_utf8_without_a_traceback(site: Path) -> None:
    for name in ("email.txt.j2", "inline.css"):
        path = site / "templates" / "plain" / name
        original = path.read_bytes()
        path.write_bytes(original + b"\xff\n")
        done = run_cli(site, "build", "issues/001-hello")
        assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr
        assert f"templates/plain/{name}" in done.stderr and "UTF-8" in done.stderr
        path.write_bytes(original)


def _at_most_4_gib() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # so that a failure is a MemoryError, not the OOM killer


@pytest.mark.parametrize("expression", [
    "{{ 'x' * 10 ** 10 }}",
    "{{ 'x'|center(10 ** 10) }}",
    "{{ 'x'.rjust(10 ** 10) }}",
    "{{ 'a\\nb'|indent(10 ** 10) }}",
    "{{ ('x' * 1000000).replace('x', 'y' * 1000000) }}",
    "{{ ('x' * 1000000)|replace('x', 'y' * 1000000) }}",
    "{{ '%10000000000d' % 1 }}",
    "{{ '%*d'|format(10 ** 10, 1) }}",
    "{{ '{:>{}}'.format(1, 10 ** 10) }}",
    "{{ '{:>{w}}'.format_map({'w': 10 ** 10}) }}",
    "{{ ('\\t' * 1000000).expandtabs(10000) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}",
])
def test_a_template_cannot_make_a_text_of_gigabytes(site: Path, expression: str) -> None:
    """A theme is data: an expression that would build gigabytes of text (which took the machine's memory) is
    refused before the text is made, with the template's file and line."""
    import subprocess
    import sys

    line = _add_line(site, "email.txt.j2", expression)
    done = subprocess.run([sys.executable, "-m", "pipeline", "build", "issues/001-hello"], cwd=site,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
                          capture_output=True, text=True, timeout=120, preexec_fn=_at_most_4_gib)
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr
    assert f"templates/plain/email.txt.j2:{line}: error: template refused by the theme sandbox" in done.stderr


def test_a_template_that_runs_too_long_is_stopped_with_its_line(site: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Loops in loops that write nothing (10^10 turns) would hang the build: the render stops at MAX_SECONDS."""
    from pipeline.build import sandbox

    monkeypatch.setattr(sandbox, "MAX_SECONDS", 0.5)
    line = _add_line(site, "email.txt.j2", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                                           "{% endfor %}")
    (problem,) = _render_problems(site)
    assert problem.line == line and "ran for more than 0.5 s" in problem.message
    assert str(problem.file).endswith("email.txt.j2")


def test_a_render_in_another_thread_is_stopped_and_no_stop_is_raised_after_it() -> None:
    """The limit holds in any thread (serve renders in workers). Over 100 renders with limits around their own
    time, each either ends or raises the limit's error, and no stop is raised later in the code after it."""
    import threading

    from jinja2.exceptions import SecurityError

    from pipeline.build.sandbox import ThemeEnvironment, render_bounded

    env = ThemeEnvironment()
    endless = env.from_string("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    short = env.from_string("{% for i in range(40) %}{% for j in range(10000) %}{% endfor %}{% endfor %}done")
    outcomes: list[str] = []
    stray: list[BaseException] = []

    def renders() -> None:
        try:
            render_bounded(endless, {}, seconds=0.2)
        except SecurityError as exc:
            outcomes.append(str(exc))
        for i in range(100):  # limits around the render's own time (~15 ms): some stop it, some come too late
            try:
                outcomes.append(render_bounded(short, {}, seconds=0.003 * (i % 10 + 1)))
            except SecurityError as exc:
                outcomes.append(str(exc))
            try:
                sum(j for j in range(20000))  # a stop that escaped the render would be raised in here
            except BaseException as exc:  # noqa: BLE001 - what the test looks for
                stray.append(exc)

    thread = threading.Thread(target=renders, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and not stray
    assert outcomes[0] == "the template ran for more than 0.2 s"
    assert set(outcomes[1:]) <= {"done"} | {f"the template ran for more than {0.003 * k:g} s" for k in range(1, 11)}
    assert "done" in outcomes and any(o.startswith("the template ran") for o in outcomes[1:])

