"""`tf-ship inspect`: the numbers, the sparklines, JSON, the plot, bounded memory."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tf_ship.inspection import (
    Downsample,
    LogReport,
    format_table,
    inspect_log,
    plot_figure,
    printable,
    sparkline,
    write_plot,
)

TF_SHIP = [sys.executable, "-m", "tf_ship"]
TRACKER_SDKS = ("wandb", "mlflow", "tensorboardX", "tensorboard", "torch", "matplotlib")
P = b"TORCHFORT::WANDB: model: "
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CRAFTED = [
    P + b"mymodel, step: 100, train_loss: 0.5\n",  # 1
    P + b"mymodel, step: 200, train_loss: nan\n",  # 2
    b"INFO starting the solver\n",  # 3: not a metric line
    P + b"mymodel, step: 300, train_loss: inf\n",  # 4
    P + b"mymodel, step: 150, train_loss: 0.25\n",  # 5: backwards (a restart)
    P + b"mymodel, step: -5, train_loss: -nan\n",  # 6: backwards again, negative
    P + b"mymodel, step: 400, train_loss: 0.125\n",  # 7
    P + b"my model, step: 1, l2 error (rel.): 1e-05\n",  # 8
    P + b"my model, step: 2, l2 error [rel.]: 2e-05\n",  # 9: same MLflow key as line 8
    P + b"my model, step: 3, l2 error (rel.): -inf\n",  # 10
    P + b"caf\xe9, step: 7, r\xe9ward: 3\n",  # 11: Latin-1 bytes
    P + b"mymodel, step: 500, train_loss: 1,234.57\n",  # 12: a locale-formatted value
    b"\n",  # 13: empty
    P + b"PPO, step: 41, kl divergence%: 1.23457e+06\n",  # 14: sanitized, no collision
    P + b"mymodel, step: 600, train_loss: 0.0625\n",  # 15
    P + b"mymodel, step: 700, train_l",  # 16: incomplete
]


def clean_env() -> dict[str, str]:
    """The environment without TORCHFORT_LOGDIR."""
    return {k: v for k, v in os.environ.items() if k != "TORCHFORT_LOGDIR"}


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run tf-ship to completion."""
    return subprocess.run(
        [*TF_SHIP, *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout,
        check=False,
        encoding="utf-8",
    )


@pytest.fixture
def crafted(tmp_path: Path) -> Path:
    """A log directory with the crafted log, a config for `mymodel` and a broken config."""
    (tmp_path / "torchfort.log").write_bytes(b"".join(CRAFTED))
    (tmp_path / "config_mymodel.yaml").write_text(
        "general:\n  report_frequency: 1\nidentifier: mymodel", encoding="utf-8"
    )
    (tmp_path / "config_broken.yaml").write_text("general: [\n", encoding="utf-8")
    (tmp_path / "config_again.yaml").write_text("identifier: mymodel", encoding="utf-8")
    return tmp_path


def series_of(data: dict[str, Any], model: str, metric: str) -> dict[str, Any]:
    """The JSON record of one series."""
    found = [s for s in data["series"] if s["model"] == model and s["metric"] == metric]
    assert len(found) == 1, found
    return dict(found[0])


# -- the numbers --------------------------------------------------------------------------------


def test_crafted_log_json_value_by_value(crafted: Path) -> None:
    """Every number of the crafted log, as the JSON document gives it."""
    data = inspect_log(crafted, chunk_bytes=64).to_json(width=24)
    assert data["lines"] == 15
    assert data["metric_lines"] == 12
    assert data["skipped_lines"] == 4
    assert data["bytes"] == len(b"".join(CRAFTED))
    assert [(s["model"], s["metric"]) for s in data["series"]] == [
        ("mymodel", "train_loss"),
        ("my model", "l2 error (rel.)"),
        ("my model", "l2 error [rel.]"),
        ("café", "réward"),
        ("PPO", "kl divergence%"),
    ]
    assert series_of(data, "mymodel", "train_loss") == {
        "model": "mymodel",
        "metric": "train_loss",
        "count": 7,
        "first_step": 100,
        "last_step": 600,
        "min_step": -5,
        "max_step": 600,
        "steps_go_backwards": True,
        "backward_jumps": 2,
        "last_value": 0.0625,
        "min_value": 0.0625,
        "max_value": 0.5,
        "nan_count": 2,
        "inf_count": 1,
        "sparkline": "█  ▄ ▂▁",
        "mlflow_key": "mymodel/train_loss",
        "mlflow_collides_with": [],
    }
    rel = series_of(data, "my model", "l2 error (rel.)")
    assert (rel["count"], rel["first_step"], rel["last_step"]) == (2, 1, 3)
    assert (rel["last_value"], rel["min_value"], rel["max_value"]) == ("-inf", 1e-05, 1e-05)
    assert (rel["nan_count"], rel["inf_count"], rel["steps_go_backwards"]) == (0, 1, False)
    assert rel["mlflow_key"] == "my model/l2 error _rel._"
    assert rel["mlflow_collides_with"] == ["my model/l2 error [rel.]"]
    bracket = series_of(data, "my model", "l2 error [rel.]")
    assert bracket["mlflow_key"] == "my model/l2 error _rel.__2"
    assert bracket["mlflow_collides_with"] == ["my model/l2 error (rel.)"]
    assert (bracket["count"], bracket["last_value"]) == (1, 2e-05)
    latin = series_of(data, "café", "réward")
    assert (latin["count"], latin["first_step"], latin["last_value"]) == (1, 7, 3.0)
    assert latin["mlflow_key"] == "café/réward"
    ppo = series_of(data, "PPO", "kl divergence%")
    assert (ppo["last_value"], ppo["mlflow_key"]) == (1234570.0, "PPO/kl divergence_")
    assert ppo["mlflow_collides_with"] == []
    assert data["configs"] == {"mymodel": "config_mymodel.yaml"}
    assert data["models_without_config"] == ["my model", "café", "PPO"]
    problems = {p["file"]: p["error"] for p in data["config_problems"]}
    assert set(problems) == {"config_again.yaml", "config_broken.yaml"}
    assert "identifier 'mymodel' is also in config_mymodel.yaml" in problems["config_again.yaml"]
    assert [(s["reason"], s["count"], s["first_lines"]) for s in data["skipped"]] == [
        ("not a metric line", 1, [3]),
        ("value is not a number", 1, [12]),
        ("empty line", 1, [13]),
        ("incomplete last line", 1, [16]),
    ]
    assert data["skipped"][1]["first_excerpt"] == (
        "TORCHFORT::WANDB: model: mymodel, step: 500, train_loss: 1,234.57"
    )
    last = b"".join(CRAFTED[:-1])
    assert data["incomplete_last_line"] == {
        "line": 16,
        "offset": len(last),
        "excerpt": "TORCHFORT::WANDB: model: mymodel, step: 700, train_l",
    }


def test_chunk_size_does_not_change_the_result(crafted: Path) -> None:
    """Reading in 7-byte chunks or in one chunk gives the same report."""
    small = inspect_log(crafted, chunk_bytes=7).to_json()
    whole = inspect_log(crafted).to_json()
    assert small == whole


def test_crafted_log_table(crafted: Path) -> None:
    """The table: aligned columns, backwards steps, MLflow keys, configs, skipped lines."""
    text = format_table(inspect_log(crafted), width=24)
    lines = text.splitlines()
    assert lines[0].endswith(
        "torchfort.log: 15 lines, 12 metric lines, 4 skipped, 5 series in 4 models"
    )
    header = lines[2]
    assert re.fullmatch(r"model\s+metric\s+count\s+steps\s+last\s+NaN\s+inf\s+curve", header)
    row = lines[3]
    assert re.fullmatch(r"mymodel\s+train_loss\s+7\s+100\.\.600\s+0\.0625\s+2\s+1\s+█  ▄ ▂▁", row)
    assert header.index("count") + len("count") == row.index(" 7 ") + 2  # right-aligned
    assert lines[4] == "    steps go backwards (2 times; a restart?): min -5, max 600"
    assert re.fullmatch(r"my model\s+l2 error \(rel\.\)\s+2\s+1\.\.3\s+-inf\s+0\s+1\s+▄", lines[5])
    assert lines[6] == (
        "    MLflow key: my model/l2 error _rel._  COLLISION with 'my model/l2 error [rel.]'"
    )
    assert re.fullmatch(r"my model\s+l2 error \[rel\.\]\s+1\s+2\s+2e-05\s+0\s+0\s+▄", lines[7])
    assert lines[8] == (
        "    MLflow key: my model/l2 error _rel.__2  COLLISION with 'my model/l2 error (rel.)'"
    )
    assert re.fullmatch(r"café\s+réward\s+1\s+7\s+3\s+0\s+0\s+▄", lines[9])
    assert re.fullmatch(r"PPO\s+kl divergence%\s+1\s+41\s+1\.23457e\+06\s+0\s+0\s+▄", lines[10])
    assert lines[11] == "    MLflow key: PPO/kl divergence_"
    assert "    mymodel -> config_mymodel.yaml" in lines
    assert "models without config: my model, café, PPO" in lines
    assert any(line.startswith("    config_broken.yaml: ") for line in lines)
    skipped = lines[lines.index("skipped lines:") + 1 :]
    assert re.fullmatch(r"\s+not a metric line\s+1\s+line 3", skipped[0])
    assert skipped[1] == "        first: INFO starting the solver"
    assert re.fullmatch(r"\s+value is not a number\s+1\s+line 12", skipped[2])
    assert re.fullmatch(r"\s+empty line\s+1\s+line 13", skipped[4])
    assert re.fullmatch(r"\s+incomplete last line\s+1\s+line 16", skipped[5])
    assert all(len(line) <= 100 for line in lines[1:])  # the first names the log's path


def test_table_fits_100_columns_with_long_names(tmp_path: Path) -> None:
    """Long names are shortened with an ellipsis in the table; JSON keeps them whole."""
    model, metric = "m" * 60, "a very long metric name (relative, per cell)"
    (tmp_path / "torchfort.log").write_text(
        f"TORCHFORT::WANDB: model: {model}, step: 123456789, {metric}: 0.5\n", encoding="utf-8"
    )
    report = inspect_log(tmp_path)
    table = format_table(report).splitlines()
    assert all(len(line) <= 100 for line in table[1:4])
    assert table[3].startswith("m" * 19 + "…  a very long metric…")
    assert report.to_json()["series"][0]["model"] == model


def test_unprintable_characters_are_escaped() -> None:
    """Control characters in names are shown escaped, never sent to the terminal raw."""
    assert printable("a\x1b[31mb") == "a\\x1b[31mb"
    assert printable("caf\x85") == "caf\\x85"
    assert printable("café") == "café"


def test_too_long_line_is_reported_once_and_reading_goes_on(tmp_path: Path) -> None:
    """A line longer than the limit, read across chunks, is one skipped line; the rest counts."""
    log = tmp_path / "torchfort.log"
    long_line = P + b"m, step: 1, x: " + b"9" * 500 + b"\n"
    log.write_bytes(P + b"m, step: 0, x: 1\n" + long_line + P + b"m, step: 2, x: 3\n")
    report = inspect_log(log, chunk_bytes=32, max_line_bytes=100)
    assert report.lines == 3
    assert report.events == 2
    assert [(s.reason.value, s.count, s.first_lines) for s in report.skipped.values()] == [
        ("line longer than --max-line-bytes", 1, [2])
    ]
    series = report.series["m", "x"]
    assert (series.count, series.first_step, series.last_step, series.last_value) == (2, 0, 2, 3)


def test_empty_log(tmp_path: Path) -> None:
    """An empty log: no series, a table that says so, a JSON document all the same."""
    (tmp_path / "torchfort.log").write_bytes(b"")
    report = inspect_log(tmp_path)
    assert "no metric lines" in format_table(report)
    assert report.to_json()["series"] == []
    assert report.to_json()["incomplete_last_line"] is None


# -- sparklines and the downsample --------------------------------------------------------------


def test_sparkline_of_known_series() -> None:
    """Eight levels from lowest to highest; gaps for non-finite; a flat line in the middle."""
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([7, 0, 3.5]) == "█▁▅"
    assert sparkline([1, math.nan, math.inf, 2]) == "▁  █"
    assert sparkline([5, 5, 5]) == "▄▄▄"
    assert sparkline([-1e308, 1e308]) == "▁█"
    assert sparkline([math.nan]) == " "
    assert sparkline([]) == ""


def test_downsample_columns_of_known_series() -> None:
    """Eight points in four columns: the mean of each pair of points."""
    sample = Downsample()
    for step, value in enumerate([0, 1, 2, 3, 4, 5, 6, 7]):
        sample.add(step, value)
    assert sample.columns(4) == [0.5, 2.5, 4.5, 6.5]
    assert sparkline(sample.columns(4)) == "▁▃▆█"
    assert sample.columns(20) == [0, 1, 2, 3, 4, 5, 6, 7]


def test_downsample_stays_bounded_and_keeps_spikes() -> None:
    """A million points in at most `capacity` buckets; a single spike survives as a maximum."""
    sample = Downsample(capacity=64)
    values = [0.0] * 1_000_000
    values[654_321] = 1e6
    sample.extend(range(1_000_000), values)
    assert sample.points == 1_000_000
    assert len(sample.buckets()) <= 64
    steps, drawn = sample.curve()
    assert max(drawn) == 1e6
    assert steps[drawn.index(1e6)] == 654_321


@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(min_value=-10, max_value=10),
        ),
        max_size=300,
    ),
    st.sampled_from([2, 4, 8]),
    st.integers(min_value=1, max_value=50),
)
def test_downsample_buckets_match_naive_slices(
    values: list[float], capacity: int, chunk: int
) -> None:
    """Each bucket holds exactly the min, max and finite count of its slice, however fed."""
    sample = Downsample(capacity)
    for start in range(0, len(values), chunk):
        part = values[start : start + chunk]
        sample.extend(list(range(start, start + len(part))), part)
    buckets = sample.buckets()
    position = 0
    for count, mean, low, low_step, _, high, high_step, _ in buckets:
        part = values[position : position + sample.width]
        finite = [v for v in part if math.isfinite(v)]
        assert count == len(finite)
        if finite:
            assert low == min(finite)
            assert high == max(finite)
            assert low_step == position + part.index(low)
            assert high_step == position + part.index(high)
            assert low <= mean <= high
        position += len(part)
    assert position == len(values) == sample.points


