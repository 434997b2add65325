"""Configs reach MLflow on every supported version, and never hold metrics back.

The artifact goes through a repository built for the backend's tracking URI (MLflow before 3.7
sends it to the global one: ``./mlruns``). An upload that fails is reported and tried again; a
refused one is reported and skipped; either way the metrics flow at once.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

import tf_ship
from tf_ship.backends.base import FatalBackendError, PermanentBackendError
from tf_ship.backends.mlflow import MlflowBackend
from tf_ship.backends.mlflow import artifacts as mlflow_artifacts
from tf_ship.backends.mlflow.deferred import FIRST_DELAY, MAX_DELAY, Deferred
from tf_ship.shipper.events import ModelConfig, RunInfo, RunStatus

mlflow = pytest.importorskip("mlflow")
requests = pytest.importorskip("requests")
from mlflow import MlflowClient  # noqa: E402 - after the skip
from mlflow_server import run_artifacts  # noqa: E402

EXPERIMENT = "tf-ship-configs"
FAST = 10.0
"""Seconds a whole shipment may take: far below the engine's retry budget (600 s)."""
CONFIG = {"optimizer": {"type": "adam", "learning_rate": 0.001}, "model": {"layers": [8, 8]}}
STEPS = 50


def write_log(directory: Path) -> None:
    """A log of `STEPS` lines of model ``m``, and its config as TorchFort writes it."""
    lines = [f"TORCHFORT::WANDB: model: m, step: {step}, loss: {step}\n" for step in range(STEPS)]
    (directory / "torchfort.log").write_text("".join(lines), encoding="utf-8")
    text = yaml.safe_dump({**CONFIG, "identifier": "m"}, sort_keys=False)
    (directory / "config_m.yaml").write_text(text, encoding="utf-8")


def config_files(uri: str, run_id: str) -> dict[str, str]:
    """The run's ``configs`` artifacts, read back from the store, by name."""
    artifact_uri = MlflowClient(uri).get_run(run_id).info.artifact_uri
    return run_artifacts(uri, artifact_uri, "configs")


def steps_stored(uri: str, run_id: str) -> list[int]:
    """The steps of ``m/loss`` the store holds."""
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "m/loss"))


@pytest.fixture
def sqlite_uri(tmp_path: Path) -> str:
    """A SQLite store of its own, its artifacts beside it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment(EXPERIMENT, (tmp_path / "artifacts").as_uri())
    return uri


class FlakyRepository:
    """An artifact repository whose first `failures` uploads raise `error`; then the real one."""

    def __init__(self, real: Any, failures: int, error: Exception) -> None:
        self.real = real
        self.failures = failures
        self.error = error
        self.attempts = 0

    def log_artifact(self, local: str, directory: str | None = None) -> None:
        """Fail, or upload through the real repository."""
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error
        self.real.log_artifact(local, directory)


@attrs.define
class Flakiness:
    """How the artifact repositories fail, and the repositories made."""

    failures: int = 0
    error: Exception = attrs.field(factory=lambda: ConnectionError("down"))
    made: list[FlakyRepository] = attrs.field(factory=list)


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> Flakiness:
    """Make every artifact repository the backend builds flaky, as the test then says."""
    flakiness = Flakiness()
    real_factory = mlflow_artifacts.artifact_repository

    def factory(artifact_uri: str, tracking_uri: str) -> FlakyRepository:
        real = real_factory(artifact_uri, tracking_uri)
        repository = FlakyRepository(real, flakiness.failures, flakiness.error)
        flakiness.made.append(repository)
        return repository

    monkeypatch.setattr(mlflow_artifacts, "artifact_repository", factory)
    return flakiness


def ship(tmp_path: Path, uri: str) -> tuple[tf_ship.ShipReport, str]:
    """Ship the log of `write_log`; the report and the run id, within `FAST` seconds."""
    log = tmp_path / "log"
    log.mkdir()
    write_log(log)
    backend = MlflowBackend(uri, EXPERIMENT)
    started = time.monotonic()
    report = tf_ship.ship(log, {"mlflow": backend}, follow=False)
    assert time.monotonic() - started < FAST
    return report, str(backend.run_id)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages tf-ship warned with."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_config_artifact_reaches_a_server_that_serves_artifacts(
    mlflow_server: str, tmp_path: Path
) -> None:
    """The server's ``mlflow-artifacts:`` URI is resolved against the backend's URI.

    The global tracking URI stays MLflow's default, as in any program that does not set it: an
    mlflow before 3.7 would send the artifact there.
    """
    assert mlflow.get_tracking_uri() != mlflow_server
    backend = MlflowBackend(mlflow_server, EXPERIMENT)
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    backend.log_config(ModelConfig("m", CONFIG))
    backend.close(RunStatus.FINISHED)
    run = MlflowClient(mlflow_server).get_run(str(backend.run_id))
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    files = config_files(mlflow_server, str(backend.run_id))
    assert yaml.safe_load(files["m.yaml"]) == CONFIG
    assert not (tmp_path / "mlruns").exists()


def test_failing_upload_does_not_hold_metrics_back(
    sqlite_uri: str,
    tmp_path: Path,
    flaky: Flakiness,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An artifact store that is down: every metric arrives at once; the loss is reported."""
    flaky.failures, flaky.error = 10**6, requests.ConnectionError("artifact store down")
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        report, run_id = ship(tmp_path, sqlite_uri)
    assert report.backends[0].events == STEPS
    assert steps_stored(sqlite_uri, run_id) == list(range(STEPS))
    params = MlflowClient(sqlite_uri).get_run(run_id).data.params
    assert params["m.optimizer.type"] == "adam"
    assert config_files(sqlite_uri, run_id) == {}
    assert warnings_of(caplog) == [
        (
            "MLflow: the artifact configs/m.yaml not recorded yet (ConnectionError: artifact "
            f"store down); metrics go on, tried again in {FIRST_DELAY:g} s"
        ),
        "MLflow: the artifact configs/m.yaml not recorded (ConnectionError: artifact store down)",
    ]


