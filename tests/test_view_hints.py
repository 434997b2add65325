"""The summary's view hints run as printed, even when the venv's bin is not on the PATH."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tf_ship.backends.hints import program
from tf_ship.backends.mlflow.store import absolute_store

BINDIR = Path(sys.executable).parent


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_tracker_command_outside_the_path_is_named_by_its_full_path(name, monkeypatch):
    """The venv used without activating it: the hint names the program beside this Python."""
    if not (BINDIR / name).is_file():
        pytest.skip(f"{name} is not installed beside this Python")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    spelled = program(name)
    assert spelled == str(BINDIR / name)
    result = subprocess.run(
        [spelled, "--version"], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("PATH", f"{BINDIR}:/usr/bin:/bin")
    assert program(name) == name


def test_a_program_not_installed_is_installed_first(tmp_path, monkeypatch):
    """Not installed anywhere: the hint starts with installing it into this environment."""
    elsewhere = tmp_path / "env" / "bin"
    elsewhere.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(elsewhere / "python"))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert program("mlflow") == (
        f"{elsewhere / 'python'} -m pip install mlflow && {elsewhere / 'mlflow'}"
    )


def test_a_relative_sqlite_store_is_named_absolutely(tmp_path, monkeypatch):
    """``sqlite:///mlflow.db`` works only from its folder: the hint names the file absolutely."""
    monkeypatch.chdir(tmp_path)
    assert absolute_store("sqlite:///sub/mlflow.db") == f"sqlite:///{tmp_path}/sub/mlflow.db"
    assert absolute_store("sqlite:////abs/m.db?timeout=5") == "sqlite:////abs/m.db?timeout=5"
    assert absolute_store("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
