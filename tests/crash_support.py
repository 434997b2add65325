"""kill -9 during shipping: a growing log, `tf-ship` killed at random moments, then a drain.

Some sessions kill themselves between writing the temporary state file and renaming it. What
the tracker holds at the end is compared with what the writer wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from support import wait_for

Key = tuple[str, str, int, float]
"""(model, metric, step, value) of one event."""
MODELS = ("actor", "critic")
METRICS = ("loss", "lr")
DEADLINE = 90.0

KILL_IN_SAVE = """
import os, signal, sys
import tf_ship.shipper.state as state
limit = int(os.environ["TF_SHIP_TEST_KILL_AT_SAVE"])
saves = []
def kill_before_rename(temp):
    saves.append(temp)
    if len(saves) >= limit:
        os.kill(os.getpid(), signal.SIGKILL)
state.before_replace = kill_before_rename
from tf_ship.cli import main
sys.argv = ["tf-ship", *sys.argv[1:]]
main()
"""
"""A tf-ship that kills itself after writing the temporary state file, before renaming it."""


def value_of(step: int, index: int) -> float:
    """A value distinct per step and metric."""
    return step + index / 4


@attrs.define
class Writer:
    """Appends one step of every model and metric to the log every `period` seconds.

    The steps go back once (an application restart logged into the same run: valid points).
    """

    path: Path
    period: float = 0.02
    expected: list[Key] = attrs.field(factory=list)
    stop: threading.Event = attrs.field(factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        """Write in a thread until `finish`."""
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def _write(self) -> None:
        step = 0
        with self.path.open("ab") as stream:
            while not self.stop.is_set():
                data = ""
                for model in MODELS:
                    for index, metric in enumerate(METRICS):
                        value = value_of(step, index)
                        data += f"TORCHFORT::WANDB: model: {model}, step: {step}, {metric}: "
                        data += f"{value!r}\n"
                        self.expected.append((model, metric, step, value))
                stream.write(data.encode())
                stream.flush()
                step = 100 if step == 399 else step + 1
                self.stop.wait(self.period)

    def finish(self) -> None:
        """Stop writing and wait for the thread."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def cursor_of(state_file: Path, backend: str) -> int:
    """The saved cursor offset of a backend (0 while there is no state)."""
    try:
        data = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return 0
    return int(data["backends"].get(backend, {}).get("cursor", {}).get("offset") or 0)


def resume_of(state_file: Path, backend: str) -> dict[str, Any]:
    """The saved resume state of a backend."""
    return dict(json.loads(state_file.read_text())["backends"][backend]["resume"])


@attrs.define
class Sessions:
    """Starts tf-ship sessions, each writing its output to ``session-<N>.err``."""

    folder: Path
    command: Sequence[str]
    env: Mapping[str, str]
    started: list[subprocess.Popen[bytes]] = attrs.field(factory=list)

    def launch(self, *extra: str, faulty_at: int | None = None) -> subprocess.Popen[bytes]:
        """Start a session; with `faulty_at`, one that kills itself inside that state save."""
        environment = {**os.environ, **self.env}
        if faulty_at is None:
            argv = [sys.executable, "-m", "tf_ship", *self.command, *extra]
        else:
            argv = [sys.executable, "-c", KILL_IN_SAVE, *self.command, *extra]
            environment["TF_SHIP_TEST_KILL_AT_SAVE"] = str(faulty_at)
        output = (self.folder / f"session-{len(self.started)}.err").open("wb")
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
        output.close()
        self.started.append(process)
        return process


@attrs.frozen
class KillReport:
    """What a run of `ship_through_kills` did."""

    expected: list[Key]
    kills: int
    kills_in_save: int
    state_file: Path


def ship_through_kills(  # noqa: PLR0913 - the knobs of one crash test
    tmp_path: Path,
    backend: str,
    options: Sequence[str],
    env: Mapping[str, str],
    *,
    kills: int = 6,
    faulty_every: int = 3,
) -> KillReport:
    """Ship a growing log to `backend`, SIGKILL `kills` sessions, then drain the log.

    Every `faulty_every`-th session kills itself inside a state save. The final session ships
    the rest with ``--no-follow`` and must exit 0.
    """
    logdir = tmp_path / "logdir"
    logdir.mkdir()
    log = logdir / "torchfort.log"
    log.touch()
    state_file = logdir / ".tf-ship-state.json"
    command = [
        "--logdir",
        str(logdir),
        "-b",
        backend,
        *options,
        "--poll-interval",
        "0.1",
        "--batch-size",
        "64",
        "--on-restart",
        "continue",
        "-q",
    ]
    rng = random.Random(os.getpid())  # noqa: S311 - moments of the kills, not secrets
    sessions = Sessions(tmp_path, command, env)
    launch, started = sessions.launch, sessions.started
    writer = Writer(log)
    writer.start()
    done = in_save = 0
    try:
        for session in range(kills):
            before = cursor_of(state_file, backend)
            faulty = session % faulty_every == faulty_every - 1
            process = launch(faulty_at=rng.randrange(3, 30) if faulty else None)
            if faulty:
                wait_for(lambda p=process: p.poll() is not None, "the kill inside a save", DEADLINE)
                assert process.returncode == -signal.SIGKILL, (
                    tmp_path / f"session-{session}.err"
                ).read_text()
                assert list(logdir.glob(".tf-ship-state.json*.tmp")), "no save was interrupted"
                in_save += 1
            else:
                wait_for(
                    lambda b=before: cursor_of(state_file, backend) > b,
                    f"session {session} shipping",
                    DEADLINE,
                )
                threading.Event().wait(rng.uniform(0.0, 1.0))  # a random moment to crash
                assert process.poll() is None, (tmp_path / f"session-{session}.err").read_text()
                process.send_signal(signal.SIGKILL)
                process.wait()
            done += 1
        writer.finish()
        final = launch("--no-follow")
        wait_for(lambda: final.poll() is not None, "the final drain", timeout=120)
        output = (tmp_path / f"session-{len(started) - 1}.err").read_text()
        assert final.returncode == 0, output
    finally:
        writer.finish()
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not list(logdir.glob(".tf-ship-state.json*.tmp"))
    return KillReport(writer.expected, done, in_save, state_file)
