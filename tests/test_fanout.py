"""One log, three real trackers at once: each holds exactly the events of the log.

The log holds every oddity of the contract. The expected events are written down here, from
the same tuples the log is built from, not from tf-ship's parser.
"""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing import event_accumulator
from wandb_helpers import config_of, exit_code_of, offline_wandb_env, transaction_logs

from tf_ship.backends.mlflow.keys import KEY_MAP_TAG
from tf_ship.backends.tensorboard import folder_name
from tf_ship.backends.wandb.transaction_log import history_rows

Event = tuple[str, str, int, float]
PREFIX = b"TORCHFORT::WANDB: model: "

# (model bytes, metric bytes, step, value text as C++ prints it)
LINES: list[tuple[bytes, bytes, int, str]] = [
    (b"mymodel", b"train_loss", 100, "0.0243117"),
    (b"mymodel", b"train_lr", 100, "0.000999998"),
    (b"mymodel", b"l2 error (rel.)", 100, "1.23457e+06"),
    (b"mymodel", b"train_loss", 200, "nan"),
    (b"mymodel", b"train_lr", 200, "-nan"),
    (b"mymodel", b"train_loss", 300, "inf"),
    (b"mymodel", b"train_lr", 300, "-inf"),
    (b"mymodel", b"grad_norm", 300, "-0"),
    (b"mymodel", b"big", 400, "1e+300"),
    (b"mymodel", b"tiny", 400, "4.94066e-324"),
    (b"mymodel", b"train_loss", 150, "0.5"),  # the step goes backwards
    (b"mymodel", b"train_loss", 150, "0.5"),  # the same line twice: two events
    (b"critic_0", b"train_loss", -1, "2.71828"),
    (b"critic_0", b"train_loss", 0, "2.5"),
    (b"actor", b"ratio: a/b", 7, "0.25"),
    (b"td3 system", b"episode reward", 37, "12"),
    (b"caf\xe9", b"temp\xff", 5, "1.5"),
    (b"PPO", b"kl_divergence", 41, "0.00731"),
]
GARBAGE = [
    b"\n",
    b"INFO: not a metric line\n",
    b"TORCHFORT::WANDB: model: mymodel, step: 500, train_loss: 1,234.57\n",
    b"TORCHFORT::WANDB: model: mymodel, step: 500, train_lo\n",
    b"\x00\x00\x00\x00\n",
    b"\xff\xfe binary \x01\x02\n",
]


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def expected_events() -> list[Event]:
    """The events the log holds, decoded as the contract says."""
    return [(_text(m), _text(k), step, float(v)) for m, k, step, v in LINES]


def write_log(logdir: Path) -> Path:
    """Write the log, garbage between valid lines, and configs for two models."""
    logdir.mkdir(parents=True, exist_ok=True)
    chunks: list[bytes] = []
    for index, (model, metric, step, value) in enumerate(LINES):
        chunks.append(PREFIX + model + b", step: " + str(step).encode() + b", " + metric)
        chunks.append(b": " + value.encode() + b"\n")
        if index < len(GARBAGE):
            chunks.append(GARBAGE[index])
    path = logdir / "torchfort.log"
    path.write_bytes(b"".join(chunks))
    (logdir / "config_mymodel.yaml").write_text(
        "general:\n  report_frequency: 100\noptimizer:\n  type: adam\n  parameters:\n"
        "    learning_rate: 1e-3\nidentifier: mymodel",
        encoding="utf-8",
    )
    (logdir / "config_td3system.yaml").write_text(
        "algorithm:\n  type: td3\nidentifier: td3 system", encoding="utf-8"
    )
    return path


def _same_values(expected: list[float], got: list[float], *, float32: bool = False) -> bool:
    """Compare sorted values; NaN equals NaN, and TensorBoard's float32 rounding is allowed."""
    if len(expected) != len(got):
        return False
    key = lambda v: (math.isnan(v), v if not math.isnan(v) else 0.0)  # noqa: E731
    for exact, have in zip(sorted(expected, key=key), sorted(got, key=key), strict=True):
        want = exact
        if float32:
            with np.errstate(over="ignore"):  # 1e+300 becomes inf in float32, as documented
                want = float(np.float32(exact))
        if math.isnan(want) or math.isnan(have):
            if not (math.isnan(want) and math.isnan(have)):
                return False
        elif want != have and not math.isclose(want, have, rel_tol=1e-6, abs_tol=0.0):
            return False
    return True