# -- the property: counts and last values equal a naive computation -----------------------------

MODELS = [b"mymodel", b"my model", b"critic_0", b"caf\xe9", b"a, b"]
METRICS = [b"train_loss", b"l2 error (rel.)", b"r\xe9ward", b"x: y"]
GARBAGE = [b"INFO solver step 3", b"", b"TORCHFORT::WANDB: model: m, step: 1, v: 1,5"]
VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: repr(v).encode()),
    st.sampled_from([b"nan", b"-nan", b"inf", b"-inf", b"0", b"-0", b"1e-05", b"1.23457e+06"]),
)
LINES = st.one_of(
    st.tuples(
        st.sampled_from(MODELS),
        st.sampled_from(METRICS),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        VALUES,
    ),
    st.sampled_from(GARBAGE),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(LINES, max_size=60),
    incomplete=st.booleans(),
    chunk=st.integers(min_value=1, max_value=300),
)
def test_random_logs_match_a_naive_computation(
    tmp_path: Path,
    lines: list[bytes | tuple[bytes, bytes, int, bytes]],
    incomplete: bool,  # noqa: FBT001
    chunk: int,
) -> None:
    """Counts, steps, last values, NaN and inf counts, skipped lines: as computed naively."""
    expected: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    data = bytearray()
    garbage = 0
    for line in lines:
        if isinstance(line, bytes):
            data += line + b"\n"
            garbage += 1
            continue
        model, metric, step, value = line
        data += P + model + b", step: %d, " % step + metric + b": " + value + b"\n"
        key = (model.decode("latin-1"), metric.decode("latin-1"))
        steps, values = expected.setdefault(key, ([], []))
        steps.append(step)
        values.append(float(value))
    if incomplete:
        data += P + b"mymodel, st"
    log = tmp_path / "torchfort.log"
    log.write_bytes(bytes(data))
    report = inspect_log(log, chunk_bytes=chunk)
    assert report.lines == len(lines)
    assert report.events == len(lines) - garbage
    assert report.skipped_count == garbage + incomplete
    assert (report.incomplete is not None) == incomplete
    assert list(report.series) == list(expected)
    for key, (steps, values) in expected.items():
        series = report.series[key]
        assert series.count == len(steps)
        assert (series.first_step, series.last_step) == (steps[0], steps[-1])
        assert (series.min_step, series.max_step) == (min(steps), max(steps))
        assert series.backwards == sum(b < a for a, b in pairwise(steps))
        assert repr(series.last_value) == repr(values[-1])
        assert series.nan_count == sum(math.isnan(v) for v in values)
        assert series.inf_count == sum(math.isinf(v) for v in values)
        finite = [v for v in values if math.isfinite(v)]
        assert series.low == (min(finite) if finite else math.inf)
        assert series.high == (max(finite) if finite else -math.inf)
    json.dumps(report.to_json(), allow_nan=False)  # strictly valid JSON


