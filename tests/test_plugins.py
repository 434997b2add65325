"""Third-party backends: found by entry point or import path, given their options."""

from __future__ import annotations

import csv
import importlib.metadata
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import clean_env
from test_watch_command import write_log

import tf_ship
from tf_ship.backends.plugin_specs import (
    SPEC_GROUP,
    entry_points_of,
    load_plugin_specs,
)
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


def _run_cli(
    site: Path | str, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return _tf_ship(site, "--example", "--no-follow", *args, cwd=cwd, **env)


def _tf_ship(
    site: Path | str, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run tf-ship with the plugins installed in `site` (a PYTHONPATH) and no TF_SHIP_* set."""
    return subprocess.run(
        [sys.executable, "-m", "tf_ship", *args],
        env={**clean_env(PYTHONPATH=str(site)), **env},
        cwd=cwd,
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


# -- a plugin's spec: flags, variables, TOML keys, help and watch rules -------------------------


def test_plugin_flag_variable_and_toml_key_reach_the_constructor(
    plugin_site: Path, tmp_path: Path
) -> None:
    """--csv-path, TF_SHIP_CSV_PATH and `[csv] path` in ./tf-ship.toml each set the CSV's path."""
    by_flag, by_variable, by_toml = (tmp_path / f"{how}.csv" for how in ("flag", "env", "toml"))
    (tmp_path / "tf-ship.toml").write_text(f'[csv]\npath = "{by_toml}"\n', encoding="utf-8")
    runs = [
        _run_cli(plugin_site, "-b", "csv", "--csv-path", str(by_flag), cwd=tmp_path),
        _run_cli(plugin_site, "-b", "csv", cwd=tmp_path, TF_SHIP_CSV_PATH=str(by_variable)),
        _run_cli(plugin_site, "-b", "csv", cwd=tmp_path),
    ]
    for result in runs:
        assert result.returncode == 0, result.stderr
        assert "warning" not in result.stderr
    for path in (by_flag, by_variable, by_toml):
        assert _rows(path) == _example_events(), path
    assert not (tmp_path / "metrics.csv").exists()  # the default path was never used


def test_help_lists_the_plugin_flag_and_backend(plugin_site: Path) -> None:
    """`tf-ship --help` shows --csv-path with its variable's help and names csv under --backend."""
    result = _tf_ship(plugin_site, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    text = " ".join(result.stdout.split())
    assert "--csv-path PATH File the csv backend appends rows to" in text
    assert "Where to ship: jsonl, mlflow, null, swanlab, tensorboard, trackio, wandb, csv," in text
    assert "--csv-path DIR to DIR/<folder>.csv" in " ".join(
        _tf_ship(plugin_site, "watch", "-h").stdout.split()
    )


def test_a_flag_of_a_plugin_not_chosen_is_a_usage_error(plugin_site: Path, tmp_path: Path) -> None:
    """The plugin's flag without its backend says which --backend to add, as a built-in's does."""
    result = _run_cli(plugin_site, "-b", "null", "--csv-path", str(tmp_path / "x.csv"))
    assert result.returncode == 2
    assert "--csv-path belongs to the csv backend: add --backend csv" in result.stderr


def test_watch_writes_one_csv_per_log(plugin_site: Path, tmp_path: Path) -> None:
    """`watch ROOT -b csv --csv-path OUT` writes OUT/<folder>.csv for each log, value by value."""
    root, out = tmp_path / "sweep", tmp_path / "out"
    expected = {
        "a": write_log(root / "a", 1, range(30)),
        "b-c": write_log(root / "b" / "c", 2, range(20)),
    }
    out.mkdir()
    result = _tf_ship(
        plugin_site, "watch", str(root), "--no-follow", "-b", "csv", "--csv-path", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.glob("*.csv")) == ["a.csv", "b-c.csv"]
    for name, events in expected.items():
        assert _rows(out / f"{name}.csv") == events, name

    shared = _tf_ship(plugin_site, "watch", str(root), "--no-follow", "-b", "csv")
    assert shared.returncode == 2
    assert "--backend csv needs --csv-path DIR with watch (one file per log: DIR/NAME.csv)" in (
        shared.stderr
    )


def test_the_cli_reference_leaves_installed_plugins_out(plugin_site: Path) -> None:
    """docs/cli.md is the same with a plugin installed: it documents the built-ins only."""
    result = subprocess.run(
        [sys.executable, "-m", "tf_ship.cli_reference"],
        env=clean_env(PYTHONPATH=str(plugin_site)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--csv-path" not in result.stdout
    assert result.stdout == (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")


def test_spec_entry_points_are_those_importlib_metadata_finds(plugin_site: Path) -> None:
    """The fast reader of entry points agrees with importlib.metadata on a pip-installed plugin."""
    found = entry_points_of(SPEC_GROUP, [str(plugin_site)])
    assert [(e.name, e.value, e.distribution) for e in found] == [
        ("csv", "tf_ship_csv.spec:SPEC", "tf_ship_csv")
    ]
    (listed,) = importlib.metadata.distributions(path=[str(plugin_site)])
    assert [(e.name, e.value) for e in listed.entry_points if e.group == SPEC_GROUP] == [
        ("csv", "tf_ship_csv.spec:SPEC")
    ]


# -- broken plugin specs: skipped with one warning, tf-ship goes on ----------------------------


BROKEN = {
    "boom": (
        'raise ImportError("no module named csvkit")',
        "cannot be imported (ImportError: no module named csvkit): fix or reinstall tf_ship_broken",
    ),
    "notaspec": (
        "SPEC = {'name': 'notaspec'}",
        "is a dict, not a tf_ship.backends.spec.BackendSpec: point the tf_ship.specs entry point",
    ),
    "misnamed": (
        'SPEC = BackendSpec("other", "x:Y")',
        "its BackendSpec is named 'other': the tf_ship.specs entry point and BackendSpec.name",
    ),
    "jsonl": (
        'SPEC = BackendSpec("jsonl", "x:Y")',
        "'jsonl' is a built-in backend: give the plugin another name",
    ),
    "run": (
        'SPEC = BackendSpec("run", "x:Y", (BackendOption("--run-name", "name", "h"),))',
        "'run' could clash with tf-ship's own options: give the plugin another name",
    ),
    "xls": (
        (
            'SPEC = BackendSpec("xls", "x:Y", '
            '(BackendOption("--xls-out", "out", "h", aliases=("--jsonl-path",)),))'
        ),
        "its flag --jsonl-path must start with --xls- (for example --xls-path)",
    ),
    "csv2": (
        (
            'SPEC = BackendSpec("csv2", "tf_ship_csv:CsvBackend", '
            '(BackendOption("--csv2-path", "path", "h", aliases=("--csv2-x-path",)),))'
        ),
        None,
    ),
    "csv2-x": (
        'SPEC = BackendSpec("csv2-x", "x:Y", (BackendOption("--csv2-x-path", "path", "h"),))',
        "--csv2-x-path is already taken by the csv2 backend: rename it",
    ),
    "short": (
        (
            'SPEC = BackendSpec("short", "x:Y", '
            '(BackendOption("--short-x", "x", "h", aliases=("-v",)),))'
        ),
        "its flag -v must start with --short-",
    ),
    "Csv2": (
        'SPEC = BackendSpec("Csv2", "x:Y", (BackendOption("--Csv2-out", "path", "h"),))',
        "TF_SHIP_CSV2_PATH (the variable of --Csv2-out) is already taken by the csv2 backend",
    ),
}
"""Plugin name -> its spec module's text, and the end of the warning it gets (None: none)."""


def _install_by_hand(site: Path, distribution: str, groups: dict[str, dict[str, str]]) -> None:
    """A distribution's metadata as pip leaves it: a dist-info folder with its entry points."""
    info = site / f"{distribution}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    text = "".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
        for group, entries in groups.items()
    )
    (info / "entry_points.txt").write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distribution whose plugin specs are broken in every way BROKEN lists, one fine."""
    site = tmp_path_factory.mktemp("broken-site")
    package = site / "tf_ship_broken"
    package.mkdir()
    (package / "__init__.py").write_text("")
    header = "from tf_ship.backends.spec import BackendOption, BackendSpec\n"
    specs = {}
    for number, (name, (text, _)) in enumerate(BROKEN.items()):
        (package / f"spec{number}.py").write_text(header + text + "\n", encoding="utf-8")
        specs[name] = f"tf_ship_broken.spec{number}:SPEC"
    _install_by_hand(site, "tf_ship_broken", {SPEC_GROUP: specs})
    _install_by_hand(site, "tf_ship_twin", {SPEC_GROUP: {"csv2": specs["csv2"]}})
    _install_by_hand(
        site, "tf_ship_classonly", {"tf_ship.backends": {"csvclass": "tf_ship_csv:CsvBackend"}}
    )
    return site


def test_each_broken_plugin_spec_is_skipped_with_a_warning_that_says_what_to_fix(
    broken_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every way a spec can be broken gives one warning naming the plugin; the fine one loads."""
    monkeypatch.syspath_prepend(str(broken_site))
    warnings: list[str] = []
    specs = load_plugin_specs(entry_points_of(SPEC_GROUP, [str(broken_site)]), warnings.append)
    assert [spec.name for spec in specs] == ["csv2"]
    problems = {name: why for name, (_, why) in BROKEN.items() if why is not None}
    twin = "backend plugin 'csv2' (from tf_ship_twin) is skipped: tf_ship_broken is named 'csv2'"
    assert warnings[-1] == f"{twin} too: uninstall one of them"
    assert len(warnings) == len(problems) + 1
    for name, why in problems.items():
        (line,) = (w for w in warnings if w.startswith(f"backend plugin {name!r} "))
        assert line.startswith(f"backend plugin {name!r} (from tf_ship_broken) is skipped: ")
        assert why in line, line


def test_broken_plugin_specs_do_not_stop_help_or_shipping(
    plugin_site: Path, broken_site: Path, tmp_path: Path
) -> None:
    """With broken specs installed, --help and shipping work and warn once per broken plugin."""
    path = f"{plugin_site}{os.pathsep}{broken_site}"
    problems = [*(name for name, (_, why) in BROKEN.items() if why is not None), "csv2"]
    helped = _tf_ship(path, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--csv-path" in helped.stdout
    assert "--csv2-path" in helped.stdout
    lines = helped.stderr.splitlines()
    assert len(lines) == len(problems), helped.stderr
    for name in problems:
        assert (
            sum(line.startswith(f"tf-ship: warning: backend plugin {name!r} ") for line in lines)
            == 1
        )

    out = tmp_path / "m.csv"
    shipped = _run_cli(path, "-b", "csv", "--csv-path", str(out))
    assert shipped.returncode == 0, shipped.stderr
    assert _rows(out) == _example_events()
    assert shipped.stderr.count("tf-ship: warning: ") == len(problems)

    by_spec = tmp_path / "by-spec.csv"  # csv2 has a spec and no tf_ship.backends entry point
    built = _run_cli(path, "-b", "csv2", "--csv2-x-path", str(by_spec))
    assert built.returncode == 0, built.stderr
    assert _rows(by_spec) == _example_events()


def test_a_plugin_with_only_a_backend_entry_point_still_works(
    plugin_site: Path, broken_site: Path, tmp_path: Path
) -> None:
    """A `tf_ship.backends` entry point without a spec is used by name with --backend-opt."""
    out = tmp_path / "classonly.csv"
    path = f"{plugin_site}{os.pathsep}{broken_site}"
    result = _run_cli(path, "-b", "csvclass", "--backend-opt", f"csvclass.path={out}")
    assert result.returncode == 0, result.stderr
    assert _rows(out) == _example_events()