def _by_series(events: Iterable[Event]) -> dict[tuple[str, str, int], list[float]]:
    series: dict[tuple[str, str, int], list[float]] = collections.defaultdict(list)
    for model, metric, step, value in events:
        series[(model, metric, step)].append(value)
    return dict(series)


def assert_same_events(expected: list[Event], got: list[Event], *, float32: bool = False) -> None:
    """Every expected event exactly once, nothing else; values compared NaN-aware."""
    want, have = _by_series(expected), _by_series(got)
    assert sorted(want) == sorted(have)
    for series, values in want.items():
        assert _same_values(values, have[series], float32=float32), (series, values, have[series])


def run_tf_ship(
    args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """The real command, in a subprocess."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, "-m", "tf_ship", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def mlflow_events(uri: str, experiment: str) -> tuple[list[Event], dict[str, str], str]:
    """Everything one run of `experiment` holds, mapped back to model and metric names."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    renamed = json.loads(run.data.tags.get(KEY_MAP_TAG, "{}"))
    names = {(renamed.get(f"{m}/{k}", f"{m}/{k}")): (m, k) for m, k, _, _ in expected_events()}
    events: list[Event] = []
    for key in run.data.metrics:
        model, metric = names[key]
        events.extend(
            (model, metric, point.step, point.value)
            for point in client.get_metric_history(run.info.run_id, key)
        )
    return events, dict(run.data.params), run.info.status


def mlflow_view(events: list[Event]) -> list[Event]:
    """MLflow stores +-inf as +-float max: the expected events as MLflow can hold them."""
    big = sys.float_info.max
    return [(m, k, s, math.copysign(big, v) if math.isinf(v) else v) for m, k, s, v in events]


def tensorboard_events(directory: Path) -> list[Event]:
    """Every scalar of every model folder, read with TensorBoard's own reader."""
    models = {folder_name(model): model for model, _, _, _ in expected_events()}
    events: list[Event] = []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events.extend(
                (models[folder.name], tag, scalar.step, scalar.value)
                for scalar in accumulator.Scalars(tag)
            )
    return events


def wandb_events(directory: Path) -> tuple[list[Event], dict[str, Any]]:
    """Every metric of the run's offline transaction log, once it is complete."""
    deadline = time.monotonic() + 60
    while True:
        logs = transaction_logs(directory)
        if len(logs) == 1 and exit_code_of(logs[0], strict=False) is not None:
            break
        assert time.monotonic() < deadline, f"the wandb run did not complete: {logs}"
        time.sleep(0.1)  # polling a file another process completes, with a deadline
    events: list[Event] = []
    for row in history_rows(logs[0]):
        steps = {key[: -len("/step")]: value for key, value in row.items() if key.endswith("/step")}
        for key, value in row.items():
            if key.startswith("_") or key.endswith("/step"):
                continue
            model = next(m for m in steps if key.startswith(m + "/"))
            events.append((model, key[len(model) + 1 :], steps[model], float(value)))
    return events, config_of(logs[0])


@pytest.fixture(scope="module")
def fanned_out(
    mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str], str]:
    """Ship the odd log to MLflow (real server), TensorBoard and wandb (offline) at once."""
    root = tmp_path_factory.mktemp("fanout")
    log = write_log(root / "logs")
    result = run_tf_ship(
        [
            "--log-file",
            str(log),
            "--no-follow",
            "--run-name",
            "fanout",
            "-b",
            "mlflow",
            "--mlflow-tracking-uri",
            mlflow_server,
            "--mlflow-experiment",
            "fanout",
            "-b",
            "tensorboard",
            "--tensorboard-dir",
            str(root / "tb"),
            "-b",
            "wandb",
            "--wandb-dir",
            str(root / "wandb"),
            "--wandb-project",
            "fanout",
            "--on-restart",  # one run each: the log's step that goes back is an oddity here
            "continue",
        ],
        offline_wandb_env(root),
        root,
    )
    return root, result, mlflow_server