# -- the command --------------------------------------------------------------------------------


def test_cli_table_on_the_example() -> None:
    """`tf-ship inspect --example`: every series of the bundled log, its configs, no skips."""
    result = run("inspect", "--example")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "840 lines, 840 metric lines, 0 skipped, 8 series in 4 models" in out
    row = r"^mymodel\s+train_loss\s+200\s+100\.\.20000\s+0\.0130256\s+0\s+0\s"
    assert re.search(row, out, re.MULTILINE)
    assert "    MLflow key: mymodel/l2 error _rel._\n" in out
    assert "    td3_system -> config_td3_system.yaml\n" in out
    assert "skipped lines: none\n" in out
    assert all(len(line) <= 100 for line in out.splitlines()[1:])


def test_cli_json_parses(crafted: Path) -> None:
    """--json prints one strict JSON document with the same numbers as the library."""
    result = run("inspect", "--json", "--width", "24", str(crafted / "torchfort.log"))
    assert result.returncode == 0, result.stderr

    def no_constants(name: str) -> object:
        raise AssertionError(name)

    data = json.loads(result.stdout, parse_constant=no_constants)
    assert data == json.loads(json.dumps(inspect_log(crafted).to_json(width=24)))
    assert series_of(data, "café", "réward")["count"] == 1


