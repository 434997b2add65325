"""Folders the user cannot write: the state file's place, and the backends' default outputs.

The read-only folders are real read-only mounts (`read_only` fixture), and the command runs
under a pseudo-terminal: what the user sees and the exit code are the test.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from support import TF_SHIP, clean_env, in_terminal

from tf_ship.shipper.places import (
    STATE_NAME,
    PlaceError,
    output_problems,
    state_place,
    user_state_dir,
    user_state_file,
    write_problem,
)

ReadOnly = Callable[[Path], Path]
LINES = 40


def write_log(logdir: Path, count: int = LINES) -> Path:
    """A log of `count` lines of one model."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / "torchfort.log"
    log.write_text(
        "".join(f"TORCHFORT::WANDB: model: m, step: {i}, loss: {i / 8}\n" for i in range(count))
    )
    return log


def screen(text: str) -> list[str]:
    """The lines a terminal shows: progress redraws (after a carriage return) dropped."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    lines = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.rsplit("\r", 1)[-1]
        if line and not line.startswith("["):
            lines.append(line)
    return lines


def env_with_state_home(state_home: Path, **extra: str) -> dict[str, str]:
    """The test environment with ``XDG_STATE_HOME`` set."""
    return clean_env(XDG_STATE_HOME=str(state_home), **extra)


def events_in(path: Path) -> list[int]:
    """The steps of the metric lines of a jsonl file."""
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


# -- finding out whether a folder is writable -----------------------------------------------------


def test_write_problem_sees_a_read_only_mount(tmp_path: Path, read_only: ReadOnly) -> None:
    """A read-only mount is found out by trying, even as root; a missing folder by its parent."""
    folder = read_only(tmp_path / "ro")
    assert write_problem(tmp_path) is None
    assert write_problem(folder) == "read-only file system"
    assert write_problem(folder / "a" / "b") == f"{folder}: read-only file system"
    assert write_problem(tmp_path / "new" / "deeper") is None
    assert list(tmp_path.iterdir()) == [folder]  # the probe files are gone


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (see the ro tests)")
def test_write_problem_sees_permission_bits(tmp_path: Path) -> None:
    """A folder without write permission is not writable, for a user other than root."""
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o555)
    try:
        assert write_problem(folder) == "permission denied"
    finally:
        folder.chmod(0o755)


# -- where the state goes ---------------------------------------------------------------------


def test_user_state_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``$XDG_STATE_HOME/tf-ship``; a relative XDG_STATE_HOME is ignored, as the spec asks."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert user_state_dir() == tmp_path / "xdg" / "tf-ship"
    monkeypatch.setenv("XDG_STATE_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_state_dir() == tmp_path / "home" / ".local" / "state" / "tf-ship"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert user_state_dir() == tmp_path / "home" / ".local" / "state" / "tf-ship"


def test_user_state_file_is_keyed_by_the_resolved_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Readable (the log's last two folders), unique (a hash), the same through a link."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    log = write_log(tmp_path / "project" / "run 1")
    (tmp_path / "link").symlink_to(tmp_path / "project")
    path = user_state_file(log)
    assert path.parent == tmp_path / "xdg" / "tf-ship"
    assert re.fullmatch(r"project-run_1-[0-9a-f]{16}\.json", path.name)
    assert user_state_file(tmp_path / "link" / "run 1" / "torchfort.log") == path
    assert user_state_file(tmp_path / "project" / "run 2" / "torchfort.log") != path


def test_state_place_beside_the_log_when_writable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The usual place, said nothing about; an explicit writable file is taken as it is."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    log = write_log(tmp_path / "logdir")
    assert state_place(log, None).path == log.parent / STATE_NAME
    assert state_place(log, None).note is None
    assert state_place(log, tmp_path / "s.json").path == tmp_path / "s.json"


def test_state_place_in_the_user_folder_when_the_log_is_read_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, read_only: ReadOnly
) -> None:
    """Read-only log folder: the per-user file, said in one line.

    The user folder is found again later, even once the log's folder is writable.
    """
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    log = write_log(tmp_path / "logdir")
    read_only(log.parent)
    place = state_place(log, None)
    assert place.path == user_state_file(log)
    assert place.note == (
        f"cannot write in {log.parent} (read-only file system): keeping the state in {place.path}"
    )
    place.path.parent.mkdir(parents=True)
    place.path.write_text("{}")
    (tmp_path / "writable").mkdir()
    moved = tmp_path / "writable" / "torchfort.log"
    monkeypatch.setattr("tf_ship.shipper.places.user_state_file", lambda _log: place.path)
    again = state_place(moved, None)
    assert again.path == place.path
    assert again.note == f"keeping the state in {place.path}, where an earlier run kept it"


def test_state_place_refused_when_nowhere_is_writable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, read_only: ReadOnly
) -> None:
    """Neither the log's folder nor the user's: the error names --state-file and --no-state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "ro" / "xdg"))
    log = write_log(tmp_path / "ro" / "logdir")
    read_only(tmp_path / "ro")
    with pytest.raises(PlaceError, match=r"give --state-file FILE .*, or --no-state$"):
        state_place(log, None)
    with pytest.raises(PlaceError, match=r"cannot write the state file .*read-only file system"):
        state_place(log, tmp_path / "ro" / "state.json")


