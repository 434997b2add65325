"""Run a command under a pseudo-terminal (``script``), as a person at a terminal would.

What the person sees is the terminal's output with each line shown as it was last redrawn
(after its last carriage return); the exit code is the command's own (``script -e``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

_ERASE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def on_a_terminal(command: Sequence[str]) -> list[str]:
    """`command` run by ``script`` under a pseudo-terminal, as the terminal's own process.

    ``script`` starts ``$SHELL -c``; ``exec`` makes the command replace that shell whichever
    shell it is. Without it, a shell that stays between them (dash does) dies of the Ctrl-C
    meant for the command, and ``script`` reports 130 instead of the command's exit code.
    """
    return ["script", "-qec", "exec " + shlex.join(command), "/dev/null"]


class Terminal:
    """A command running under a pseudo-terminal; its output goes to a file the test reads."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str],
        stdin_closed: bool = False,
    ) -> None:
        self.transcript = cwd / "terminal.out"
        with self.transcript.open("wb") as sink:
            self.process = subprocess.Popen(
                on_a_terminal(args),
                stdin=subprocess.DEVNULL if stdin_closed else subprocess.PIPE,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )

    def type(self, keys: bytes) -> None:
        """Type on the terminal's keyboard (byte 3 is Ctrl-C)."""
        assert self.process.stdin is not None
        self.process.stdin.write(keys)
        self.process.stdin.flush()

    def raw(self) -> str:
        """Everything written to the terminal so far, control characters included."""
        return self.transcript.read_bytes().decode("utf-8", errors="replace")

    def screen(self) -> str:
        """What the person sees: each line as last redrawn, without escape sequences."""
        lines = self.raw().replace("\r\n", "\n").split("\n")
        return "\n".join(_ERASE.sub("", line.rsplit("\r", 1)[-1]) for line in lines)

    def wait(self, timeout: float) -> int:
        """The command's exit code, once it has ended (within `timeout` seconds)."""
        return self.process.wait(timeout)

    def close(self, *pids: int) -> None:
        """Kill what still runs: `pids`, then ``script``'s process group; reap ``script``.

        A command on the terminal runs in a session of its own: `pids` names it.
        """
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