def test_cli_plot_writes_a_png(crafted: Path, tmp_path: Path) -> None:
    """--plot FILE.png writes a real PNG of a reasonable size, and says so on stderr."""
    out = tmp_path / "curves.png"
    result = run("inspect", str(crafted), "--plot", str(out))
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
    assert "plot written to" in result.stderr


def test_plot_has_a_panel_per_metric_with_integer_step_ticks(tmp_path: Path) -> None:
    """One panel per metric, integer step ticks, a note where nothing finite can be drawn.

    A learning rate near 1e-4 has a y-axis of its own beside a loss near 10; steps 1 to 3 are
    ticked 1, 2, 3 (no 1.5).
    """
    lines = [P + b"m, step: %d, loss: %g\n" % (step, 10 / step) for step in (1, 2, 3)]
    lines += [P + b"m, step: %d, lr: %g\n" % (step, 1e-4 * step) for step in (1, 2, 3)]
    lines += [P + b"other, step: 7, gone: nan\n"]
    (tmp_path / "torchfort.log").write_bytes(b"".join(lines))
    figure = plot_figure(inspect_log(tmp_path))
    panels = [axis for axis in figure.axes if axis.get_visible()]
    assert [axis.get_title(loc="left") for axis in panels] == ["m/loss", "m/lr", "other/gone"]
    loss, lr, gone = panels
    assert loss.get_ylim()[1] > 9
    assert 2e-4 < lr.get_ylim()[1] < 1e-3  # not squashed under the loss
    for axis in (loss, lr):
        low, high = axis.get_xlim()
        ticks = [tick for tick in axis.get_xticks() if low <= tick <= high]
        assert ticks == [1, 2, 3], ticks
    assert [text.get_text() for text in gone.texts] == ["no finite value (1 NaN, 0 inf)"]