# -- the command, in a terminal ---------------------------------------------------------------


def ship_command(logdir: Path, out: Path, *extra: str) -> list[str]:
    """``tf-ship --logdir D --no-follow --backend jsonl --jsonl-path OUT``."""
    return [
        *TF_SHIP,
        "--logdir",
        str(logdir),
        "--no-follow",
        "--backend",
        "jsonl",
        "--jsonl-path",
        str(out),
        *extra,
    ]


def test_a_read_only_log_keeps_its_state_in_the_user_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, read_only: ReadOnly
) -> None:
    """Ships everything at once and says where the state went; the next run finds it there.

    Nothing is shipped twice. Before, it shipped nothing and retried "could not save the state"
    for 10 minutes.
    """
    log = write_log(tmp_path / "logdir")
    read_only(log.parent)
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    env = clean_env()
    state = user_state_file(log)
    note = f"tf-ship: cannot write in {log.parent} (read-only file system): keeping the state in "
    first = in_terminal(ship_command(log.parent, out), env=env, timeout=60)
    assert first.returncode == 0, first.stdout
    shown = screen(first.stdout)
    assert shown[0] == note + str(state)
    assert sum("state" in line for line in shown) == 1
    assert f"backend jsonl: FINISHED, {LINES} events" in first.stdout
    assert state.is_file()
    second = in_terminal(ship_command(log.parent, out), env=env, timeout=60)
    assert second.returncode == 0, second.stdout
    assert screen(second.stdout)[:2] == [
        note + str(state),
        f"tf-ship: backend jsonl resumes at line {LINES + 1}",
    ]
    assert events_in(out) == list(range(LINES))


def test_no_writable_place_for_the_state_exits_2_at_once(
    tmp_path: Path, read_only: ReadOnly
) -> None:
    """Nowhere to keep the state: one line, exit 2, nothing shipped; --state-file there too.

    The log's folder and the user's state folder are read-only.
    """
    log = write_log(tmp_path / "ro" / "logdir")
    read_only(tmp_path / "ro")
    out = tmp_path / "out.jsonl"
    env = env_with_state_home(tmp_path / "ro" / "xdg")
    result = in_terminal(ship_command(log.parent, out), env=env, timeout=60)
    assert result.returncode == 2
    expected = (
        f"tf-ship: error: cannot keep the state in the log's folder {log.parent} (read-only file "
        f"system) nor in {tmp_path / 'ro' / 'xdg' / 'tf-ship'} ({tmp_path / 'ro'}: read-only file "
        "system): give --state-file FILE in a folder you can write, or --no-state"
    )
    assert screen(result.stdout) == [expected]
    explicit = tmp_path / "ro" / "state.json"
    result = in_terminal(
        ship_command(log.parent, out, "--state-file", str(explicit)), env=env, timeout=60
    )
    assert result.returncode == 2
    expected = (
        f"tf-ship: error: cannot write the state file {explicit} (read-only file system): give "
        "--state-file a file you can write, or --no-state"
    )
    assert screen(result.stdout) == [expected]
    assert not out.exists()
    no_state = in_terminal(ship_command(log.parent, out, "--no-state"), env=env, timeout=60)
    assert no_state.returncode == 0, no_state.stdout
    assert events_in(out) == list(range(LINES))


