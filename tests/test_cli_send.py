"""`newsletter send` as a user runs it: a real subprocess, a real stand-in, with and without a terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sendkit import ISSUE, KEY, SECRET, cli, environ, write_list
from tests.standin import StandIn
from tests.storekit import migrate


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(api_key=KEY, retry_after=0) as sg:
        yield sg


def test_sends_with_yes(site: Path, standin: StandIn, store_env: dict[str, str]) -> None:
    env = environ(standin.url, **store_env)
    migrate(env)
    done = cli(site, "send", ISSUE, "--list", "sample", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert "subject:    Test Weekly No. 1: hello" in done.stdout and "(3 recipients)" in done.stdout
    assert "sender:     Test Weekly <editor@example.org>" in done.stdout
    assert "3 accepted in 2 request(s)" in done.stdout
    assert "sent 3/3" in done.stderr  # plain progress lines without a terminal
    assert sum(standin.recipients().values()) == 3


def test_without_terminal_yes_is_required(site: Path, standin: StandIn) -> None:
    done = cli(site, "send", ISSUE, "--list", "sample", env=environ(standin.url))
    assert done.returncode == 5 and "--yes" in done.stderr
    assert standin.request_count == 0


def test_without_key_names_both_ways(site: Path, standin: StandIn) -> None:
    done = cli(site, "send", ISSUE, "--list", "sample", "--yes", env=environ(standin.url, SENDGRID_API_KEY=""))
    assert done.returncode == 5
    assert "SENDGRID_API_KEY" in done.stderr and "--outbox DIR" in done.stderr
    assert "Traceback" not in done.stderr and standin.request_count == 0


@pytest.mark.parametrize("debug", [False, True])
def test_bad_key_never_printed(site: Path, standin: StandIn, debug: bool) -> None:
    wrong = "SG.wrong-key-0f3e-never-print"
    args = ["--debug"] if debug else []
    done = cli(site, *args, "send", ISSUE, "--list", "sample", "--yes", env=environ(standin.url,
                                                                                     SENDGRID_API_KEY=wrong))
    assert done.returncode != 0 and "401" in done.stderr
    for secret in (wrong, SECRET):
        assert secret not in done.stdout + done.stderr
    # the first request, the send's batch id, is refused: no mail request follows
    assert standin.control_requests == [("POST", "/v3/mail/batch")] and standin.request_count == 0


def test_outbox_needs_no_account(site: Path, tmp_path: Path) -> None:
    env = environ(None, SENDGRID_API_KEY="", NEWSLETTER_SECRET="")
    done = cli(site, "send", ISSUE, "--list", "sample", "--outbox", "outbox", env=env)  # no terminal, no --yes
    assert done.returncode == 0, done.stderr
    assert "Send to" not in done.stdout + done.stderr  # an outbox run asks nothing
    assert "3 written" in done.stdout and "throwaway secret" in done.stderr
    assert sorted(p.name for p in (site / "outbox").iterdir()) == [
        "ada@example.org.eml", "alan@example.org.eml", "grace@example.org.eml"]
    # readers' addresses: for this user only
    assert all(p.stat().st_mode & 0o077 == 0 for p in [site / "outbox", *(site / "outbox").iterdir()])


def test_test_copy(site: Path, standin: StandIn) -> None:
    done = cli(site, "send", ISSUE, "--list", "sample", "--test", "me@example.net", "--yes",
               env=environ(standin.url))
    assert done.returncode == 0, done.stderr
    assert "test copy:  to me@example.net" in done.stdout
    assert standin.recipients() == {"me@example.net": 1}


@pytest.mark.parametrize(("faults", "code", "said", "received"), [
    (["429", "ok"], 0, "test copy:  to me@example.net", 1),  # retried, then accepted
    (["400"], 5, "SendGrid refused the test copy (400)", 0),
    (["drop_after"], 5, "may or may not have been sent", 1),  # SendGrid took it, the answer was lost
])
def test_test_copy_answers(site: Path, standin: StandIn, faults: list[str], code: int, said: str,
                           received: int) -> None:
    standin.script(faults)
    done = cli(site, "send", ISSUE, "--list", "sample", "--test", "me@example.net", "--yes",
               env=environ(standin.url))
    assert done.returncode == code, done.stderr
    assert said in done.stdout + done.stderr
    assert standin.request_count == len(faults)
    assert standin.recipients().get("me@example.net", 0) == received


def test_schedule_too_late(site: Path, standin: StandIn) -> None:
    done = cli(site, "send", ISSUE, "--list", "sample", "--yes", "--at", "2020-01-01T00:00:00Z",
               env=environ(standin.url))
    assert done.returncode == 5 and "already too late" in done.stderr and standin.request_count == 0


def test_bad_list_is_reported_by_line(site: Path, standin: StandIn) -> None:
    (site / "subscribers" / "bad.csv").write_text("email,name\nok@example.org,Ok\nbroken,No\n", "utf-8")
    done = cli(site, "send", ISSUE, "--list", "bad", "--yes", env=environ(standin.url))
    assert done.returncode == 4 and "bad.csv:3" in done.stderr and "--skip-invalid" in done.stderr
    assert standin.request_count == 0


def test_help_imports_no_sendgrid() -> None:
    code = ("import sys; from click.testing import CliRunner; from pipeline.cli.main import main; "
            "r = CliRunner().invoke(main, ['send', '--help']); assert r.exit_code == 0, r.output; "
            "assert '--resend-in-doubt' in r.output; "
            "print(sorted(m for m in sys.modules if m.startswith(('sendgrid', 'python_http_client', 'tqdm'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ(None), check=True)
    assert done.stdout.strip() == "[]"


def _on_terminal(site: Path, env: dict[str, str], answer: bytes, *options: str) -> str:
    """Run the send on a pseudo-terminal, answer the question, return everything it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "send", ISSUE, "--list", "sample", *options], cwd=site,
                            env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    out = b""
    answered = False
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if not answered and b"[y/N]" in out:
            os.write(leader, answer)
            answered = True
    proc.wait(timeout=60)
    os.close(leader)
    return out.decode("utf-8", "replace")


