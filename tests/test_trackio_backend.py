"""The trackio backend, read back from trackio's own store with trackio's own reader.

All tests of this module share one trackio store (trackio reads ``$TRACKIO_DIR`` once, when it
is imported); each test writes its own project.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import attrs
import pytest
from crash_support import resume_of as saved_resume
from crash_support import ship_through_kills
from hard_log import (
    MYMODEL_CONFIG,
    Event,
    comparable,
    expected_events,
    line,
    missing_and_doubled,
    split_row,
    write_log,
)
from support import TF_SHIP, clean_env

from tf_ship.backends.base import FatalBackendError
from tf_ship.backends.trackio import TrackioBackend
from tf_ship.shipper.events import FileIdentity, MetricEvent, ModelConfig, RunInfo, RunStatus

if importlib.util.find_spec("trackio") is None:  # not imported here: TRACKIO_DIR comes first
    pytest.skip("trackio is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trackio's store for this module: imported with TRACKIO_DIR pointing at a temp folder."""
    directory = tmp_path_factory.mktemp("trackio-store")
    previous = os.environ.get("TRACKIO_DIR")
    os.environ["TRACKIO_DIR"] = str(directory)
    try:
        from trackio import utils  # noqa: PLC0415 - TRACKIO_DIR must be set first
    finally:
        if previous is None:
            os.environ.pop("TRACKIO_DIR", None)
        else:
            os.environ["TRACKIO_DIR"] = previous
    if Path(utils.TRACKIO_DIR) != directory:
        pytest.fail(f"trackio was imported before with its store in {utils.TRACKIO_DIR}")
    return directory


@pytest.fixture
def project() -> str:
    """A project of its own for each test."""
    return f"tests-{uuid.uuid4().hex[:8]}"


def storage() -> Any:
    """Trackio's own reader (and writer) of its store."""
    from trackio.sqlite_storage import SQLiteStorage  # noqa: PLC0415 - after the store fixture

    return SQLiteStorage


def run_records(project: str) -> list[dict[str, Any]]:
    """The runs of a project, oldest first, as trackio lists them."""
    return list(storage().get_run_records(project))


def stored_events(project: str, run_id: str) -> list[Event]:
    """Every event of a run, ordered by trackio's step, which must count 0, 1, 2, ..."""
    rows = storage().get_logs(project, run_id=run_id)
    rows.sort(key=lambda row: row["step"])
    assert [row["step"] for row in rows] == list(range(len(rows)))
    events = []
    for row in rows:
        model, metric, metric_key, step_key = split_row(
            key for key in row if key not in {"step", "timestamp"}
        )
        assert type(row[step_key]) is int, row
        events.append((model, metric, row[step_key], row[metric_key]))
    return events


