"""The SwanLab backend in offline mode, read back from its run files with SwanLab's own reader.

Nothing leaves the machine: every run is offline (or fails before it starts, for want of a
login), with SwanLab's home and log folders inside the test's temporary folder.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from crash_support import resume_of, ship_through_kills
from hard_log import (
    INT64_MAX,
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
from terminal import on_a_terminal

from tf_ship.backends.base import FatalBackendError
from tf_ship.backends.swanlab.backend import KEY_MAP_CONFIG, SwanLabBackend
from tf_ship.backends.swanlab.files import scalars, session_dirs
from tf_ship.backends.swanlab.keys import KeyMap, is_kept, sanitize_key
from tf_ship.shipper.events import FileIdentity, MetricEvent, RunInfo, RunStatus

pytest.importorskip("swanlab")


def swanlab_env(root: Path, **extra: str) -> dict[str, str]:
    """A clean environment whose SwanLab home (credentials, settings) is inside `root`."""
    env = {k: v for k, v in clean_env().items() if not k.startswith("SWANLAB_") and k != "HOME"}
    return {**env, "HOME": str(root / "home"), "SWANLAB_ROOT": str(root / "swanlab-root"), **extra}


def ship(root: Path, logdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The real command, shipping the log in `logdir` to an offline SwanLab under `root`."""
    return subprocess.run(
        [
            *TF_SHIP,
            "--logdir",
            str(logdir),
            "-b",
            "swanlab",
            "--swanlab-mode",
            "offline",
            "--swanlab-logdir",
            str(root / "swanlog"),
            *extra,
        ],
        env=swanlab_env(root),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def saved(logdir: Path) -> dict[str, Any]:
    """The SwanLab backend's saved resume state."""
    return resume_of(logdir / ".tf-ship-state.json", "swanlab")


def stored_events(log_dir: Path, state: Mapping[str, Any]) -> list[Event]:
    """Every event the run's sessions hold, ordered by SwanLab's step, which counts 0, 1, 2, ...

    No (key, step) is held twice, in one session file or across them.
    """
    names = {key: name for name, key in state["keys"].items()}
    rows: dict[int, dict[str, float]] = collections.defaultdict(dict)
    for session in session_dirs(log_dir, str(state["run_id"])):
        for key, step, value in scalars(session):
            assert names[key] not in rows[step], (key, step, session)
            rows[step][names[key]] = value
    assert sorted(rows) == list(range(len(rows)))
    found = []
    for step in sorted(rows):
        model, metric, metric_name, step_name = split_row(rows[step])
        found.append((model, metric, rows[step][step_name], rows[step][metric_name]))
    return found


def as_stored(events: list[Event]) -> list[Event]:
    """What SwanLab can hold of events: steps as doubles."""
    return [(m, k, float(s), v) for m, k, s, v in events]


def run_config(session: Path) -> dict[str, Any]:
    """A session's run config, from SwanLab's config file."""
    content = yaml.safe_load((session / "files" / "config.yaml").read_text(encoding="utf-8"))
    return {key: entry["value"] for key, entry in content.items()}


def start_record(session: Path) -> Any:
    """The start record of a session's run file: name, group, tags of the run."""
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record  # noqa: PLC0415
    from swanlab.sdk.internal.core_python.store import DataStoreReader  # noqa: PLC0415

    reader = DataStoreReader()
    (path,) = session.glob("run-*.swanlab")
    reader.open(path)
    try:
        record = Record()
        record.ParseFromString(next(iter(reader)))
    finally:
        reader.close()
    return record.start


# -- keys ---------------------------------------------------------------------------------------


def test_keys_swanlab_would_change_are_renamed_uniquely() -> None:
    """Stripped edges, control characters, 512+ characters, the system prefix: renamed, distinct.

    Each key passes SwanLab's own validation unchanged.
    """
    from swanlab.sdk.internal.run.fmt import validate_key  # noqa: PLC0415 - SwanLab's own check

    names = [
        "a/x",
        " a/x",
        "a/x ",
        ".a/x",
        "/a/x/",
        "a/x_",
        "_a/x",
        "tab\there",
        "new\nline",
        "k" * 600,
        "k" * 600 + "!",
        "__swanlab__.m/x",
        "...",
        "température/énergie ∂",
    ]
    keys = KeyMap()
    assigned = [keys.key(name) for name in names]
    assert len(set(assigned)) == len(names)
    for name, key in zip(names, assigned, strict=True):
        assert is_kept(key)
        assert validate_key(key) == key
        assert (key == name) == is_kept(name) or key.endswith(("_2", "_3")), (name, key)
    assert assigned[:3] == ["a/x", "_a/x", "a/x_"]
    assert sanitize_key("k" * 600).startswith("k" * 503 + "~")
    assert KeyMap(keys.keys).key(" a/x") == "_a/x"  # a later session keeps the assignment


# -- the hard log -------------------------------------------------------------------------------


def test_hard_log_arrives_value_by_value(tmp_path: Path) -> None:
    """Every event once, in log order, values exact, steps as SwanLab's doubles hold them.

    Names SwanLab would change are logged under another key, listed in the run config; the two
    steps beyond 2**53 that doubles cannot hold are reported, once, with their count.
    """
    logdir = tmp_path / "logdir"
    write_log(logdir)
    result = ship(tmp_path, logdir, "--no-follow", "--on-restart", "continue")
    assert result.returncode == 0, result.stderr
    assert "backend swanlab: FINISHED" in result.stderr
    assert "swanlab sync " in result.stderr
    assert result.stderr.count("steps beyond 2**53 are rounded") == 1
    assert "SwanLab: 2 steps beyond 2**53 are stored rounded" in result.stderr
    state = saved(logdir)
    found = stored_events(tmp_path / "swanlog", state)
    assert comparable(found) == comparable(as_stored(expected_events()))
    (session,) = session_dirs(tmp_path / "swanlog", str(state["run_id"]))
    assert float(INT64_MAX) in [step for _, _, step, _ in found]
    config = run_config(session)
    assert config["mymodel"] == {
        "general": {"report_frequency": 100},
        "optimizer": {"type": "adam", "parameters": {"learning_rate": 1e-3}},
    }
    assert config["td3 system"] == {"algorithm": {"type": "td3"}}
    renamed = config[KEY_MAP_CONFIG]
    assert renamed[".hidden//leading slash"] == "_hidden//leading slash"
    assert renamed["m/tab\there"] == "m/tab_here"
    assert start_record(session).name == "logdir"


def test_online_without_a_login_fails_at_once_in_one_line(tmp_path: Path) -> None:
    """No API key, a terminal, no mode given: exit 1 in seconds, no prompt, the ways out named."""
    logdir = tmp_path / "logdir"
    write_log(logdir)
    command = [*TF_SHIP, "--logdir", str(logdir), "--no-follow", "-b", "swanlab"]
    started = time.monotonic()
    result = subprocess.run(
        on_a_terminal(command),
        stdin=subprocess.DEVNULL,
        env=swanlab_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    assert time.monotonic() - started < 60
    assert "swanlab login" in result.stdout
    assert "--swanlab-mode offline" in result.stdout
    assert "choice" not in result.stdout
    assert "retry" not in result.stdout
    assert not (tmp_path / "swanlog").exists()


# -- resuming and replays -----------------------------------------------------------------------


def test_a_restarted_shipper_continues_the_same_run(tmp_path: Path) -> None:
    """A second session continues the run (a second folder for `swanlab sync`): each event once."""
    logdir = tmp_path / "logdir"
    logdir.mkdir()
    (logdir / "config_mymodel.yaml").write_text(MYMODEL_CONFIG, encoding="utf-8")
    log = logdir / "torchfort.log"
    first = [("mymodel", "loss", step, step / 8) for step in range(50)]
    second = [("other", "loss", step, step / 8) for step in range(50, 80)]
    log.write_bytes(b"".join(line(*event) for event in first))
    assert ship(tmp_path, logdir, "--no-follow").returncode == 0
    run_id = saved(logdir)["run_id"]
    with log.open("ab") as stream:
        stream.write(b"".join(line(*event) for event in second))
    result = ship(tmp_path, logdir, "--no-follow")
    assert result.returncode == 0, result.stderr
    state = saved(logdir)
    assert state["run_id"] == run_id
    sessions = session_dirs(tmp_path / "swanlog", run_id)
    assert len(sessions) == 2
    assert f"swanlab sync {sessions[1]}" in result.stderr
    assert stored_events(tmp_path / "swanlog", state) == as_stored([*first, *second])
    assert "mymodel" in run_config(sessions[1])  # the first session's config is kept


def events(start: int, stop: int) -> list[MetricEvent]:
    """Events of steps [start, stop), each with its place in a log file."""
    file = FileIdentity(1, 2)
    return [
        MetricEvent(model, "loss", step, step + index / 4, file, (2 * step + index) * 100)
        for step in range(start, stop)
        for index, model in enumerate(("actor", "critic"))
    ]


def test_a_replay_and_a_batch_sent_again_add_nothing(tmp_path: Path) -> None:
    """A batch re-sent after a failed flush, and a replay of what a crashed session stored."""
    run = RunInfo(tmp_path, tmp_path / "torchfort.log", run_name="replay")
    log_dir = tmp_path / "swanlog"
    first = SwanLabBackend(mode="offline", logdir=log_dir)
    first.open(run)
    done, in_flight = events(0, 5), events(5, 10)
    first.log_metrics(done)
    first.log_metrics(done)  # the engine's retry after a failed flush
    first.flush()
    state = first.resume_state()
    first.log_metrics(in_flight)
    first.flush()  # the crash comes before the state after this flush is saved
    first.close(RunStatus.KILLED)

    second = SwanLabBackend(mode="offline", logdir=log_dir)
    second.open(attrs.evolve(run, state=state))
    replay = [*in_flight, *events(10, 12)]
    second.log_metrics(replay)
    second.flush()
    assert second.resume_state()["events"] == len(done) + len(replay)
    later = second.resume_state()
    second.close(RunStatus.FINISHED)
    expected = [(e.model, e.metric, e.step, e.value) for e in [*done, *replay]]
    assert stored_events(log_dir, later) == as_stored(expected)


@pytest.mark.slow
def test_kill_nine_during_shipping_delivers_every_event_once(tmp_path: Path) -> None:
    """SIGKILLs at random moments (some inside a state save), then a drain: exactly once."""
    report = ship_through_kills(
        tmp_path,
        "swanlab",
        ["--swanlab-mode", "offline", "--swanlab-logdir", str(tmp_path / "swanlog")],
        swanlab_env(tmp_path),
    )
    assert len(report.expected) > 500
    state = resume_of(report.state_file, "swanlab")
    found = stored_events(tmp_path / "swanlog", state)
    missing, doubled = missing_and_doubled(as_stored(report.expected), found)
    sessions = session_dirs(tmp_path / "swanlog", str(state["run_id"]))
    sys.stdout.write(
        f"{report.kills} kills, {len(sessions)} sessions, {len(report.expected)} events, "
        f"{len(found)} found\n"
    )
    assert (missing[:5], doubled[:5]) == ([], [])
    assert comparable(found) == comparable(as_stored(report.expected))  # and in log order


# -- application restarts -----------------------------------------------------------------------


def test_an_application_restart_makes_a_linked_run(tmp_path: Path) -> None:
    """Each application run of the log is a run of its own, grouped under the first run's name."""
    logdir = tmp_path / "job"
    logdir.mkdir()
    (logdir / "config_mymodel.yaml").write_text(MYMODEL_CONFIG, encoding="utf-8")
    first = [("mymodel", "train_loss", step, step / 8) for step in range(100, 600, 100)]
    second = [("mymodel", "train_loss", step, step / 4) for step in range(100, 400, 100)]
    (logdir / "torchfort.log").write_bytes(b"".join(line(*e) for e in [*first, *second]))
    result = ship(tmp_path, logdir, "--no-follow", "--on-restart", "new-run")
    assert result.returncode == 0, result.stderr
    state_file = logdir / ".tf-ship-state.json"
    backend = json.loads(state_file.read_text())["backends"]["swanlab"]
    first_state, second_state = backend["segments"]["first_run"], backend["resume"]
    assert first_state["run_id"] != second_state["run_id"]
    log_dir = tmp_path / "swanlog"
    assert stored_events(log_dir, first_state) == as_stored(first)
    assert stored_events(log_dir, second_state) == as_stored(second)
    (first_session,) = session_dirs(log_dir, first_state["run_id"])
    (second_session,) = session_dirs(log_dir, second_state["run_id"])
    assert start_record(first_session).name == "job"
    restart = start_record(second_session)
    assert (restart.name, restart.group, list(restart.tags)) == ("job-restart1", "job", ["restart"])
    assert all("mymodel" in run_config(s) for s in (first_session, second_session))
    assert os.path.commonpath([first_session, second_session]) == str(log_dir)


# -- without SwanLab ----------------------------------------------------------------------------


def test_the_module_and_the_command_line_do_not_import_swanlab() -> None:
    """SwanLab is imported when a run opens, not by the backend's modules or by `--help`."""
    code = (
        "import sys, tf_ship.backends.swanlab, tf_ship.cli\n"
        "assert 'swanlab' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_swanlab_open_fails_at_once_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No SwanLab installed: a fatal error (no retries) that says what to install."""
    monkeypatch.setitem(sys.modules, "swanlab", None)
    backend = SwanLabBackend(mode="offline", logdir=tmp_path)
    with pytest.raises(FatalBackendError, match=r"tf-ship\[swanlab\]"):
        backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    backend.close(RunStatus.FAILED)


def test_a_second_run_in_the_same_process_fails_at_once(tmp_path: Path) -> None:
    """SwanLab keeps one run per process: a second backend fails at once, the first goes on."""
    run = RunInfo(tmp_path, tmp_path / "torchfort.log", run_name="one")
    first = SwanLabBackend(mode="offline", logdir=tmp_path / "swanlog")
    first.open(run)
    second = SwanLabBackend(mode="offline", logdir=tmp_path / "swanlog")
    with pytest.raises(FatalBackendError, match="one per process"):
        second.open(run)
    second.close(RunStatus.FAILED)
    first.log_metrics(events(0, 2))
    first.flush()
    state = first.resume_state()
    first.close(RunStatus.FINISHED)
    expected = [(e.model, e.metric, e.step, e.value) for e in events(0, 2)]
    assert stored_events(tmp_path / "swanlog", state) == as_stored(expected)
