"""Helpers shared by the tests that run the real `tf-ship` command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from terminal import on_a_terminal

TF_SHIP = [sys.executable, "-m", "tf_ship"]
"""The command, run by the interpreter of the tests (works in any environment)."""

_UNSET = {"TORCHFORT_LOGDIR", "MLFLOW_TRACKING_URI"}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without a log folder, a tracking URI or TF_SHIP_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _UNSET and not k.startswith("TF_SHIP_")}
    env.update(extra)
    return env


def wait_for(condition: Callable[[], bool], what: str = "condition", timeout: float = 60.0) -> None:
    """Poll `condition` until it holds, backing off from 10 ms to 250 ms; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    interval = 0.01
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(interval)  # polling with a deadline, not a synchronisation sleep
        interval = min(interval * 1.5, 0.25)


def in_terminal(
    command: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `command` under a pseudo-terminal (``script``), standard input closed.

    Returns what the user sees (``stdout``: the terminal's output, standard error included,
    line ends as written) and the command's exit code.
    """
    return subprocess.run(
        on_a_terminal(command),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        cwd=cwd,
        env=env if env is not None else clean_env(),
        timeout=timeout,
        check=False,
    )
