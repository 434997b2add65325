"""The MLflow backend, end to end.

A small TorchFort log is shipped to a real tracking server and to an embedded SQLite store, then
read back value by value.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import tf_ship
from tf_ship.backends.base import FatalBackendError, PermanentBackendError
from tf_ship.backends.json_numbers import protobuf_json_number as json_number
from tf_ship.backends.mlflow import MlflowBackend
from tf_ship.backends.mlflow.backend import CALLS_IN_FLIGHT, MAX_METRICS_PER_CALL
from tf_ship.backends.mlflow.keys import KEY_MAP_TAG, is_valid_key, key_map_tags, sanitize_key
from tf_ship.backends.mlflow.store import sqlite_file
from tf_ship.shipper.events import MetricEvent, ModelConfig, RunInfo, RunStatus

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402 - after the skip
from mlflow.utils.validation import _validate_metric_name  # noqa: E402
from mlflow_server import run_artifacts  # noqa: E402

MAX_DOUBLE = 1.7976931348623157e308
"""What MLflow's SQL stores keep for +inf (and its negative for -inf)."""
EXPERIMENT = "tf-ship-tests"
LOOPBACK = "127.0.0.1"


def line(model: str, step: int, metric: str, value: str) -> str:
    """One metric line, byte for byte as TorchFort writes it."""
    return f"TORCHFORT::WANDB: model: {model}, step: {step}, {metric}: {value}\n"


@attrs.define
class Log:
    """A log written to disk, and what MLflow should hold once it is shipped."""

    directory: Path
    lines: list[tuple[str, int, str, str]] = attrs.field(factory=list)

    def add(self, model: str, step: int, metric: str, value: str) -> None:
        """Add a line."""
        self.lines.append((model, step, metric, value))

    def write(self) -> None:
        """Write the log file."""
        text = "".join(line(*entry) for entry in self.lines)
        (self.directory / "torchfort.log").write_text(text, encoding="utf-8")

    def config(self, file_name: str, identifier: str, config: dict[str, Any]) -> None:
        """Write a config file as TorchFort does: the config plus its identifier, last."""
        text = yaml.safe_dump({**config, "identifier": identifier}, sort_keys=False)
        (self.directory / file_name).write_text(text.rstrip("\n"), encoding="utf-8")

    def expected(self, key_of: dict[str, str]) -> dict[str, Counter[tuple[int, object]]]:
        """Per MLflow key, how often each (step, value) must appear."""
        result: dict[str, Counter[tuple[int, object]]] = {}
        for model, step, metric, value in self.lines:
            name = f"{model}/{metric}"
            key = key_of.get(name, name)
            result.setdefault(key, Counter())[(step, stored(float(value)))] += 1
        return result


def stored(value: float) -> object:
    """A value as MLflow's SQL store returns it, in a form that compares equal to itself."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return math.copysign(MAX_DOUBLE, value)
    return value


def history(client: Any, run_id: str, key: str) -> Counter[tuple[int, object]]:
    """The (step, value) rows of a metric, counted."""
    return Counter((m.step, stored(m.value)) for m in client.get_metric_history(run_id, key))


def config_artifacts(tracking_uri: str, run_id: str) -> dict[str, str]:
    """The files in the run's ``configs`` artifacts, read back from the store, by name."""
    artifact_uri = MlflowClient(tracking_uri).get_run(run_id).info.artifact_uri
    return run_artifacts(tracking_uri, artifact_uri, "configs")


CONFIG = {
    "general": {"enable_wandb_hook": 1, "report_frequency": 100},
    "model": {"type": "mlp", "parameters": {"dropout": 0.0, "layer_sizes": [1024, 1024]}},
    "optimizer": {"type": "adam", "parameters": {"learning_rate": 1e-3}},
    "notes": "x" * 7000,
}
RENAMED = {
    "my model/l2 error (rel.)": "my model/l2 error _rel._",
    "my model/l2 error [rel.]": "my model/l2 error _rel.__2",
    "my model/a..b": "my model/a_.b",
}


