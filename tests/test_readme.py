"""The README's two commands, run in order in a fresh copy of the project, leave it clean.

The commands come from `.ci/readme_commands`, which `.ci/run` runs too: one source, the README.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from support import TF_SHIP, clean_env

from tf_ship.example_outputs import EXAMPLE_OUTPUT, example_backend_options

ROOT = Path(__file__).resolve().parent.parent
READ_COMMANDS = [sys.executable, str(ROOT / ".ci" / "readme_commands")]
PROJECT = ("tf_ship", "tests", "benchmarks", "examples", "pyproject.toml")
"""What ruff checks (the folders test_quality.py names) and its configuration."""
TRACKER_FOLDERS = ("wandb", "mlflow", "mlruns", "runs", "tensorboard", "tensorboardX")


def readme_command(number: int) -> str:
    """README command `number` (1: the example, 2: the tests), as `.ci/run` gets it."""
    result = subprocess.run(
        [*READ_COMMANDS, str(number)], capture_output=True, text=True, check=True
    )
    return result.stdout


def tf_ship_words(command: str) -> list[str]:
    """The `tf-ship` part of a README command, run by this interpreter instead of .venv's."""
    for part in command.split("&&"):
        words = shlex.split(part)
        if words and Path(words[0]).name == "tf-ship":
            return [*TF_SHIP, *words[1:]]
    pytest.fail(f"no tf-ship command in {command!r}")


def copy_project(target: Path) -> Path:
    """A copy of what ruff looks at, as a fresh clone holds it."""
    target.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*_cache")
    for name in PROJECT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)
    return target


def ruff(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ruff installed beside this interpreter in `cwd`, with no cache."""
    tool = shutil.which("ruff", path=str(Path(sys.executable).parent))
    assert tool is not None, "ruff comes with the test extra"
    folders = [f for f in PROJECT if (cwd / f).is_dir()]
    return subprocess.run(
        [tool, *args, "--no-cache", *folders], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_the_readme_starts_with_the_two_commands() -> None:
    """Command 1 runs the example and command 2 the tests; .ci/run runs both, in that order."""
    example, tests = readme_command(1), readme_command(2)
    assert "tf-ship --example" in example
    assert "-m pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.index("readme_commands 1") < ci.index("readme_commands 2")


@pytest.mark.slow
def test_readme_command_1_writes_only_its_folder_and_ruff_stays_clean(tmp_path: Path) -> None:
    """The example's outputs all land in ./tf-ship-example; ruff then finds nothing.

    Before, the example wrote ./wandb, ./mlflow.db, ./mlruns and ./runs, and ruff took the
    ./wandb folder for first-party code (an import-order error in the benchmarks).
    """
    clone = copy_project(tmp_path / "clone")
    before = set(clone.iterdir())
    command = tf_ship_words(readme_command(1))
    result = subprocess.run(
        command,
        cwd=clone,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    folder = clone / EXAMPLE_OUTPUT
    assert set(clone.iterdir()) - before == {folder}
    for backend in ("mlflow", "tensorboard", "wandb"):
        assert f"backend {backend}: FINISHED, 840 events" in result.stderr
    assert f"the example's files: {folder}/" in result.stderr
    assert (folder / "mlflow.db").is_file()
    assert any((folder / "mlartifacts").rglob("*.yaml"))  # the configs, as MLflow artifacts
    assert any((folder / "tensorboard").rglob("events.out.tfevents.*"))
    assert any((folder / "wandb").glob("offline-run-*/run-*.wandb"))

    for name in TRACKER_FOLDERS:  # what a tracker run elsewhere may leave in a clone
        (clone / name).mkdir(exist_ok=True)
    check, fmt = ruff(clone, "check"), ruff(clone, "format", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_the_example_keeps_outputs_the_user_placed(tmp_path: Path) -> None:
    """Only outputs left to their default go to the example's folder; none means no folder."""
    out = tmp_path / "out.jsonl"
    command = [*TF_SHIP, "--example", "--no-follow", "--backend", "jsonl", "--jsonl-path", out]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
    assert "the example's files" not in result.stderr


def test_example_options_respect_flags_and_tracker_variables() -> None:
    """A flag or the tracker's own variable wins; the rest is placed in the folder."""
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    backends = ("mlflow", "tensorboard", "wandb")
    placed = example_backend_options(backends, {}, {}, now=now)
    assert placed["mlflow"]["tracking_uri"] == "sqlite:///tf-ship-example/mlflow.db"
    assert placed["mlflow"]["artifact_location"].endswith("/tf-ship-example/mlartifacts")
    assert placed["tensorboard"] == {
        "directory": "tf-ship-example/tensorboard/2026-01-02T03-04-05Z"
    }
    assert placed["wandb"] == {"directory": "tf-ship-example"}

    given = {"tensorboard": {"directory": "tb"}, "wandb": {"mode": "offline"}}
    environ = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "WANDB_DIR": "/scratch/w"}
    placed = example_backend_options(backends, given, environ, now=now)
    assert placed == {
        "mlflow": {},
        "tensorboard": {"directory": "tb"},
        "wandb": {"mode": "offline"},
    }
