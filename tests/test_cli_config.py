"""Options from tf-ship.toml and TF_SHIP_* variables, and their precedence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLE_EVENTS = 840


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command in `cwd`, with extra environment variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TF_SHIP_")}
    return subprocess.run(
        [sys.executable, "-m", "tf_ship", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def events_in(path: Path) -> int:
    """How many metric events a jsonl file holds."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return sum(1 for line in lines if "metric" in json.loads(line))


def test_config_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    """./tf-ship.toml supplies backends and their options."""
    (tmp_path / "tf-ship.toml").write_text(
        'backend = ["jsonl"]\nfollow = false\n[jsonl]\npath = "from-file.jsonl"\n',
        encoding="utf-8",
    )
    result = run(["--example"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert events_in(tmp_path / "from-file.jsonl") == EXAMPLE_EVENTS


def test_environment_beats_the_file_and_the_command_line_beats_both(tmp_path: Path) -> None:
    """Precedence: command line, then TF_SHIP_*, then the config file."""
    config = tmp_path / "other.toml"
    config.write_text('backend = ["jsonl"]\n[jsonl]\npath = "file.jsonl"\n', encoding="utf-8")
    base = ["--config", str(config), "--example", "--no-follow"]
    result = run(base, tmp_path, TF_SHIP_JSONL_PATH="env.jsonl")
    assert result.returncode == 0, result.stderr
    assert events_in(tmp_path / "env.jsonl") == EXAMPLE_EVENTS
    assert not (tmp_path / "file.jsonl").exists()
    result = run([*base, "--jsonl-path", "cli.jsonl"], tmp_path, TF_SHIP_JSONL_PATH="env.jsonl")
    assert result.returncode == 0, result.stderr
    assert events_in(tmp_path / "cli.jsonl") == EXAMPLE_EVENTS
    assert events_in(tmp_path / "env.jsonl") == EXAMPLE_EVENTS  # not written a second time


def test_backends_from_the_environment(tmp_path: Path) -> None:
    """TF_SHIP_BACKEND takes several names separated by spaces."""
    result = run(
        ["--example", "--no-follow"],
        tmp_path,
        TF_SHIP_BACKEND="null jsonl",
        TF_SHIP_JSONL_PATH="x.jsonl",
    )
    assert result.returncode == 0, result.stderr
    assert "backend null: FINISHED" in result.stderr
    assert "backend jsonl: FINISHED" in result.stderr


def test_unknown_setting_is_a_usage_error(tmp_path: Path) -> None:
    """A typo in the config file exits 2 and names the key."""
    (tmp_path / "tf-ship.toml").write_text("bakend = ['jsonl']\n", encoding="utf-8")
    result = run(["--example", "--no-follow", "-b", "null"], tmp_path)
    assert result.returncode == 2
    assert "bakend" in result.stderr


def test_plugin_sections_become_backend_options(tmp_path: Path) -> None:
    """A table for a backend without built-in flags is passed as --backend-opt NAME.KEY=VALUE."""
    name = "tf_ship.backends.jsonl:JsonlBackend"
    (tmp_path / "tf-ship.toml").write_text(f'["{name}"]\npath = "plugin.jsonl"\n', encoding="utf-8")
    result = run(["--example", "--no-follow", "-b", name], tmp_path)
    assert result.returncode == 0, result.stderr
    assert events_in(tmp_path / "plugin.jsonl") == EXAMPLE_EVENTS


def test_one_file_serves_every_command(tmp_path: Path) -> None:
    """A setting that only `watch` takes does not break `ship` reading the same file."""
    (tmp_path / "tf-ship.toml").write_text(
        'backend = ["jsonl"]\nmax_logs = 4\n[jsonl]\npath = "shared.jsonl"\n', encoding="utf-8"
    )
    result = run(["--example", "--no-follow"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert events_in(tmp_path / "shared.jsonl") == EXAMPLE_EVENTS