def test_upload_that_fails_for_a_while_is_recorded_later(
    sqlite_uri: str,
    tmp_path: Path,
    flaky: Flakiness,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first upload fails; the one tried again before the run ends succeeds."""
    flaky.failures, flaky.error = 1, requests.ConnectionError("artifact store down")
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        report, run_id = ship(tmp_path, sqlite_uri)
    assert report.ok, report.summary()
    assert steps_stored(sqlite_uri, run_id) == list(range(STEPS))
    assert yaml.safe_load(config_files(sqlite_uri, run_id)["m.yaml"]) == CONFIG
    assert len(warnings_of(caplog)) == 1
    assert "not recorded yet" in warnings_of(caplog)[0]


def test_refused_upload_is_reported_and_not_tried_again(
    sqlite_uri: str,
    tmp_path: Path,
    flaky: Flakiness,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An artifact store that answers 403: one warning, no second attempt, metrics flow."""
    response = requests.Response()
    response.status_code = 403
    error = requests.HTTPError("403 Client Error: Forbidden", response=response)
    flaky.failures, flaky.error = 10**6, error
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        report, run_id = ship(tmp_path, sqlite_uri)
    assert report.ok, report.summary()
    assert steps_stored(sqlite_uri, run_id) == list(range(STEPS))
    assert [repository.attempts for repository in flaky.made] == [1]
    assert warnings_of(caplog) == [
        "MLflow: the artifact configs/m.yaml not recorded: HTTPError: 403 Client Error: Forbidden"
    ]


def test_params_that_fail_for_now_are_logged_later(
    sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Params that fail until metrics went out: the metrics first, the params before the end."""
    real = MlflowBackend._logged
    metric_calls: list[int] = []
    failures: list[str] = []

    def flaky_logged(self: MlflowBackend, what: str, **entities: Any) -> None:
        if "metrics" in entities:
            metric_calls.append(len(entities["metrics"]))
        if what == "config params" and not metric_calls:
            failures.append(what)
            raise requests.ConnectionError("server busy")
        real(self, what, **entities)

    monkeypatch.setattr(MlflowBackend, "_logged", flaky_logged)
    report, run_id = ship(tmp_path, sqlite_uri)
    assert report.ok, report.summary()
    assert failures == ["config params"]
    assert steps_stored(sqlite_uri, run_id) == list(range(STEPS))
    params = MlflowClient(sqlite_uri).get_run(run_id).data.params
    assert params["m.model.layers"] == "[8, 8]"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        """The time set by the test."""
        return self.now


def test_deferred_calls_wait_twice_as_long_after_each_failure() -> None:
    """After a failure nothing is tried before the delay; the delay doubles up to a minute."""
    clock = Clock()
    deferred = Deferred("T", clock=clock)
    attempts: list[float] = []

    def fails() -> None:
        attempts.append(clock.now)
        raise ConnectionError("down")

    deferred.add("x", fails)
    for _ in range(400):
        deferred.run()
        clock.now += 1.0
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert gaps[:6] == [2.0, 4.0, 8.0, 16.0, 32.0, MAX_DELAY]
    assert set(gaps[5:]) == {MAX_DELAY}


def test_deferred_calls_keep_their_order_and_drop_refusals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Calls run in order; a refused one is reported, undone and dropped; fatal propagates."""
    made: list[str] = []
    undone: list[str] = []

    def refused() -> None:
        raise PermanentBackendError("no")

    def fatal() -> None:
        raise FatalBackendError("gone")

    deferred = Deferred("T")
    deferred.add("a", lambda: made.append("a"))
    deferred.add("b", refused, lambda: undone.append("b"))
    deferred.add("c", lambda: made.append("c"))
    deferred.add("d", fatal)
    deferred.add("e", lambda: made.append("e"))
    with caplog.at_level(logging.WARNING, logger="tf_ship"), pytest.raises(FatalBackendError):
        deferred.run()
    assert (made, undone) == (["a", "c"], ["b"])
    assert warnings_of(caplog) == ["T: b not recorded: no"]
    deferred.calls.pop(0)  # the fatal call
    deferred.run()
    assert made == ["a", "c", "e"]
    assert deferred.calls == []


def test_deferred_calls_left_are_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    """`abandon` names every call not made, with its last error, and forgets them."""
    deferred = Deferred("T")

    def fails() -> None:
        raise ConnectionError("down\nand more")

    deferred.add("x", fails)
    deferred.add("y", lambda: None)
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        deferred.run()
        deferred.abandon()
        deferred.abandon()
    assert warnings_of(caplog) == [
        (
            "T: x not recorded yet (ConnectionError: down); metrics go on, tried again in "
            f"{FIRST_DELAY:g} s"
        ),
        "T: x not recorded (ConnectionError: down)",
        "T: y not recorded (the run ended first)",
    ]
