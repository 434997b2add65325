"""Application restarts: a log holding two application runs becomes two linked tracker runs.

The log is what a TorchFort application restarted in the same directory leaves: steps 100..500
of ``mymodel`` and ``critic_0``, the configs rewritten, then steps 100..300 again with other
values. With ``--on-restart new-run`` (the command line's default) each tracker gets one run per
application run, the second linked to the first; with ``continue`` one run holds everything.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import hypothesis
import pytest
from hypothesis import strategies as st

pytest.importorskip("mlflow")
pytest.importorskip("wandb")
pytest.importorskip("tensorboardX")
pytest.importorskip("tensorboard")

from mlflow import MlflowClient
from support import wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb_helpers import exit_code_of, line, offline_wandb_env, run_record, write_config

import tf_ship
from tf_ship.backends.wandb.transaction_log import history_rows
from tf_ship.shipper.events import EventColumns, MetricEvent, ModelConfig, RunInfo, RunStatus
from tf_ship.shipper.segments import OnRestart, Segments
from tf_ship.shipper.ship import ShipOptions, Shipper

Key = tuple[str, str, int, float]
"""(model, metric, step, value) of one event."""
DEADLINE = 120.0
CONFIG = "general:\n  report_frequency: 100\noptimizer:\n  type: adam\n  parameters:\n"


def value(run: int, step: int, index: int) -> float:
    """Distinct per application run, step and metric; exact in float32 (TensorBoard's type)."""
    return run * 1000 + step + index / 4


def application_run(run: int, steps: Iterable[int]) -> tuple[list[bytes], list[Key]]:
    """The lines one application run writes, and the events they stand for.

    ``mymodel`` logs ``train_loss`` and ``train_lr``, ``critic_0`` logs ``train_loss``, all at
    the training step; ``mymodel`` also logs ``val_loss`` with its own counter (an epoch number,
    far below the training step: no restart), and the first run logs one line twice (an equal
    step: no restart either).
    """
    lines: list[bytes] = []
    keys: list[Key] = []

    def add(model: str, step: int, metric: str, number: float) -> None:
        lines.append(line(model, step, metric, repr(number)))
        keys.append((model, metric, step, number))

    for position, step in enumerate(steps):
        add("mymodel", step, "train_loss", value(run, step, 0))
        add("mymodel", step, "train_lr", value(run, step, 1))
        add("critic_0", step, "train_loss", value(run, step, 2))
        if run == 1 and step == 300:
            add("mymodel", step, "train_loss", value(run, step, 0))
        if position % 2 == 1:
            add("mymodel", position // 2 + 1, "val_loss", value(run, step, 3))
    return lines, keys


FIRST_LINES, FIRST = application_run(1, range(100, 600, 100))
SECOND_LINES, SECOND = application_run(2, range(100, 400, 100))


def write_configs(logdir: Path, learning_rate: str) -> None:
    """Write both models' configs, as TorchFort does when it creates the models."""
    for model in ("mymodel", "critic_0"):
        write_config(logdir, model, CONFIG + f"    learning_rate: {learning_rate}", model)


def write_two_runs(logdir: Path, second: slice = slice(None)) -> Path:
    """The log of two application runs (or of the first and part of the second)."""
    logdir.mkdir(parents=True, exist_ok=True)
    write_configs(logdir, "1e-3")
    log = logdir / "torchfort.log"
    log.write_bytes(b"".join(FIRST_LINES))
    write_configs(logdir, "5e-4")  # the restarted application rewrites its configs
    with log.open("ab") as stream:
        stream.write(b"".join(SECOND_LINES[second]))
    return log


def same(expected: Iterable[Key], found: Iterable[Key]) -> bool:
    """The same events the same number of times, in any order."""
    return collections.Counter(expected) == collections.Counter(found)


# -- the rule -----------------------------------------------------------------------------------


def events(*items: tuple[str, str, int]) -> list[MetricEvent]:
    """Events of (model, metric, step), one line apart."""
    return [MetricEvent(m, k, s, 0.0, None, 100 * i) for i, (m, k, s) in enumerate(items)]


def test_a_step_below_its_series_highest_starts_a_segment() -> None:
    """The boundary is the first line whose step is lower than the highest of its series."""
    segments = Segments()
    batch = events(("m", "loss", 100), ("m", "loss", 200), ("c", "loss", 5), ("m", "loss", 150))
    assert segments.boundary(batch) == 3
    assert segments.highest == {}  # looking changes nothing
    segments.observe(batch[:3])
    assert segments.highest == {("m", "loss"): 200, ("c", "loss"): 5}
    assert segments.boundary(batch[3:]) == 0


def test_equal_steps_and_series_with_their_own_counters_do_not_split() -> None:
    """A repeated step, other metrics and other models with lower counters are no restart."""
    batch = events(
        ("m", "loss", 100),
        ("m", "loss", 100),
        ("m", "lr", 100),
        ("m", "val_loss", 1),
        ("m", "loss", 200),
        ("m", "val_loss", 2),
        ("c", "loss", -5),
    )
    assert Segments().boundary(batch) is None


def reference_boundary(
    highest: dict[tuple[str, str], int], batch: Sequence[MetricEvent]
) -> int | None:
    """The rule, event by event: the first step lower than its series' highest so far."""
    tops = dict(highest)
    for index, event in enumerate(batch):
        key = (event.model, event.metric)
        if key in tops and event.step < tops[key]:
            return index
        tops[key] = max(tops.get(key, event.step), event.step)
    return None


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    earlier=st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from("xy"), st.integers(-3, 9))),
    batch=st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("xy"), st.integers(-3, 9))),
)
def test_the_boundary_and_the_highest_steps_follow_the_rule(
    earlier: list[tuple[str, str, int]], batch: list[tuple[str, str, int]]
) -> None:
    """Whatever the steps (rising together, or each series its own), the shortcuts agree."""
    segments = Segments()
    seen = events(*earlier)
    cut = reference_boundary({}, seen)
    segments.observe(seen[:cut])
    highest: dict[tuple[str, str], int] = {}
    for event in seen[:cut]:
        key = (event.model, event.metric)
        highest[key] = max(highest.get(key, event.step), event.step)
    assert segments.highest == highest
    assert segments.boundary(events(*batch)) == reference_boundary(highest, events(*batch))
    as_columns = Segments()
    as_columns.observe(columns(seen[:cut]))  # the parser's fast path gives columns
    assert as_columns.highest == highest


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    batch=st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from("xyz"), st.integers(-3, 40)), max_size=80
    )
)
@hypothesis.example(batch=[("a", "x", -3), *(("b", "y", step) for step in range(60))])
@hypothesis.example(batch=[("a", "x", -3), ("a", "y", -2), *(("b", "x", s) for s in range(60))])
def test_the_highest_steps_of_rising_columns_are_each_series_last(
    batch: list[tuple[str, str, int]],
) -> None:
    """Steps that never go down (the usual log): columns take a shortcut from the batch's tail.

    Whether the tail names every series or some series only appear early, the highest steps
    are those of the event-by-event rule.
    """
    rising = events(*sorted(batch, key=lambda item: item[2]))
    expected: dict[tuple[str, str], int] = {}
    for event in rising:
        expected[(event.model, event.metric)] = event.step
    segments = Segments()
    segments.observe(columns(rising))
    assert segments.highest == expected


