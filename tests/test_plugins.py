"""Third-party backends: found by entry point or import path, given their options."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tf_ship
from tf_ship.backends.registry import BUILTIN_BACKENDS, UnknownBackendError, create_backend
from tf_ship.cli import EXAMPLE_DIR
from tf_ship.shipper.parse import LineParser

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SOURCE = ROOT / "examples" / "tf-ship-csv"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the example CSV plugin package into a private site directory."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(PLUGIN_SOURCE),
        ],
        check=True,
        capture_output=True,
    )
    return site


def _example_events() -> list[tuple[str, str, int, float]]:
    data = (EXAMPLE_DIR / "torchfort.log").read_bytes()
    return [(e.model, e.metric, e.step, e.value) for e in LineParser().parse(data).events]


def _run_cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "tf_ship", "--example", "--no-follow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _rows(path: Path) -> list[tuple[str, str, int, float]]:
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream)
        assert next(reader) == ["model", "metric", "step", "value"]
        return [(m, k, int(s), float(v)) for m, k, s, v in reader]


def test_installed_plugin_is_used_by_name(plugin_site: Path, tmp_path: Path) -> None:
    """`--backend csv` finds the installed entry point; --backend-opt reaches the constructor."""
    out = tmp_path / "metrics.csv"
    result = _run_cli(plugin_site, "--backend", "csv", "--backend-opt", f"csv.path={out}")
    assert result.returncode == 0, result.stderr
    assert _rows(out) == _example_events()
    assert "backend csv: FINISHED" in result.stderr
    configs = (tmp_path / "metrics.csv.configs.json").read_text(encoding="utf-8")
    assert '"mymodel"' in configs


def test_plugin_by_import_path(plugin_site: Path, tmp_path: Path) -> None:
    """`--backend package.module:Class` loads a backend without any entry point."""
    out = tmp_path / "by-path.csv"
    name = "tf_ship_csv:CsvBackend"
    result = _run_cli(plugin_site, "--backend", name, "--backend-opt", f"{name}.path={out}")
    assert result.returncode == 0, result.stderr
    assert len(_rows(out)) == len(_example_events())


def test_unknown_plugin_option_is_a_usage_error(plugin_site: Path) -> None:
    """An option the backend does not take exits 2 and names the backend."""
    result = _run_cli(plugin_site, "--backend", "csv", "--backend-opt", "csv.colour=red")
    assert result.returncode == 2
    assert "csv" in result.stderr
    assert "colour" in result.stderr


@pytest.mark.parametrize("name", sorted(BUILTIN_BACKENDS))
def test_builtin_backends_satisfy_the_protocol(name: str) -> None:
    """Every built-in name builds an object with the whole Backend protocol."""
    backend = create_backend(name, {})
    assert isinstance(backend, tf_ship.Backend)


def test_unknown_backend_names_the_known_ones() -> None:
    """A typo gets an error that lists what exists."""
    with pytest.raises(UnknownBackendError, match="jsonl"):
        create_backend("jsnol")


def test_import_path_to_something_else_is_refused() -> None:
    """An import path that builds no backend is refused with a clear reason."""
    with pytest.raises(UnknownBackendError, match="did not build a backend"):
        create_backend("collections:OrderedDict")


def test_csv_rows_keep_non_finite_values(plugin_site: Path, tmp_path: Path) -> None:
    """The example backend round-trips nan and inf (as documented in writing-a-backend.md)."""
    log = tmp_path / "torchfort.log"
    log.write_bytes(
        b"TORCHFORT::WANDB: model: m, step: 1, loss: nan\n"
        b"TORCHFORT::WANDB: model: m, step: 2, loss: -inf\n"
    )
    out = tmp_path / "m.csv"
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tf_ship",
            "--log-file",
            str(log),
            "--no-follow",
            "-b",
            "csv",
            "--backend-opt",
            f"csv.path={out}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = _rows(out)
    assert math.isnan(rows[0][3])
    assert rows[1][3] == -math.inf