@pytest.mark.parametrize(
    ("backend", "flag", "where"),
    [
        ("tensorboard", "--tensorboard-dir", "runs"),
        ("mlflow", "--mlflow-tracking-uri", ""),
        ("wandb", "--wandb-dir", ""),
    ],
)
def test_a_default_output_in_a_read_only_folder_exits_2_at_once(
    tmp_path: Path, read_only: ReadOnly, backend: str, flag: str, where: str
) -> None:
    """A default output in a read-only current folder: refused before any tracker starts.

    One line naming the option that moves it, exit 2.
    """
    log = write_log(tmp_path / "logdir")
    cwd = read_only(tmp_path / "cwd")
    env = env_with_state_home(tmp_path / "xdg", WANDB_MODE="offline")
    env.pop("WANDB_DIR", None)
    result = in_terminal(
        [*TF_SHIP, "--logdir", str(log.parent), "--no-follow", "--backend", backend],
        cwd=cwd,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout
    target = cwd / where if where else cwd
    reason = f"{cwd}: read-only file system" if where else "read-only file system"
    expected = (
        f"tf-ship: error: the {backend} backend cannot write to {target} ({reason}): choose "
        f"another place with {flag}"
    )
    assert screen(result.stdout) == [expected]
    assert sorted(p.name for p in log.parent.iterdir()) == ["torchfort.log"]


def test_outputs_placed_elsewhere_are_not_refused(tmp_path: Path, read_only: ReadOnly) -> None:
    """A read-only current folder is fine when nothing is written there.

    An explicit --tensorboard-dir elsewhere ships; a tracking URI or a wandb dir moves the others.
    """
    log = write_log(tmp_path / "logdir")
    cwd = read_only(tmp_path / "cwd")
    result = in_terminal(
        [
            *TF_SHIP,
            "--logdir",
            str(log.parent),
            "--no-follow",
            "--backend",
            "tensorboard",
            "--tensorboard-dir",
            str(tmp_path / "tb"),
        ],
        cwd=cwd,
        env=env_with_state_home(tmp_path / "xdg"),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout
    assert f"backend tensorboard: FINISHED, {LINES} events" in result.stdout
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        from tf_ship.backends import mlflow, tensorboard, wandb  # noqa: PLC0415

        backends = [("mlflow", mlflow.MlflowBackend), ("wandb", wandb.WandbBackend)]
        moved = {"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}, "wandb": {"directory": "/"}}
        assert output_problems(backends, moved) == []
        assert len(output_problems(backends, {})) == 2 - ("MLFLOW_TRACKING_URI" in os.environ)
        assert output_problems([("tensorboard", tensorboard.TensorBoardBackend)], {}) != []
    finally:
        os.chdir(previous)


def test_run_refuses_a_default_log_folder_in_a_read_only_folder(
    tmp_path: Path, read_only: ReadOnly
) -> None:
    """``tf-ship run`` in a read-only folder without a log folder: refused, naming --logdir.

    It would make ./tf-ship-runs/<time>; refused before the application starts.
    """
    cwd = read_only(tmp_path / "cwd")
    marker = tmp_path / "started"
    result = in_terminal(
        [*TF_SHIP, "run", "--backend", "null", "--", "touch", str(marker)],
        cwd=cwd,
        env=env_with_state_home(tmp_path / "xdg"),
        timeout=60,
    )
    assert result.returncode == 2, result.stdout
    expected = (
        f"tf-ship: error: cannot make a log folder in {cwd / 'tf-ship-runs'} ({cwd}: read-only "
        "file system): give --logdir DIR"
    )
    assert screen(result.stdout) == [expected]
    assert not marker.exists()


def test_watch_keeps_the_state_of_read_only_logs_in_the_user_folder(
    tmp_path: Path, read_only: ReadOnly
) -> None:
    """``watch`` over a read-only tree ships each log and keeps each state in the user folder."""
    root = tmp_path / "root"
    write_log(root / "a")
    write_log(root / "b", 10)
    read_only(root)
    out = tmp_path / "out"
    env = env_with_state_home(tmp_path / "xdg")
    result = in_terminal(
        [*TF_SHIP, "watch", str(root), "--no-follow", "-b", "jsonl", "--jsonl-path", str(out)],
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout
    assert events_in(out / "a.jsonl") == list(range(LINES))
    assert events_in(out / "b.jsonl") == list(range(10))
    states = sorted(p.name for p in (tmp_path / "xdg" / "tf-ship").glob("*.json"))
    assert [re.sub(r"-[0-9a-f]{16}", "", name) for name in states] == ["root-a.json", "root-b.json"]