def columns(batch: Sequence[MetricEvent]) -> EventColumns:
    """The same events as the parser's fast path holds them."""
    return EventColumns(
        [e.model for e in batch],
        [e.metric for e in batch],
        [e.step for e in batch],
        [e.value for e in batch],
        None,
        [e.offset for e in batch],
    )


def test_segments_survive_the_state_file() -> None:
    """Number, first run and highest steps come back from their JSON form."""
    segments = Segments()
    segments.observe(events(("a b", "l: x", 7)))
    segments.begin_next({"run_id": "abc"})
    segments.observe(events(("a b", "l: x", 3), ("c", "loss", -1)))
    text = json.dumps(segments.to_json())
    assert Segments.from_json(json.loads(text)) == segments
    assert Segments.from_json({}) == Segments()


# -- the engine, with a backend that keeps every run ------------------------------------------


@attrs.define
class RunsBackend:
    """Keeps the events and configs of each run it was opened for."""

    runs: list[RunInfo] = attrs.field(factory=list)
    events: list[list[Key]] = attrs.field(factory=list)
    configs: list[list[ModelConfig]] = attrs.field(factory=list)
    statuses: list[RunStatus] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def open(self, run: RunInfo) -> None:
        """A new run."""
        with self.lock:
            self.runs.append(run)
            self.events.append([])
            self.configs.append([])

    def log_config(self, config: ModelConfig) -> None:
        """Into the current run."""
        self.configs[-1].append(config)

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Into the current run."""
        with self.lock:
            self.events[-1].extend((e.model, e.metric, e.step, e.value) for e in batch)

    def flush(self) -> None:
        """Nothing to do."""

    def close(self, status: RunStatus) -> None:
        """Remember how the run ended."""
        self.statuses.append(status)

    def resume_state(self) -> dict[str, Any]:
        """Which run this is."""
        return {"run": len(self.runs)}

    def shipped(self) -> int:
        """Events received so far, in every run."""
        with self.lock:
            return sum(len(run) for run in self.events)


def test_a_followed_restart_opens_a_linked_run_with_the_new_configs(tmp_path: Path) -> None:
    """Following the log: the rewritten configs go to the new run only, the old run is finished.

    The first run's config is never replaced by the restarted application's, although the
    shipper sits idle while the configs are rewritten.
    """
    logdir = tmp_path / "logdir"
    write_configs(logdir, "1e-3")
    log = logdir / "torchfort.log"
    log.write_bytes(b"".join(FIRST_LINES))
    backend = RunsBackend()
    options = ShipOptions(poll_interval=0.05, on_restart="new-run", batch_size=4)
    shipper = Shipper(log, {"runs": backend}, options)
    thread = threading.Thread(target=shipper.run)
    thread.start()
    try:
        wait_for(lambda: backend.shipped() == len(FIRST), "the first run shipped", DEADLINE)
        write_configs(logdir, "5e-4")
        with log.open("ab") as stream:
            stream.write(b"".join(SECOND_LINES))
        wait_for(
            lambda: backend.shipped() == len(FIRST + SECOND), "the second run shipped", DEADLINE
        )
    finally:
        shipper.request_drain("test over")
        thread.join(DEADLINE)
    assert not thread.is_alive()
    assert [run.segment for run in backend.runs] == [0, 1]
    assert backend.runs[1].first_run == {"run": 1}
    assert backend.events == [FIRST, SECOND]
    rates = [
        [c.config["optimizer"]["parameters"]["learning_rate"] for c in run]
        for run in backend.configs
    ]
    assert rates == [[1e-3, 1e-3], [5e-4, 5e-4]]
    assert backend.statuses == [RunStatus.FINISHED, RunStatus.FINISHED]


def test_continue_keeps_one_run(tmp_path: Path) -> None:
    """``continue`` (the Python default) ships both application runs to one run."""
    log = write_two_runs(tmp_path / "logdir")
    backend = RunsBackend()
    report = tf_ship.ship(log, {"runs": backend})
    assert report.ok, report.summary()
    assert backend.events == [FIRST + SECOND]


def test_a_restart_splits_a_batch_at_its_line(tmp_path: Path) -> None:
    """Batches larger than a segment, and several restarts in one read block."""
    log = write_two_runs(tmp_path / "logdir")
    with log.open("ab") as stream:
        stream.write(b"".join(SECOND_LINES))  # a third application run, the same as the second
    backend = RunsBackend()
    report = tf_ship.ship(log, {"runs": backend}, on_restart=OnRestart.NEW_RUN)
    assert report.ok, report.summary()
    assert backend.events == [FIRST, SECOND, SECOND]
    assert [run.segment for run in backend.runs] == [0, 1, 2]
    assert backend.runs[2].first_run == {"run": 1}
    assert report.backends[0].restarts == 2
    assert "2 application restarts" in report.summary()


# -- the real trackers, through the command line -----------------------------------------------


def tf_ship_command(root: Path, log: Path, *extra: str) -> list[str]:
    """The command shipping `log` to MLflow (sqlite), TensorBoard, wandb (offline) and jsonl."""
    return [
        sys.executable,
        "-m",
        "tf_ship",
        "--log-file",
        str(log),
        "--run-name",
        "exp",
        "-b",
        "mlflow",
        "--mlflow-tracking-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--mlflow-experiment",
        "restarts",
        "-b",
        "tensorboard",
        "--tensorboard-dir",
        str(root / "tb" / "exp"),
        "-b",
        "wandb",
        "--wandb-dir",
        str(root / "wandb"),
        "--wandb-project",
        "restarts",
        "-b",
        "jsonl",
        "--jsonl-path",
        str(root / "events.jsonl"),
        "-q",
        *extra,
    ]


def environment(root: Path) -> dict[str, str]:
    """Offline wandb under `root`, no MLflow settings of the caller."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    return {**clean, **offline_wandb_env(root)}