def rich_log(directory: Path) -> Log:
    """Every case at once: > 1000 events, NaN/inf, repeats, extreme steps, odd names."""
    log = Log(directory)
    for step in range(1200):
        log.add("mymodel", step, "train_loss", f"{1 / (step + 1):g}")
    for step, value in enumerate(["nan", "-nan", "inf", "-inf", "-0", "1e+300", "4.94066e-324"]):
        log.add("mymodel", step, "special", value)
    log.add("mymodel", 7, "train_lr", "0.001")
    log.add("mymodel", 7, "train_lr", "0.001")
    log.add("mymodel", 7, "train_lr", "0.002")
    log.add("mymodel", -1, "steps", "1")
    log.add("mymodel", 2**63 - 1, "steps", "2")
    log.add("mymodel", -(2**63), "steps", "3")
    log.add("mymodel", -5, "steps", "4")
    for metric in ("l2 error (rel.)", "l2 error [rel.]", "a..b", "énergie"):
        log.add("my model", 10, metric, "0.5")
    log.add("my model", 10, "l2 error (rel.)", "0.25")
    log.write()
    log.config("config_mymodel.yaml", "mymodel", CONFIG)
    log.config("config_my_model.yaml", "my model", {"loss": {"type": "MSE"}})
    return log


class CountingBackend(MlflowBackend):
    """The real backend, counting the metrics of each `log_batch` call; may refuse one metric."""

    def __init__(self, tracking_uri: str, refuse_metric: str | None = None) -> None:
        super().__init__(tracking_uri, EXPERIMENT)
        self.refuse_metric = refuse_metric
        self.calls: list[int] = []

    def _logged(self, what: str, **entities: Any) -> None:
        if "metrics" in entities:
            self.calls.append(len(entities["metrics"]))
        super()._logged(what, **entities)

    def metric_key(self, event: MetricEvent) -> str:
        """A key MLflow refuses (``//``) for the chosen metric; the real key otherwise."""
        if event.metric == self.refuse_metric:
            return f"{event.model}//{event.metric}"
        return super().metric_key(event)


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An embedded SQLite store whose test experiment keeps its artifacts beside it."""
    directory = tmp_path_factory.mktemp("mlflow-sqlite")
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    MlflowClient(uri).create_experiment(EXPERIMENT, (directory / "artifacts").as_uri())
    return uri


@pytest.fixture(scope="module", params=["server", "sqlite"])
def tracking_uri(request: pytest.FixtureRequest) -> str:
    """A real tracking server, then the embedded SQLite store."""
    name = "mlflow_server" if request.param == "server" else "sqlite_uri"
    return str(request.getfixturevalue(name))


@attrs.frozen
class Shipped:
    """The outcome of shipping the rich log."""

    client: Any
    run_id: str
    log: Log
    report: tf_ship.ShipReport
    backend: CountingBackend


@pytest.fixture(scope="module")
def shipped(tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Shipped:
    """The rich log, shipped once per store in one batch of 2500 events at most."""
    log = rich_log(tmp_path_factory.mktemp("log"))
    backend = CountingBackend(tracking_uri)
    report = tf_ship.ship(log.directory, {"mlflow": backend}, follow=False, batch_size=2500)
    assert report.ok, report.summary()
    assert backend.run_id is not None
    return Shipped(MlflowClient(tracking_uri), backend.run_id, log, report, backend)


def test_every_event_arrives_exactly_once(shipped: Shipped) -> None:
    """Each line of the log is one row in MLflow, under its (possibly renamed) key."""
    expected = shipped.log.expected(RENAMED)
    for key, rows in expected.items():
        assert history(shipped.client, shipped.run_id, key) == rows, key
    logged = set(shipped.client.get_run(shipped.run_id).data.metrics)
    assert logged == set(expected)
    assert shipped.report.backends[0].events == len(shipped.log.lines)


def test_nan_and_infinity_arrive(shipped: Shipped) -> None:
    """NaN stays NaN; +-inf come back as +-1.7976931348623157e308, the largest double."""
    rows = shipped.client.get_metric_history(shipped.run_id, "mymodel/special")
    values = {m.step: m.value for m in rows}
    assert math.isnan(values[0])
    assert math.isnan(values[1])
    assert values[2] == MAX_DOUBLE
    assert values[3] == -MAX_DOUBLE
    assert values[4] == 0.0
    assert values[5] == 1e300
    assert values[6] == 4.94066e-324


def test_repeated_lines_stay_two_rows(shipped: Shipped) -> None:
    """Two identical lines (same key, step and value) are two rows, with distinct timestamps."""
    rows = shipped.client.get_metric_history(shipped.run_id, "mymodel/train_lr")
    assert sorted((m.step, m.value) for m in rows) == [(7, 0.001), (7, 0.001), (7, 0.002)]
    assert len({m.timestamp for m in rows}) == 3


def test_timestamps_strictly_increase_per_key(shipped: Shipped) -> None:
    """Within a key, timestamps follow log order and never repeat."""
    rows = shipped.client.get_metric_history(shipped.run_id, "mymodel/train_loss")
    by_step = [m.timestamp for m in sorted(rows, key=lambda m: m.step)]
    assert by_step == sorted(by_step)
    assert len(set(by_step)) == len(by_step) == 1200


def test_negative_and_big_steps(shipped: Shipped) -> None:
    """Steps are int64, negative ones included, and arrive unchanged."""
    rows = shipped.client.get_metric_history(shipped.run_id, "mymodel/steps")
    assert sorted((m.step, m.value) for m in rows) == [
        (-(2**63), 3.0),
        (-5, 4.0),
        (-1, 1.0),
        (2**63 - 1, 2.0),
    ]


def test_names_are_sanitized_and_collisions_kept_apart(shipped: Shipped) -> None:
    """Invalid characters become ``_``; a collision gets a suffix; the run tag maps them."""
    run = shipped.client.get_run(shipped.run_id)
    assert json.loads(run.data.tags[KEY_MAP_TAG]) == RENAMED
    rows = shipped.client.get_metric_history(shipped.run_id, "my model/l2 error _rel._")
    assert sorted(m.value for m in rows) == [0.25, 0.5]
    assert "my model/énergie" in run.data.metrics


def test_params_and_config_artifact(shipped: Shipped, tracking_uri: str) -> None:
    """Configs become flattened params (lists as JSON, long values cut) and a YAML artifact."""
    params = shipped.client.get_run(shipped.run_id).data.params
    assert params["mymodel.general.report_frequency"] == "100"
    assert params["mymodel.model.type"] == "mlp"
    assert params["mymodel.model.parameters.layer_sizes"] == "[1024, 1024]"
    assert float(params["mymodel.optimizer.parameters.learning_rate"]) == 1e-3
    assert params["mymodel.notes"] == "x" * 6000
    assert params["my model.loss.type"] == "MSE"
    files = config_artifacts(tracking_uri, shipped.run_id)
    assert set(files) == {"mymodel.yaml", "my_model.yaml"}
    assert yaml.safe_load(files["mymodel.yaml"]) == CONFIG
    assert yaml.safe_load(files["my_model.yaml"]) == {"loss": {"type": "MSE"}}


def test_run_is_finished(shipped: Shipped) -> None:
    """A log shipped to its end finishes the run."""
    assert shipped.client.get_run(shipped.run_id).info.status == "FINISHED"
    assert shipped.report.backends[0].status is RunStatus.FINISHED


def test_large_batches_are_chunked(shipped: Shipped) -> None:
    """A batch of more than 1000 events goes out in calls of at most 1000 metrics."""
    assert max(shipped.backend.calls) == MAX_METRICS_PER_CALL
    assert sum(shipped.backend.calls) == len(shipped.log.lines)
    assert shipped.report.backends[0].batches == 1


def test_refused_key_is_isolated(tracking_uri: str, tmp_path: Path) -> None:
    """MLflow refuses a batch with one invalid key; the engine ships the rest around it."""
    log = Log(tmp_path)
    for step in range(20):
        log.add("m", step, "good", str(step))
    log.add("m", 5, "bad", "1")
    log.write()
    backend = CountingBackend(tracking_uri, refuse_metric="bad")
    report = tf_ship.ship(tmp_path, {"mlflow": backend}, follow=False)
    stats = report.backends[0]
    assert (stats.events, stats.rejected, stats.status) == (20, 1, RunStatus.FINISHED)
    client = MlflowClient(tracking_uri)
    assert history(client, str(backend.run_id), "m/good") == Counter(
        {(step, float(step)): 1 for step in range(20)}
    )


class ChunkFailures(MlflowBackend):
    """The real backend; the `log_batch` call of chunk N fails with `failures[N]`, if any."""

    def __init__(self, tracking_uri: str, failures: dict[int, Exception]) -> None:
        super().__init__(tracking_uri, EXPERIMENT)
        self.failures = failures
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def _logged(self, what: str, **entities: Any) -> None:
        metrics = entities.get("metrics") or []
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            failure = (
                self.failures.get(metrics[0].step // MAX_METRICS_PER_CALL) if metrics else None
            )
            if failure is not None:
                raise failure
            super()._logged(what, **entities)
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.mark.parametrize(
    ("failures", "raised"),
    [
        ({}, None),
        ({1: PermanentBackendError("refused")}, PermanentBackendError),
        ({0: PermanentBackendError("refused"), 2: ConnectionError("down")}, ConnectionError),
        (
            {
                0: PermanentBackendError("refused"),
                1: ConnectionError("down"),
                2: FatalBackendError("gone"),
            },
            FatalBackendError,
        ),
    ],
)
def test_calls_in_flight_all_go_out_and_the_gravest_error_is_raised(
    mlflow_server: str,
    tmp_path: Path,
    failures: dict[int, Exception],
    raised: type[Exception] | None,
) -> None:
    """Against a server, a batch of 4 chunks goes out 2 calls at a time; every chunk is tried.

    A fatal refusal is raised before a transient error, which is raised before a refused event.
    """
    backend = ChunkFailures(mlflow_server, failures)
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    events = [MetricEvent("m", "x", step, float(step), offset=step) for step in range(4000)]
    if raised is None:
        backend.log_metrics(events)
    else:
        with pytest.raises(raised):
            backend.log_metrics(events)
    backend.close(RunStatus.FINISHED)
    rows = MlflowClient(mlflow_server).get_metric_history(str(backend.run_id), "m/x")
    assert sorted(row.step for row in rows) == [
        step for step in range(4000) if step // MAX_METRICS_PER_CALL not in failures
    ]
    assert 1 <= backend.most_in_flight <= CALLS_IN_FLIGHT


def test_metrics_go_straight_to_the_rest_api_of_a_server(
    mlflow_server: str, sqlite_uri: str, tmp_path: Path
) -> None:
    """A server gets metrics through the direct REST call; a local store through the client."""
    served = MlflowBackend(mlflow_server, EXPERIMENT)
    served.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    local = MlflowBackend(sqlite_uri, EXPERIMENT)
    local.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    assert served._rest is not None
    assert local._rest is None
    for backend in (served, local):
        backend.close(RunStatus.FINISHED)


def test_a_moved_mlflow_internal_falls_back_to_the_client(
    mlflow_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When the direct call breaks on MLflow's internals, the client sends the metrics."""
    backend = MlflowBackend(mlflow_server, EXPERIMENT)
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))

    def moved(*_: object) -> None:
        raise AttributeError("'RestStore' object has no attribute 'get_host_creds'")

    backend._rest = moved  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        backend.log_metrics([MetricEvent("m", "x", step, 0.5, offset=step) for step in range(3)])
        backend.log_metrics([MetricEvent("m", "x", step, 0.5, offset=step) for step in range(3, 5)])
    backend.close(RunStatus.FINISHED)
    rows = MlflowClient(mlflow_server).get_metric_history(str(backend.run_id), "m/x")
    assert sorted(row.step for row in rows) == [0, 1, 2, 3, 4]
    assert backend._rest is None
    assert [r.message for r in caplog.records].count(
        "MLflow: sending through the client from now on "
        "('RestStore' object has no attribute 'get_host_creds')"
    ) == 1


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(1.5, 1.5), (-0.0, -0.0), (math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")],
)
def test_json_numbers_as_protobuf_writes_them(value: float, encoded: float | str) -> None:
    """Non-finite doubles become protobuf's JSON strings; the sign of -0 is kept."""
    assert json_number(value) == encoded
    assert str(json_number(value)) == str(encoded)


