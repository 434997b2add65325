"""Exactly once across crashes: replays after a kill leave no gap and no double in any tracker.

The long test runs ``tf-ship`` as a subprocess shipping a growing log to MLflow (a real server),
TensorBoard and wandb (offline), kills it with SIGKILL at random moments (some of them in the
middle of writing the state file), restarts it with the same options, drains the log at the end,
and reads every tracker back.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import attrs
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("wandb")
pytest.importorskip("tensorboardX")
pytest.importorskip("tensorboard")

from crash_support import cursor_of, resume_of
from mlflow import MlflowClient
from support import wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb_helpers import offline_wandb, settle

from tf_ship.backends.mlflow import MlflowBackend
from tf_ship.backends.tensorboard import TensorBoardBackend
from tf_ship.backends.wandb import WandbBackend
from tf_ship.backends.wandb.replay import session_logs
from tf_ship.backends.wandb.transaction_log import history_rows
from tf_ship.shipper.events import FileIdentity, MetricEvent, RunInfo, RunStatus

Key = tuple[str, str, int, float]
"""(model, metric, step, value) of one event."""
MODELS = ("actor", "critic")
METRICS = ("loss", "lr")
KILLS = 12
FAULTY_EVERY = 4
"""Every FAULTY_EVERY-th session is killed between writing the state file and renaming it."""
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
    """A value exact in float32 (TensorBoard's type) and distinct per step and metric."""
    return step + index / 4


def line(model: str, step: int, metric: str, value: float) -> bytes:
    """One TorchFort metric line."""
    return f"TORCHFORT::WANDB: model: {model}, step: {step}, {metric}: {value!r}\n".encode()


def compare(expected: Iterable[Key], found: Iterable[Key]) -> tuple[list[Key], list[Key]]:
    """Events missing from `found`, and events found more often than expected."""
    want = collections.Counter(expected)
    have = collections.Counter(found)
    return sorted((want - have).elements()), sorted((have - want).elements())


# -- reading the trackers back -----------------------------------------------------------------


def mlflow_events(uri: str, run_id: str) -> list[Key]:
    """Every metric row of the run."""
    client = MlflowClient(uri)
    keys = client.get_run(run_id).data.metrics
    found: list[Key] = []
    for key in keys:
        model, metric = key.split("/", 1)
        found.extend(
            (model, metric, m.step, m.value) for m in client.get_metric_history(run_id, key)
        )
    return found


def tensorboard_events(directory: Path) -> list[Key]:
    """Every scalar of every model's run directory."""
    found: list[Key] = []
    for model in MODELS:
        accumulator = EventAccumulator(str(directory / model), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.extend((model, tag, s.step, s.value) for s in accumulator.Scalars(tag))
    return found


def wandb_events(wandb_dir: Path, run_id: str) -> list[Key]:
    """Every metric value of the history rows of every session of the run."""
    found: list[Key] = []
    for path in session_logs(wandb_dir, run_id):
        for row in history_rows(path, strict=False):
            for key, value in row.items():
                model, _, metric = key.partition("/")
                if model in MODELS and metric != "step":
                    found.append((model, metric, int(row[f"{model}/step"]), float(value)))
    return found


# -- a replay of the in-flight batch, in process -----------------------------------------------


def events(start: int, stop: int) -> list[MetricEvent]:
    """Events of steps [start, stop) with a file position each, as the tailer makes them."""
    file = FileIdentity(1, 2)
    made = []
    for step in range(start, stop):
        for model in MODELS:
            for index, metric in enumerate(METRICS):
                offset = (len(made) + 1) * 100
                made.append(MetricEvent(model, metric, step, value_of(step, index), file, offset))
    return made


def keys(batch: Iterable[MetricEvent]) -> list[Key]:
    """The (model, metric, step, value) of each event."""
    return [(e.model, e.metric, e.step, e.value) for e in batch]


def next_millisecond() -> None:
    """Return once the wall clock shows a later millisecond (a replay gets a new 'now')."""
    start = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 <= start + 2:
        pass


def test_mlflow_replay_of_an_in_flight_batch_adds_no_row(mlflow_server: str, tmp_path: Path):
    """A batch sent, then replayed from the write-ahead state, keeps its timestamps: no doubles."""
    run = RunInfo(tmp_path, tmp_path / "torchfort.log", run_name="replay")
    first = MlflowBackend(mlflow_server, "restart-replay")
    first.open(run)
    done, in_flight = events(0, 5), events(5, 10)
    first.log_metrics(done)
    first.flush()
    assert first.prepare(in_flight)
    write_ahead = first.resume_state()  # what the engine saves before sending
    first.log_metrics(in_flight)
    first.flush()  # the crash comes before the state after this flush is saved

    next_millisecond()
    second = MlflowBackend(mlflow_server, "restart-replay")
    second.open(attrs.evolve(run, state=write_ahead))
    assert second.run_id == first.run_id
    second.prepare(in_flight)
    second.log_metrics(in_flight)
    second.flush()
    second.close(RunStatus.FINISHED)
    missing, doubled = compare(keys(done + in_flight), mlflow_events(mlflow_server, first.run_id))
    assert (missing, doubled) == ([], [])


def test_tensorboard_replay_of_an_in_flight_batch_adds_no_scalar(tmp_path: Path):
    """Events written after the saved state are cut off on reopen and written once by the replay.

    A new model's file appears in the saved state before anything is written to it.
    """
    run = RunInfo(tmp_path, tmp_path / "torchfort.log")
    directory = tmp_path / "tb"
    first = TensorBoardBackend(directory)
    first.open(run)
    done, in_flight = events(0, 5), events(5, 10)
    assert first.prepare(done)
    first.log_metrics(done)
    first.flush()
    saved = first.resume_state()
    assert not first.prepare(in_flight)  # no new model
    first.log_metrics(in_flight)
    first.flush()
    first.close(RunStatus.KILLED)  # its files hold the in-flight batch; the state does not

    second = TensorBoardBackend(directory)
    second.open(attrs.evolve(run, state=saved))
    second.prepare(in_flight)
    second.log_metrics(in_flight)
    second.flush()
    second.close(RunStatus.FINISHED)
    missing, doubled = compare(keys(done + in_flight), tensorboard_events(directory))
    assert (missing, doubled) == ([], [])


def test_tensorboard_replay_of_several_batches_after_the_saved_state_adds_no_scalar(
    tmp_path: Path,
) -> None:
    """A replay from an older state (several flushed batches back) stores each event once.

    TensorBoard is `ReplaySafe`: the engine saves its state at most once per state interval,
    so a crash can leave many flushed batches after the saved cursor.
    """
    run = RunInfo(tmp_path, tmp_path / "torchfort.log")
    directory = tmp_path / "tb"
    first = TensorBoardBackend(directory)
    first.open(run)
    done, after = events(0, 5), [events(5 + 5 * i, 10 + 5 * i) for i in range(4)]
    assert first.prepare(done)
    first.log_metrics(done)
    first.flush()
    saved = first.resume_state()
    for batch in after:  # flushed, never saved
        first.prepare(batch)
        first.log_metrics(batch)
        first.flush()
    first.close(RunStatus.KILLED)

    second = TensorBoardBackend(directory)
    second.open(attrs.evolve(run, state=saved))
    replay = [event for batch in after for event in batch]
    second.prepare(replay)
    second.log_metrics(replay)
    second.flush()
    second.close(RunStatus.FINISHED)
    missing, doubled = compare(keys(done + replay), tensorboard_events(directory))
    assert (missing, doubled) == ([], [])


def test_wandb_replay_of_persisted_rows_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows an earlier session persisted after its saved state are recognised and not re-sent."""
    runs = offline_wandb(monkeypatch, tmp_path)
    run = RunInfo(tmp_path, tmp_path / "torchfort.log")
    first = WandbBackend(directory=str(runs), project="tf-ship-tests")
    first.open(run)
    done, in_flight = events(0, 5), events(5, 10)
    first.log_metrics(done)
    first.flush()
    saved = first.resume_state()
    first.log_metrics(in_flight)
    first.flush()
    first.close(RunStatus.KILLED)
    settle()

    second = WandbBackend(directory=str(runs), project="tf-ship-tests")
    second.open(attrs.evolve(run, state=saved))
    replay = [*in_flight, *events(10, 12)]
    second.log_metrics(replay)
    second.flush()
    assert second.resume_state()["events"] == len(done) + len(replay)
    second.close(RunStatus.FINISHED)
    settle()
    run_id = str(saved["run_id"])
    found = wandb_events(runs / "wandb", run_id)
    missing, doubled = compare(keys(done + replay), found)
    assert (missing, doubled) == ([], [])
    assert len(session_logs(runs / "wandb", run_id)) == 2


@pytest.mark.parametrize("skipped_before_the_crash", [0, 8])
def test_wandb_crash_before_the_replay_is_skipped_doubles_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skipped_before_the_crash: int
) -> None:
    """A session killed before it skipped all the persisted rows: the next one skips them all.

    The state it saved (after open, or after a flushed batch shorter than the rows to skip)
    has the cursor before those rows; its count of events must be as of that cursor too.
    """
    runs = offline_wandb(monkeypatch, tmp_path)
    run = RunInfo(tmp_path, tmp_path / "torchfort.log")
    first = WandbBackend(directory=str(runs), project="tf-ship-tests")
    first.open(run)
    done, in_flight, more = events(0, 5), events(5, 10), events(10, 12)
    first.log_metrics(done)
    first.flush()
    saved = first.resume_state()
    first.log_metrics(in_flight)
    first.flush()  # persisted after the saved state
    first.close(RunStatus.KILLED)
    settle()

    second = WandbBackend(directory=str(runs), project="tf-ship-tests")
    second.open(attrs.evolve(run, state=saved))
    partly = in_flight[:skipped_before_the_crash]
    if partly:
        second.log_metrics(partly)  # all skipped: still persisted rows to skip after them
        second.flush()
    at_crash = second.resume_state()  # saved with the cursor after `partly`
    assert at_crash["events"] == len(done) + len(partly)
    second.log_metrics([*in_flight[len(partly) :], *more])
    second.flush()  # `more` persisted after that state too
    second.close(RunStatus.KILLED)
    settle()

    third = WandbBackend(directory=str(runs), project="tf-ship-tests")
    third.open(attrs.evolve(run, state=at_crash))
    replay = [*in_flight[len(partly) :], *more, *events(12, 14)]
    third.log_metrics(replay)
    third.flush()
    assert third.resume_state()["events"] == len(done) + len(partly) + len(replay)
    third.close(RunStatus.FINISHED)
    settle()
    found = wandb_events(runs / "wandb", str(saved["run_id"]))
    missing, doubled = compare(keys([*done, *partly, *replay]), found)
    assert (missing, doubled) == ([], [])


# -- kill -9, again and again ------------------------------------------------------------------


@attrs.define
class Writer:
    """Appends one step of every model and metric to the log every `period` seconds."""

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
                data = b""
                for model in MODELS:
                    for index, metric in enumerate(METRICS):
                        value = value_of(step, index)
                        data += line(model, step, metric, value)
                        self.expected.append((model, metric, step, value))
                stream.write(data)
                stream.flush()
                # the application restarts once: its steps go back (valid points, kept twice)
                step = 100 if step == 399 else step + 1
                self.stop.wait(self.period)

    def finish(self) -> None:
        """Stop writing and wait for the thread."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


@pytest.mark.slow
def test_kill_nine_at_random_moments_delivers_every_event_exactly_once(  # noqa: PLR0915
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve SIGKILLs (three inside a state save), then a drain: each tracker holds the log."""
    runs = offline_wandb(monkeypatch, tmp_path)
    logdir = tmp_path / "logdir"
    logdir.mkdir()
    log = logdir / "torchfort.log"
    log.touch()
    state_file = logdir / ".tf-ship-state.json"
    tensorboard_dir = tmp_path / "tb"
    experiment = f"restart-{os.getpid()}-{random.randrange(1 << 30)}"  # noqa: S311
    options = [
        "--logdir",
        str(logdir),
        "-b",
        "mlflow",
        "-b",
        "tensorboard",
        "-b",
        "wandb",
        "--mlflow-tracking-uri",
        mlflow_server,
        "--mlflow-experiment",
        experiment,
        "--tensorboard-dir",
        str(tensorboard_dir),
        "--wandb-dir",
        str(runs),
        "--wandb-mode",
        "offline",
        "--wandb-project",
        "tf-ship-tests",
        "--poll-interval",
        "0.1",
        "--batch-size",
        "64",
        "--on-restart",  # the writer's restart stays in the same runs, read back below
        "continue",
        "-q",
    ]
    rng = random.Random(os.getpid())  # noqa: S311 - moments of the kills, not secrets
    started: list[subprocess.Popen[bytes]] = []

    def launch(*extra: str, faulty_at: int | None = None) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        if faulty_at is None:
            command = [sys.executable, "-m", "tf_ship", *options, *extra]
        else:
            command = [sys.executable, "-c", KILL_IN_SAVE, *options, *extra]
            env["TF_SHIP_TEST_KILL_AT_SAVE"] = str(faulty_at)
        output = (tmp_path / f"session-{len(started)}.err").open("wb")
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        output.close()
        started.append(process)
        return process

    writer = Writer(log)
    writer.start()
    kills = faulty_kills = 0
    try:
        for session in range(KILLS):
            before = {name: cursor_of(state_file, name) for name in ("mlflow", "wandb")}
            faulty = session % FAULTY_EVERY == FAULTY_EVERY - 1
            process = launch(faulty_at=rng.randrange(3, 40) if faulty else None)
            if faulty:
                wait_for(lambda p=process: p.poll() is not None, "the kill inside a save", DEADLINE)
                assert process.returncode == -signal.SIGKILL
                assert list(logdir.glob(".tf-ship-state.json*.tmp")), "no save was interrupted"
                faulty_kills += 1
            else:
                wait_for(
                    lambda b=before: all(cursor_of(state_file, n) > b[n] for n in b),
                    f"session {session} shipping",
                    DEADLINE,
                )
                threading.Event().wait(rng.uniform(0.0, 1.5))  # a random moment to crash
                assert process.poll() is None, (tmp_path / f"session-{session}.err").read_text()
                process.send_signal(signal.SIGKILL)
                process.wait()
            kills += 1
        writer.finish()
        final = launch("--no-follow")
        wait_for(lambda: final.poll() is not None, "the final drain", timeout=120)
        output = (tmp_path / f"session-{len(started) - 1}.err").read_text()
        assert final.returncode == 0, output
        settle()
    finally:
        writer.finish()
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert kills == KILLS
    assert faulty_kills == KILLS // FAULTY_EVERY
    assert not list(logdir.glob(".tf-ship-state.json*.tmp"))
    expected = writer.expected
    assert len(expected) > 1000
    trackers = {
        "mlflow": mlflow_events(mlflow_server, str(resume_of(state_file, "mlflow")["run_id"])),
        "tensorboard": tensorboard_events(tensorboard_dir),
        "wandb": wandb_events(runs / "wandb", str(resume_of(state_file, "wandb")["run_id"])),
    }
    report = {}
    for name, found in trackers.items():
        missing, doubled = compare(expected, found)
        report[name] = (len(found), len(missing), len(doubled), missing[:5], doubled[:5])
    summary = f"{kills} kills ({faulty_kills} inside a state save), {len(expected)} events"
    sys.stdout.write(f"{summary}: (found, missing, doubled, ...) per tracker {report}\n")
    assert all(r[1:3] == (0, 0) for r in report.values()), report