def run_tf_ship(root: Path, log: Path, *extra: str) -> None:
    """Run tf-ship to the end of the log; it must succeed."""
    result = subprocess.run(
        tf_ship_command(root, log, "--no-follow", *extra),
        env=environment(root),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@attrs.frozen
class TrackerRun:
    """One tracker run read back: its name, link, status and events."""

    name: str
    link: str | None
    status: str | None
    events: list[Key]


def mlflow_runs(root: Path) -> list[TrackerRun]:
    """The runs of the experiment, oldest first; `link` is the parent run id."""
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("restarts")
    assert experiment is not None
    found = []
    for run in sorted(client.search_runs([experiment.experiment_id]), key=_started):
        keys: list[Key] = []
        for key in run.data.metrics:
            model, metric = key.split("/", 1)
            history = client.get_metric_history(run.info.run_id, key)
            keys.extend((model, metric, m.step, m.value) for m in history)
        parent = run.data.tags.get("mlflow.parentRunId")
        found.append(TrackerRun(run.info.run_id, parent, run.info.status, keys))
    return found


def _started(run: Any) -> tuple[int, str]:
    return (run.info.start_time, run.data.tags.get("tf_ship.restart", "0"))


def tensorboard_runs(root: Path) -> list[TrackerRun]:
    """The first run (``tb/exp``), then each restart (``tb/exp/restart<N>``), with their scalars.

    Nothing lies beside ``tb/exp``.
    """
    tb = root / "tb"
    assert [p.name for p in tb.iterdir()] == ["exp"]
    restarts = sorted(
        (p for p in (tb / "exp").iterdir() if re.fullmatch(r"restart[0-9]+", p.name)),
        key=lambda p: int(p.name.removeprefix("restart")),
    )
    found = []
    for directory in [tb / "exp", *restarts]:
        keys: list[Key] = []
        for folder in sorted(p for p in directory.iterdir() if p.is_dir() and p not in restarts):
            accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
            accumulator.Reload()
            for tag in accumulator.Tags()["scalars"]:
                keys.extend((folder.name, tag, s.step, s.value) for s in accumulator.Scalars(tag))
        found.append(TrackerRun(directory.relative_to(tb).as_posix(), None, None, keys))
    return found


def wandb_runs(root: Path) -> list[TrackerRun]:
    """Each wandb run (all its sessions), oldest first; `link` is its group, `status` its tags.

    Waits until the last session of each run is complete (a killed session never is).
    """
    logs = sorted((root / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    sessions: dict[str, list[Path]] = {}
    for path in logs:
        sessions.setdefault(path.stem.removeprefix("run-"), []).append(path)
    wait_for(
        lambda: all(
            exit_code_of(paths[-1], strict=False) is not None for paths in sessions.values()
        ),
        "wandb-core closing the transaction logs",
        DEADLINE,
    )
    found = []
    for paths in sessions.values():
        # a killed session's log may be empty (wandb before 0.22 writes no header until then)
        record = next(run_record(p, strict=False) for p in paths if p.stat().st_size)
        keys = [key for path in paths for key in _wandb_events(path)]
        tags = ",".join(record.tags)
        found.append(TrackerRun(record.display_name, record.run_group or None, tags, keys))
    return found


def _wandb_events(path: Path) -> Iterable[Key]:
    for row in history_rows(path, strict=False):
        for key, number in row.items():
            model, _, metric = key.partition("/")
            if model in ("mymodel", "critic_0") and metric != "step":
                yield (model, metric, int(row[f"{model}/step"]), float(number))


def jsonl_runs(root: Path) -> list[list[Key]]:
    """The events of the jsonl file, split at its restart markers."""
    runs: list[list[Key]] = [[]]
    for text in (root / "events.jsonl").read_text().splitlines():
        record = json.loads(text)
        if "restart" in record:
            assert record == {"restart": len(runs)}
            runs.append([])
        elif "metric" in record:
            runs[-1].append((record["model"], record["metric"], record["step"], record["value"]))
    return runs


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-run log shipped once with the default policy (new-run)."""
    root = tmp_path_factory.mktemp("restart")
    log = write_two_runs(root / "logdir")
    run_tf_ship(root, log)
    return root


def test_mlflow_gets_a_child_run_for_the_restart(two_runs: Path) -> None:
    """Two FINISHED runs; the second is a child of the first and named after it."""
    first, second = mlflow_runs(two_runs)
    assert same(FIRST, first.events)
    assert same(SECOND, second.events)
    assert first.link is None
    assert second.link == first.name
    assert (first.status, second.status) == ("FINISHED", "FINISHED")
    client = MlflowClient(f"sqlite:///{two_runs / 'mlflow.db'}")
    assert client.get_run(second.name).info.run_name == "exp-restart1"
    assert client.get_run(second.name).data.params["mymodel.optimizer.parameters.learning_rate"]


def test_tensorboard_puts_the_restart_under_the_named_directory(two_runs: Path) -> None:
    """``exp`` holds the first application run, ``exp/restart1`` the second."""
    first, second = tensorboard_runs(two_runs)
    assert (first.name, second.name) == ("exp", "exp/restart1")
    assert same(FIRST, first.events)
    assert same(SECOND, second.events)


def test_wandb_gets_a_grouped_run_for_the_restart(two_runs: Path) -> None:
    """The restart's run is grouped under the first run's id, named and tagged as a restart."""
    runs = wandb_runs(two_runs)
    assert len(runs) == 2
    first, second = runs
    assert same(FIRST, first.events)
    assert same(SECOND, second.events)
    assert first.name == "exp"
    assert second.name == "exp-restart1"
    assert second.status == "restart"
    first_id = json.loads((two_runs / "logdir" / ".tf-ship-state.json").read_text())["backends"][
        "wandb"
    ]["segments"]["first_run"]["run_id"]
    assert second.link == first_id


def test_jsonl_marks_the_restart(two_runs: Path) -> None:
    """One ``{"restart": 1}`` line between the application runs."""
    assert jsonl_runs(two_runs) == [FIRST, SECOND]


def test_continue_ships_one_run_per_tracker(tmp_path: Path) -> None:
    """``--on-restart continue``: every tracker holds both application runs in one run."""
    log = write_two_runs(tmp_path / "logdir")
    run_tf_ship(tmp_path, log, "--on-restart", "continue")
    everything = FIRST + SECOND
    (mlflow,) = mlflow_runs(tmp_path)
    assert same(everything, mlflow.events)
    (tensorboard,) = tensorboard_runs(tmp_path)
    assert same(everything, tensorboard.events)
    (wandb,) = wandb_runs(tmp_path)
    assert same(everything, wandb.events)
    assert jsonl_runs(tmp_path) == [everything]


def saved_segments(state_file: Path) -> dict[str, tuple[int, int]]:
    """Per backend: (segment number, cursor offset) of the saved state."""
    try:
        backends = json.loads(state_file.read_text())["backends"]
    except (OSError, ValueError, KeyError):
        return {}
    return {
        name: (int(saved.get("segments", {}).get("number", 0)), int(saved["cursor"]["offset"]))
        for name, saved in backends.items()
    }


def test_a_shipper_killed_in_the_second_run_continues_it(tmp_path: Path) -> None:
    """SIGKILL in the middle of the second application run; the next session resumes that run.

    No third run appears anywhere; the second holds its whole segment once.
    """
    log = write_two_runs(tmp_path / "logdir", second=slice(0, 4))
    state_file = log.parent / ".tf-ship-state.json"
    size = log.stat().st_size
    backends = ("mlflow", "tensorboard", "wandb", "jsonl")
    process = subprocess.Popen(
        tf_ship_command(tmp_path, log, "--poll-interval", "0.1"),
        env=environment(tmp_path),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: saved_segments(state_file) == dict.fromkeys(backends, (1, size)),
            "every backend in the second run, at the end of the log",
            DEADLINE,
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with log.open("ab") as stream:
        stream.write(b"".join(SECOND_LINES[4:]))
    run_tf_ship(tmp_path, log)

    first, second = mlflow_runs(tmp_path)
    assert same(FIRST, first.events)
    assert same(SECOND, second.events)
    assert second.link == first.name
    assert second.status == "FINISHED"
    assert [
        same(FIRST, r.events) or same(SECOND, r.events) for r in tensorboard_runs(tmp_path)
    ] == [
        True,
        True,
    ]
    assert [r.name for r in tensorboard_runs(tmp_path)] == ["exp", "exp/restart1"]
    first_w, second_w = wandb_runs(tmp_path)
    assert same(FIRST, first_w.events)
    assert same(SECOND, second_w.events)
    assert jsonl_runs(tmp_path) == [FIRST, SECOND]