def test_refusal_raises_permanent_error(sqlite_uri: str, tmp_path: Path) -> None:
    """An invalid key is a PermanentBackendError, and nothing of its batch is stored."""
    backend = CountingBackend(sqlite_uri, refuse_metric="bad")
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    events = [MetricEvent("m", "good", 1, 1.0), MetricEvent("m", "bad", 1, 1.0)]
    with pytest.raises(PermanentBackendError, match=r"Invalid value"):
        backend.log_metrics(events)
    backend.close(RunStatus.FINISHED)
    assert MlflowClient(sqlite_uri).get_metric_history(str(backend.run_id), "m/good") == []


def test_resent_batch_is_not_duplicated(tracking_uri: str, tmp_path: Path) -> None:
    """A batch sent again before its flush keeps its timestamps, so MLflow merges it."""
    backend = MlflowBackend(tracking_uri, EXPERIMENT)
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    events = [MetricEvent("m", "x", 1, 2.0, offset=0), MetricEvent("m", "x", 1, 2.0, offset=60)]
    backend.log_metrics(events)
    backend.log_metrics(events)  # as after a timeout whose request did arrive
    backend.flush()
    backend.close(RunStatus.FINISHED)
    rows = MlflowClient(tracking_uri).get_metric_history(str(backend.run_id), "m/x")
    assert len(rows) == 2


