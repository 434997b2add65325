"""wandb without a login: tf-ship fails at once with the ways out, and wandb never prompts.

Every run here has an empty home (no netrc, no wandb settings), no API key and no mode, and
wandb's base URL on a closed loopback port: the check fails before ``wandb.init``, and a run
that got past it anyway could reach nothing. The command runs under a pseudo-terminal
(``script``), under one whose input is closed, and without a terminal.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import TF_SHIP, clean_env
from terminal import on_a_terminal
from wandb_helpers import line, transaction_logs, write_log

from tf_ship.backends.wandb.transaction_log import history_rows

pytest.importorskip("wandb")

BASE_URL = "http://127.0.0.1:9"
WAYS_OUT = ("`wandb login`", "WANDB_API_KEY", "--wandb-mode offline", "`wandb sync`")
PROMPTS = ("Enter your choice", "W&B account", "API key from your profile", "Paste an API key")
PROMPT_TIMEOUT = 90.0
"""Seconds a run may take before it counts as waiting on a prompt (wandb-core starts first)."""
MISDETECTION = """
import sys
import tf_ship.backends.wandb.backend as backend
backend.credentials_found = lambda wandb: True  # tf-ship misses what wandb then finds missing
from tf_ship.cli import main
sys.argv = ["tf-ship", *sys.argv[1:]]
main()
"""
"""tf-ship believing credentials exist: wandb.init must raise, not prompt."""


def no_login_env(home: Path, **extra: str) -> dict[str, str]:
    """No credentials anywhere: an empty home, no WANDB_* of the caller, a closed base URL."""
    env = {k: v for k, v in clean_env().items() if not k.startswith("WANDB_") and k != "NETRC"}
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        WANDB_BASE_URL=BASE_URL,
        WANDB_ERROR_REPORTING="false",
        WANDB_DISABLE_GIT="true",
        TERM="xterm",
        **extra,
    )
    return env


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    """A log directory holding one metric line."""
    directory = tmp_path / "logdir"
    write_log(directory, [line("m", 1, "loss", "0.5")])
    return directory


def run_command(
    command: list[str], env: dict[str, str], cwd: Path, *, terminal: bool, stdin_closed: bool
) -> tuple[int, str, float]:
    """Run the command (under ``script`` for a terminal); its exit code, output and duration."""
    if terminal:
        command = on_a_terminal(command)
    started = time.monotonic()
    result = subprocess.run(
        command,
        stdin=subprocess.DEVNULL if stdin_closed or not terminal else None,
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=PROMPT_TIMEOUT,
        check=False,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    return result.returncode, output, time.monotonic() - started


def assert_fails_with_the_ways_out(code: int, output: str) -> None:
    """Exit 1, the one-line reason with both ways out, and no prompt or traceback.

    The reason is said when the backend fails and again in the summary's line for it.
    """
    assert code == 1, output
    reasons = [text for text in output.splitlines() if "has no API key" in text]
    assert [r for r in reasons if r.startswith("  backend wandb: FAILED, 0 events")], output
    assert [r for r in reasons if "tf-ship: backend wandb failed:" in r], output
    for reason in reasons:
        assert all(way in reason for way in WAYS_OUT), reason
        assert BASE_URL in reason
    assert not any(prompt in output for prompt in PROMPTS), output
    assert "Traceback" not in output, output
    assert "FINISHED" not in output, output


terminals = pytest.mark.parametrize(
    ("terminal", "stdin_closed"),
    [(True, False), (True, True), (False, True)],
    ids=["terminal", "terminal-stdin-closed", "no-terminal"],
)


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a terminal")
@terminals
def test_no_credentials_fail_at_once_with_the_ways_out(
    tmp_path: Path, logdir: Path, *, terminal: bool, stdin_closed: bool
) -> None:
    """``tf-ship --backend wandb`` online without a key: exit 1 at once, never a prompt."""
    command = [*TF_SHIP, "--logdir", str(logdir), "--no-follow", "--backend", "wandb"]
    env = no_login_env(tmp_path / "home")
    code, output, _ = run_command(
        command, env, tmp_path, terminal=terminal, stdin_closed=stdin_closed
    )
    assert_fails_with_the_ways_out(code, output)


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a terminal")
@terminals
def test_wandb_init_never_prompts_even_when_the_check_misses(
    tmp_path: Path, logdir: Path, *, terminal: bool, stdin_closed: bool
) -> None:
    """Past a check that wrongly found credentials, wandb raises instead of asking."""
    command = [sys.executable, "-c", MISDETECTION, "--logdir", str(logdir), "--no-follow"]
    env = no_login_env(tmp_path / "home")
    code, output, _ = run_command(
        [*command, "--backend", "wandb"],
        env,
        tmp_path,
        terminal=terminal,
        stdin_closed=stdin_closed,
    )
    assert_fails_with_the_ways_out(code, output)


CHECK = """
import wandb
from tf_ship.backends.wandb.login import credentials_found
print(credentials_found(wandb))
"""


@pytest.mark.parametrize(
    ("case", "found"),
    [
        ("nothing", False),
        ("api key", True),
        ("identity token file", True),
        ("netrc entry for the base URL", True),
        ("netrc entry for another host", False),
        ("netrc named by NETRC", True),
    ],
)
def test_credentials_are_found_where_wandb_looks(tmp_path: Path, case: str, *, found: bool) -> None:
    """The check sees the key in the environment or the netrc entry of wandb's base URL.

    The keys are fake and no run starts: only whether wandb would find one is asked.
    """
    home = tmp_path / "home"
    env = no_login_env(home)
    fake = "0123456789abcdef0123456789abcdef01234567"
    # wandb 0.31 looks for the URL's host and port, earlier versions for the host alone
    netrc_line = "".join(
        f"machine {machine}\n  login user\n  password {fake}\n"
        for machine in ("127.0.0.1:9", "127.0.0.1")
    )
    if case == "api key":
        env["WANDB_API_KEY"] = fake
    elif case == "identity token file":
        token = tmp_path / "token"
        token.write_text("a token", encoding="utf-8")
        env["WANDB_IDENTITY_TOKEN_FILE"] = str(token)
    elif case.startswith("netrc entry"):
        home.mkdir(exist_ok=True)
        host = "127.0.0.1" if "base URL" in case else "api.example.org"
        (home / ".netrc").write_text(netrc_line.replace("127.0.0.1", host), encoding="utf-8")
        (home / ".netrc").chmod(0o600)
    elif case == "netrc named by NETRC":
        path = tmp_path / "elsewhere-netrc"
        path.write_text(netrc_line, encoding="utf-8")
        path.chmod(0o600)
        env["NETRC"] = str(path)
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == str(found), result.stderr


def test_offline_runs_need_no_credentials(tmp_path: Path, logdir: Path) -> None:
    """``--wandb-mode offline`` without a key ships as before (nothing is checked)."""
    env = no_login_env(tmp_path / "home", WANDB_SILENT="true", WANDB_X_DISABLE_STATS="true")
    command = [
        *TF_SHIP,
        "--logdir",
        str(logdir),
        "--no-follow",
        "--backend",
        "wandb",
        "--wandb-mode",
        "offline",
        "--wandb-dir",
        str(tmp_path / "runs"),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    (log,) = transaction_logs(tmp_path / "runs")
    assert [row["m/loss"] for row in history_rows(log, strict=False)] == [0.5]


def test_stdin_is_given_back() -> None:
    """Inside, standard input is no terminal; after the last one out, it is the original."""
    from tf_ship.backends.wandb.login import stdin_not_a_terminal  # noqa: PLC0415

    original = sys.stdin
    with stdin_not_a_terminal():
        inner = sys.stdin
        assert not inner.isatty()
        with stdin_not_a_terminal():
            assert sys.stdin is inner
        assert sys.stdin is inner
    assert sys.stdin is original
    assert inner.closed