def test_plot_of_an_empty_log(tmp_path: Path) -> None:
    """Even a log without metric lines gives a picture (that says so)."""
    (tmp_path / "torchfort.log").write_bytes(b"INFO nothing\n")
    out = tmp_path / "empty.png"
    write_plot(inspect_log(tmp_path), out)
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_without_matplotlib_says_what_to_install(crafted: Path, tmp_path: Path) -> None:
    """Without matplotlib, --plot fails with exit code 1 and names the extra to install."""
    code = (
        "import sys; sys.modules['matplotlib'] = None; from tf_ship.cli import main; "
        f"main(['inspect', {str(crafted)!r}, '--plot', {str(tmp_path / 'x.png')!r}])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert 'pip install "tf-ship[plot]"' in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_inspect_imports_no_tracker_sdk(crafted: Path) -> None:
    """`tf-ship inspect` (without --plot) loads no tracker SDK and not matplotlib."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *TF_SHIP[1:], "inspect", str(crafted)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    imported = {
        entry.split("|")[-1].strip().split(".")[0]
        for entry in result.stderr.splitlines()
        if entry.startswith("import time:")
    }
    assert "tf_ship" in imported
    assert not imported & set(TRACKER_SDKS)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "give LOG_OR_DIR or --example"),
        (["--example", "somewhere"], 2, "give LOG_OR_DIR or --example"),
        (["--width", "0", "--example"], 2, "--width"),
    ],
)
def test_usage_errors(args: list[str], code: int, message: str) -> None:
    """Missing or conflicting arguments are usage errors (exit 2)."""
    result = run("inspect", *args)
    assert result.returncode == code
    assert message in result.stderr


def test_missing_log_exits_1(tmp_path: Path) -> None:
    """A directory without torchfort.log, or a missing file: exit 1 and a one-line reason."""
    result = run("inspect", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == f"tf-ship: error: no torchfort.log in {tmp_path}\n"
    result = run("inspect", str(tmp_path / "nope.log"))
    assert result.returncode == 1
    assert "no such log file" in result.stderr


# -- bounded memory -----------------------------------------------------------------------------


def write_big_log(path: Path, lines: int) -> None:
    """A log of `lines` metric lines over 8 series, with a restart half-way, in blocks."""
    block = 100_000
    models = ("mymodel", "critic_0", "actor", "PPO")
    with path.open("wb") as stream:
        for start in range(0, lines, block):
            stream.write(
                "".join(
                    f"TORCHFORT::WANDB: model: {models[i % 4]}, "
                    f"step: {(i % (lines // 2)) // 8}, "
                    f"{'train_loss' if i % 8 < 4 else 'train_lr'}: {1.0 / (i + 1):g}\n"
                    for i in range(start, min(start + block, lines))
                ).encode()
            )


@pytest.mark.slow
def test_one_million_lines_in_bounded_memory(tmp_path: Path) -> None:
    """1,000,000 lines: every line counted, peak RSS of the process under 100 MB."""
    count = 1_000_000
    log = tmp_path / "torchfort.log"
    write_big_log(log, count)
    started = time.monotonic()
    child = subprocess.Popen(
        [*TF_SHIP, "inspect", "--json", str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    process = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out, err = child.communicate()
    elapsed = time.monotonic() - started
    assert child.returncode == 0, err.decode()
    data = json.loads(out)
    assert data["lines"] == data["metric_lines"] == count
    assert len(data["series"]) == 8
    loss = series_of(data, "mymodel", "train_loss")
    assert loss["count"] == count // 8
    assert loss["backward_jumps"] == 1
    assert (loss["min_step"], loss["max_step"]) == (0, (count // 2 - 1) // 8)
    assert len(loss["sparkline"]) == 24
    sys.stdout.write(f"\ninspect 1M lines: {elapsed:.1f} s, peak RSS {peak / 2**20:.0f} MiB\n")
    assert peak < 100 * 2**20


def test_report_is_a_plain_value(crafted: Path) -> None:
    """The report can be built and rendered without the command line."""
    report = inspect_log(crafted)
    assert isinstance(report, LogReport)
    assert report.models_without_config() == ["my model", "café", "PPO"]