def test_fan_out_exits_cleanly_and_reports_skips(
    fanned_out: tuple[Path, subprocess.CompletedProcess[str], str],
) -> None:
    """Exit code 0; the summary counts the garbage lines and names every backend FINISHED."""
    _, result, _ = fanned_out
    assert result.returncode == 0, result.stderr
    assert f"skipped {len(GARBAGE)}" in result.stderr
    for name in ("mlflow", "tensorboard", "wandb"):
        assert f"backend {name}: FINISHED, {len(LINES)} events" in result.stderr


def test_mlflow_holds_exactly_the_log(
    fanned_out: tuple[Path, subprocess.CompletedProcess[str], str],
) -> None:
    """The real MLflow server holds each event once (inf as float max, MLflow's limit)."""
    _, _, uri = fanned_out
    events, params, status = mlflow_events(uri, "fanout")
    assert_same_events(mlflow_view(expected_events()), events)
    assert params["mymodel.optimizer.parameters.learning_rate"] == "0.001"
    assert status == "FINISHED"


def test_tensorboard_holds_exactly_the_log(
    fanned_out: tuple[Path, subprocess.CompletedProcess[str], str],
) -> None:
    """TensorBoard's reader finds each event once, within float32 rounding."""
    root, _, _ = fanned_out
    assert_same_events(expected_events(), tensorboard_events(root / "tb"), float32=True)


def test_wandb_holds_exactly_the_log(
    fanned_out: tuple[Path, subprocess.CompletedProcess[str], str],
) -> None:
    """The offline run's transaction log holds each event once, on its model's x-axis."""
    root, _, _ = fanned_out
    events, config = wandb_events(root / "wandb")
    assert_same_events(expected_events(), events)
    assert config["mymodel"]["optimizer"]["parameters"]["learning_rate"] == 0.001
    assert config["td3 system"] == {"algorithm": {"type": "td3"}}


def test_a_failing_backend_does_not_stop_the_others(tmp_path: Path) -> None:
    """A backend that raises on every call fails alone: the others get everything; exit 1."""
    log = write_log(tmp_path / "logs")
    result = run_tf_ship(
        [
            "--log-file",
            str(log),
            "--no-follow",
            "--no-state",
            "--retry-timeout",
            "1",
            "-b",
            "tf_ship.testing:FailingBackend",
            "-b",
            "tensorboard",
            "--tensorboard-dir",
            str(tmp_path / "tb"),
            "-b",
            "mlflow",
            "--mlflow-tracking-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--mlflow-experiment",
            "isolated",
            "--on-restart",
            "continue",
        ],
        {},
        tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert "backend tf_ship.testing:FailingBackend: FAILED" in result.stderr
    assert_same_events(expected_events(), tensorboard_events(tmp_path / "tb"), float32=True)
    events, _, status = mlflow_events(f"sqlite:///{tmp_path / 'm.db'}", "isolated")
    assert_same_events(mlflow_view(expected_events()), events)
    assert status == "FINISHED"


def test_wandb_helper_flags_are_accepted(tmp_path: Path) -> None:
    """The old daemon's command line works unchanged, and its --timeout stops a follow."""
    log = write_log(tmp_path / "logs")
    env = {**offline_wandb_env(tmp_path), "TORCHFORT_LOGDIR": str(log.parent)}
    result = run_tf_ship(
        [
            "--backend",
            "wandb",
            f"--wandb_dir={tmp_path / 'wandb'}",
            "--wandb_group=sweep",
            "--wandb_project=legacy",
            "--wandb_entity=team",
            "--run_tag=run1",
            "--polling_interval=1",
            "--timeout=2",
            "--verbose",
            "--on-restart=continue",
        ],
        env,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "no new lines for 2 s" in result.stderr
    events, _ = wandb_events(tmp_path / "wandb")
    assert_same_events(expected_events(), events)