def test_a_declined_run_records_nothing_of_itself(site: Path, standin: StandIn, store_env: dict[str, str]) -> None:
    """A resumed send with changed content, allowed but declined at the question: the next run without
    --allow-changed-content is still refused (the decline did not record the new content as the send's)."""
    env = environ(standin.url, **store_env)
    migrate(env)
    standin.script(["ok", "400"])  # 3 recipients, 2 a request: the first request accepted, the second refused
    assert cli(site, "send", ISSUE, "--list", "sample", "--yes", env=env).returncode == 5
    issue = site / ISSUE / "issue.yaml"
    issue.write_text(issue.read_text("utf-8").replace("A tiny issue", "A changed issue"), "utf-8")
    said_no = _on_terminal(site, env, b"n\n", "--allow-changed-content")
    assert "nothing sent" in said_no, said_no
    again = cli(site, "send", ISSUE, "--list", "sample", "--yes", env=env)
    assert again.returncode == 5 and "--allow-changed-content" in again.stderr, again.stderr
    assert standin.request_count == 2


def test_confirmation_on_a_terminal(site: Path, standin: StandIn, store_env: dict[str, str]) -> None:
    env = environ(standin.url, **store_env)
    migrate(env)
    said_no = _on_terminal(site, env, b"n\n")
    assert "Send to 3 recipient(s)?" in said_no and "nothing sent" in said_no
    assert standin.request_count == 0
    said_yes = _on_terminal(site, env, b"y\n")
    assert "3 accepted" in said_yes and "rcpt" in said_yes  # the tqdm bar
    assert sum(standin.recipients().values()) == 3


def test_json_summary_on_stdout_everything_else_on_stderr(site: Path, standin: StandIn) -> None:
    done = cli(site, "send", ISSUE, "--list", "sample", "--yes", "--json", env=environ(standin.url))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["issue"] == "001-hello" and data["list"] == "sample" and data["transport"] == "sendgrid"
    assert (data["listed"], data["to_send"], data["sent"], data["requests"]) == (3, 3, 3, 2)
    assert data["finished"] is True and data["remaining"] == {"pending": 0, "failed": 0, "in_doubt": 0}
    assert "subject:" in done.stderr
    again = cli(site, "send", ISSUE, "--list", "sample", "--yes", "--json", env=environ(standin.url))
    assert json.loads(again.stdout)["to_send"] == 0 and "nothing to send" in again.stderr


def test_ctrl_c_says_what_was_sent_and_that_the_same_command_resumes(site: Path) -> None:
    write_list(site, "big", 6)
    with StandIn(api_key=KEY, retry_after=0, slow_seconds=120) as standin:
        standin.script(["ok", "slow"])  # batch_size 2: the second request hangs until interrupted
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "send", ISSUE, "--list", "big", "--yes"],
                                cwd=site, env=environ(standin.url), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while standin.request_count < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "the send never reached its 2nd request"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted (Ctrl-C): 2 recipient(s) accepted by SendGrid in this run, 2 of 6 in all" in err
        assert "Run the same command again to resume" in err and "Traceback" not in err
        again = cli(site, "send", ISSUE, "--list", "big", "--yes", env=environ(standin.url))
    assert again.returncode == 5 and "2 recipient(s) are in doubt" in again.stderr  # the hung request
    assert "2 accepted in 1 request(s)" in again.stdout