def ship(store: Path, logdir: Path, project: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The real command, shipping the log in `logdir` to trackio."""
    return subprocess.run(
        [*TF_SHIP, "--logdir", str(logdir), "-b", "trackio", "--trackio-project", project, *extra],
        env=clean_env(TRACKIO_DIR=str(store)),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


# -- the hard log -----------------------------------------------------------------------------


def test_hard_log_arrives_value_by_value(store: Path, tmp_path: Path, project: str) -> None:
    """Every event once, in log order, each value and step exact, under its own model's step.

    NaN, infinities, -0, 1e+300, denormals; steps negative, repeated, going backwards, up to the
    int64 limits; names with spaces, ``: ``, ``/``, leading dots and slashes, Latin-1, UTF-8, a
    tab, 600 characters. trackio's own step counts the events of the run.
    """
    logdir = tmp_path / "logdir"
    write_log(logdir)
    result = ship(store, logdir, project, "--no-follow", "--on-restart", "continue")
    assert result.returncode == 0, result.stderr
    assert "backend trackio: FINISHED" in result.stderr
    assert f"trackio show --project {project}" in result.stderr
    (record,) = run_records(project)
    assert record["name"] == "logdir"
    assert comparable(stored_events(project, str(record["id"]))) == comparable(expected_events())
    config = storage().get_run_config(project, run_id=record["id"])
    assert config["mymodel"] == {
        "general": {"report_frequency": 100},
        "optimizer": {"type": "adam", "parameters": {"learning_rate": 1e-3}},
    }
    assert config["td3 system"] == {"algorithm": {"type": "td3"}}
    assert config["_Group"] is None


def test_a_project_trackio_refuses_fails_at_once(store: Path, tmp_path: Path) -> None:
    """A project name trackio reserves is refused in one line, with exit 1, without retries."""
    logdir = tmp_path / "logdir"
    write_log(logdir)
    result = ship(store, logdir, "model_system", "--no-follow")
    assert result.returncode == 1
    assert "reserved suffix" in result.stderr
    assert "retry" not in result.stderr


# -- resuming and replays ---------------------------------------------------------------------


def test_a_restarted_shipper_continues_the_same_run(
    store: Path, tmp_path: Path, project: str
) -> None:
    """A second session resumes the run from its cursor: one run, every event once, in order."""
    logdir = tmp_path / "logdir"
    logdir.mkdir()
    log = logdir / "torchfort.log"
    first = [("m", "loss", step, step / 8) for step in range(50)]
    second = [("m", "loss", step, step / 8) for step in range(50, 80)]
    log.write_bytes(b"".join(line(*event) for event in first))
    assert ship(store, logdir, project, "--no-follow").returncode == 0
    with log.open("ab") as stream:
        stream.write(b"".join(line(*event) for event in second))
    result = ship(store, logdir, project, "--no-follow")
    assert result.returncode == 0, result.stderr
    (record,) = run_records(project)
    assert stored_events(project, str(record["id"])) == [*first, *second]


def events(start: int, stop: int) -> list[MetricEvent]:
    """Events of steps [start, stop), each with its place in a log file."""
    file = FileIdentity(1, 2)
    return [
        MetricEvent(model, "loss", step, step + index / 4, file, (2 * step + index) * 100)
        for step in range(start, stop)
        for index, model in enumerate(("actor", "critic"))
    ]


def keys(batch: list[MetricEvent]) -> list[Event]:
    """(model, metric, step, value) of each event."""
    return [(e.model, e.metric, e.step, e.value) for e in batch]


def test_a_replay_of_an_in_flight_batch_adds_nothing(store: Path, project: str) -> None:
    """Rows written after the saved state have the ids the replay gives: trackio ignores them."""
    del store
    run = RunInfo(Path("logdir"), Path("logdir/torchfort.log"), run_name="replay")
    first = TrackioBackend(project=project)
    first.open(run)
    done, in_flight = events(0, 5), events(5, 10)
    first.log_metrics(done)
    first.flush()
    saved = first.resume_state()
    first.log_metrics(in_flight)
    first.flush()  # the crash comes before the state after this flush is saved
    first.close(RunStatus.KILLED)

    second = TrackioBackend(project=project)
    second.open(attrs.evolve(run, state=saved))
    replay = [*in_flight, *events(10, 12)]
    second.log_metrics(replay)
    second.flush()
    assert second.resume_state()["events"] == len(done) + len(replay)
    second.close(RunStatus.FINISHED)
    assert stored_events(project, str(saved["run_id"])) == keys([*done, *replay])


def test_a_batch_sent_again_after_a_failed_flush_is_stored_once(
    store: Path, project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush that committed and then failed is retried with the same batch: one row each."""
    del store
    backend = TrackioBackend(project=project)
    backend.open(RunInfo(Path("logdir"), Path("logdir/torchfort.log"), run_name="again"))
    real = storage().bulk_log
    failures = []

    def commit_then_fail(**arguments: Any) -> None:
        real(**arguments)
        if not failures:
            failures.append(1)
            msg = "disk I/O error"
            raise sqlite3.OperationalError(msg)

    monkeypatch.setattr(storage(), "bulk_log", commit_then_fail)
    batch = events(0, 4)
    backend.log_metrics(batch)
    with pytest.raises(sqlite3.OperationalError):
        backend.flush()
    backend.log_metrics(batch)  # what the engine does after a failed flush
    backend.flush()
    backend.log_metrics(events(4, 5))
    backend.flush()
    run_id = str(backend.resume_state()["run_id"])
    backend.close(RunStatus.FINISHED)
    assert stored_events(project, run_id) == keys(events(0, 5))


def test_a_config_sent_before_a_restart_of_the_shipper_is_kept(store: Path, project: str) -> None:
    """A resumed run keeps the configs of models the replay never mentions again."""
    del store
    run = RunInfo(Path("logdir"), Path("logdir/torchfort.log"), run_name="configs")
    first = TrackioBackend(project=project)
    first.open(run)
    first.log_config(ModelConfig("early", {"lr": float("nan"), "sizes": [1, 2]}))
    first.log_metrics(events(0, 1))
    first.flush()
    saved = first.resume_state()
    first.close(RunStatus.KILLED)
    second = TrackioBackend(project=project)
    second.open(attrs.evolve(run, state=saved))
    second.log_config(ModelConfig("late", {"lr": 1e-3}))
    second.close(RunStatus.FINISHED)
    config = storage().get_run_config(project, run_id=saved["run_id"])
    assert config["early"] == {"lr": "NaN", "sizes": [1, 2]}  # trackio's spelling of NaN
    assert config["late"] == {"lr": 1e-3}


@pytest.mark.slow
def test_kill_nine_during_shipping_delivers_every_event_once(
    store: Path, tmp_path: Path, project: str
) -> None:
    """SIGKILLs at random moments (some inside a state save), then a drain: exactly once."""
    report = ship_through_kills(
        tmp_path,
        "trackio",
        ["--trackio-project", project],
        {"TRACKIO_DIR": str(store)},
    )
    assert len(report.expected) > 500
    run_id = str(saved_resume(report.state_file, "trackio")["run_id"])
    assert [r["id"] for r in run_records(project)] == [run_id]
    found = stored_events(project, run_id)
    missing, doubled = missing_and_doubled(report.expected, found)
    sys.stdout.write(f"{report.kills} kills, {len(report.expected)} events, {len(found)} found\n")
    assert (missing[:5], doubled[:5]) == ([], [])
    assert comparable(found) == comparable(report.expected)  # and in log order


# -- application restarts ---------------------------------------------------------------------


def test_an_application_restart_makes_a_linked_run(
    store: Path, tmp_path: Path, project: str
) -> None:
    """Each application run of the log is a run of its own, grouped under the first run's name."""
    logdir = tmp_path / "job"
    logdir.mkdir()
    (logdir / "config_mymodel.yaml").write_text(MYMODEL_CONFIG, encoding="utf-8")
    first = [("mymodel", "train_loss", step, step / 8) for step in range(100, 600, 100)]
    second = [("mymodel", "train_loss", step, step / 4) for step in range(100, 400, 100)]
    (logdir / "torchfort.log").write_bytes(b"".join(line(*e) for e in [*first, *second]))
    result = ship(store, logdir, project, "--no-follow", "--on-restart", "new-run")
    assert result.returncode == 0, result.stderr
    records = run_records(project)
    assert [r["name"] for r in records] == ["job", "job-restart1"]
    assert stored_events(project, str(records[0]["id"])) == first
    assert stored_events(project, str(records[1]["id"])) == second
    configs = [storage().get_run_config(project, run_id=r["id"]) for r in records]
    assert [c["_Group"] for c in configs] == [None, "job"]
    assert all("mymodel" in c for c in configs)


# -- without trackio ----------------------------------------------------------------------------


def test_the_module_and_the_command_line_do_not_import_trackio() -> None:
    """The backend imports trackio when a run opens, not at import, nor does `--help`."""
    code = (
        "import sys, tf_ship.backends.trackio, tf_ship.cli\n"
        "assert 'trackio' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_trackio_open_fails_at_once_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No trackio installed: a fatal error (no retries) that says what to install."""
    monkeypatch.setitem(sys.modules, "trackio", None)
    monkeypatch.setitem(sys.modules, "trackio.sqlite_storage", None)
    backend = TrackioBackend()
    with pytest.raises(FatalBackendError, match=r"tf-ship\[trackio\]"):
        backend.open(RunInfo(Path("logdir"), Path("logdir/torchfort.log")))
    backend.close(RunStatus.FAILED)