def test_resume_reopens_the_run_and_keeps_keys(sqlite_uri: str, tmp_path: Path) -> None:
    """The resume state reopens the same run; renamed names keep their keys, in any order."""
    run = RunInfo(tmp_path, tmp_path / "torchfort.log", run_name="resumed")
    first = MlflowBackend(sqlite_uri, EXPERIMENT)
    first.open(run)
    first.log_metrics([MetricEvent("m", "a(b", 1, 1.0), MetricEvent("m", "a)b", 1, 2.0)])
    first.flush()
    first.close(RunStatus.KILLED)
    state = first.resume_state()
    assert state["run_id"] == first.run_id
    assert state["tracking_uri"] == sqlite_uri
    assert set(state["timestamps"]) == {"m/a_b", "m/a_b_2"}
    assert state["in_flight"] == []  # events without a file position record no range

    second = MlflowBackend(sqlite_uri, EXPERIMENT)
    second.open(attrs.evolve(run, state=state))
    assert second.run_id == first.run_id
    client = MlflowClient(sqlite_uri)
    assert client.get_run(str(second.run_id)).info.status == "RUNNING"
    second.log_metrics([MetricEvent("m", "a)b", 2, 3.0), MetricEvent("m", "a_b", 2, 4.0)])
    second.flush()
    second.close(RunStatus.FINISHED)
    run_id = str(second.run_id)
    assert sorted(m.value for m in client.get_metric_history(run_id, "m/a_b")) == [1.0]
    assert sorted(m.value for m in client.get_metric_history(run_id, "m/a_b_2")) == [2.0, 3.0]
    assert sorted(m.value for m in client.get_metric_history(run_id, "m/a_b_3")) == [4.0]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_renamed_name_is_reported_once(
    sqlite_uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A name that needs a new key is reported once, however often it is logged."""
    backend = MlflowBackend(sqlite_uri, EXPERIMENT)
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        for step in range(3):
            backend.log_metrics([MetricEvent("m", "loss (train)", step, 1.0)])
            backend.flush()
    backend.close(RunStatus.FINISHED)
    assert caplog.text.count("loss (train)") == 1
    tags = MlflowClient(sqlite_uri).get_run(str(backend.run_id)).data.tags
    assert json.loads(tags[KEY_MAP_TAG]) == {"m/loss (train)": "m/loss _train_"}


def test_explicit_missing_run_is_fatal(sqlite_uri: str, tmp_path: Path) -> None:
    """A run id that the store does not know stops the backend instead of retrying."""
    backend = MlflowBackend(sqlite_uri, EXPERIMENT, run_id="0123456789abcdef0123456789abcdef")
    with pytest.raises(FatalBackendError):
        backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    backend.close(RunStatus.FAILED)


def test_changed_config_is_logged_as_revision(
    tracking_uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MLflow params never change: a changed config becomes revision 2, without failing."""
    backend = MlflowBackend(tracking_uri, EXPERIMENT)
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    first = {"optimizer": {"learning_rate": 0.001}, "model": {"layers": [8, 8]}}
    second = {"optimizer": {"learning_rate": 0.01}, "model": {"layers": [8, 8]}}
    backend.log_config(ModelConfig("m", first))
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        backend.log_config(ModelConfig("m", second))
    assert "revision 2" in caplog.text
    backend.log_config(ModelConfig("m", first))  # back to the first: nothing new
    backend.close(RunStatus.FINISHED)
    data = MlflowClient(tracking_uri).get_run(str(backend.run_id)).data
    assert {k: v for k, v in data.params.items() if k.startswith("m.")} == {
        "m.optimizer.learning_rate": "0.001",
        "m.model.layers": "[8, 8]",
        "m.rev2.optimizer.learning_rate": "0.01",
        "m.rev2.model.layers": "[8, 8]",
    }
    assert data.tags["tf_ship.config_revision.m"] == "2"
    files = config_artifacts(tracking_uri, str(backend.run_id))
    assert set(files) == {"m.yaml", "m.rev2.yaml"}
    assert yaml.safe_load(files["m.yaml"]) == first
    assert yaml.safe_load(files["m.rev2.yaml"]) == second


@pytest.mark.parametrize("name", ["cylinder-flow", None])
def test_runs_are_named_by_the_run_name_and_restarts_after_the_first(
    sqlite_uri: str, tmp_path: Path, name: str | None
) -> None:
    """The run name (the log folder's name unless ``--run-name``) names the MLflow run.

    The run of the N-th application restart is ``<first run's name>-restartN``, a child of the
    first; without a run name, MLflow's own name for the first run is the stem.
    """
    run = RunInfo(tmp_path, tmp_path / "torchfort.log", run_name=name)
    backend = MlflowBackend(sqlite_uri, EXPERIMENT)
    backend.open(run)
    first = backend.resume_state()
    backend.close(RunStatus.FINISHED)
    backend.open(attrs.evolve(run, segment=1, first_run=first))
    second_id = str(backend.run_id)
    backend.close(RunStatus.FINISHED)
    client = MlflowClient(sqlite_uri)
    first_name = client.get_run(first["run_id"]).info.run_name
    assert first_name == (name or first["run_name"])
    assert first_name
    second = client.get_run(second_id)
    assert second.info.run_name == f"{first_name}-restart1"
    assert second.data.tags["mlflow.parentRunId"] == first["run_id"]
    assert second.data.tags["tf_ship.restart"] == "1"


@pytest.mark.parametrize(
    ("uri", "file"),
    [
        ("sqlite:///mlflow.db", "mlflow.db"),
        ("sqlite:///runs/mlflow.db", "runs/mlflow.db"),
        ("sqlite:////scratch/mlflow.db", "/scratch/mlflow.db"),
        ("sqlite+pysqlite:////scratch/mlflow.db?timeout=20", "/scratch/mlflow.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("postgresql://host/db", None),
        ("http://127.0.0.1:5000", None),
    ],
)
def test_sqlite_file_of_a_uri(uri: str, file: str | None) -> None:
    """The database file a SQLite URI names (relative to the working directory), if any."""
    assert sqlite_file(uri) == file


def test_close_twice_does_nothing(sqlite_uri: str, tmp_path: Path) -> None:
    """The first close sets the status; the second changes nothing."""
    backend = MlflowBackend(sqlite_uri, EXPERIMENT)
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    backend.close(RunStatus.KILLED)
    backend.close(RunStatus.FINISHED)
    assert MlflowClient(sqlite_uri).get_run(str(backend.run_id)).info.status == "KILLED"


@pytest.fixture
def no_mlflow_http_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MLflow HTTP settings in the environment (the backend then sets its own)."""
    for name in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_mlflow_http_settings")
def test_outage_is_transient_and_reported_fast(tmp_path: Path) -> None:
    """No server: an ordinary (retryable) error within seconds, not MLflow's minutes."""
    from mlflow_server import free_port  # noqa: PLC0415 - the plugin module

    backend = MlflowBackend(f"http://{LOOPBACK}:{free_port()}", EXPERIMENT)
    started = time.monotonic()
    with pytest.raises(Exception) as caught:  # noqa: PT011 - any error but the backend's own
        backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    assert not isinstance(caught.value, tf_ship.BackendError)
    assert time.monotonic() - started < 10
    backend.close(RunStatus.FAILED)


def test_default_store_and_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a URI, the run goes to ./mlflow.db, in the experiment ``torchfort``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    backend = MlflowBackend()
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log", run_name="default"))
    backend.close(RunStatus.FINISHED)
    assert (tmp_path / "mlflow.db").exists()
    client = MlflowClient("sqlite:///mlflow.db")
    run = client.get_run(str(backend.run_id))
    assert client.get_experiment(run.info.experiment_id).name == "torchfort"
    assert run.info.run_name == "default"


@given(st.text())
def test_sanitized_keys_are_valid(name: str) -> None:
    """Whatever the name, its key passes MLflow's own validation."""
    key = sanitize_key(name)
    assert is_valid_key(key)
    _validate_metric_name(key)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("mymodel/train_loss", "mymodel/train_loss"),
        ("/lead", "_/lead"),
        ("a//b/", "a/_/b/_"),
        ("a/./b", "a/_/b"),
        ("x/../y", "x/_./y"),
        ("e=mc²", "e_mc²"),
        ("é" * 300, "é" * 250),
    ],
)
def test_sanitize_key_examples(name: str, key: str) -> None:
    """Typical names and their keys."""
    assert sanitize_key(name) == key


def test_key_map_tags_are_split_to_fit() -> None:
    """A key map larger than one tag value is spread over several tags."""
    renamed = {f"model/metric ({i})" + "x" * 200: f"model/metric _{i}_" for i in range(100)}
    tags = key_map_tags(renamed)
    assert len(tags) > 1
    assert all(len(value) <= 8000 for value in tags.values())
    merged: dict[str, str] = {}
    for value in tags.values():
        merged.update(json.loads(value))
    assert merged == renamed
