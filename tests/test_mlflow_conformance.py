"""The conformance kit over the MLflow backend, against a real ``mlflow server`` and SQLite.

What the tracker holds is read back with `MlflowClient`: every metric row of every run in the
experiment (the first run, the run after the application restart, the resumed run).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tf_ship.backends.mlflow import MlflowBackend
from tf_ship.testing import StoredEvent, check_backend

pytest.importorskip("mlflow")
from mlflow import MlflowClient  # after the skip


def held_by(client: MlflowClient, experiment: str) -> list[StoredEvent]:
    """Every metric row of every run in the experiment, as (model, metric, step, value, run)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    held: list[StoredEvent] = []
    for run in client.search_runs([found.experiment_id]):
        for key in run.data.metrics:
            model, _, metric = key.partition("/")
            rows = client.get_metric_history(run.info.run_id, key)
            held += [(model, metric, row.step, row.value, run.info.run_id) for row in rows]
    return held


@pytest.fixture(params=["server", "sqlite"])
def tracking_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The real server (metrics through the REST call), and a local SQLite store (the client)."""
    if request.param == "server":
        return str(request.getfixturevalue("mlflow_server"))
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_mlflow_passes(tracking_uri: str, tmp_path: Path) -> None:
    """Exactly once (docs/delivery.md): a re-sent batch gets its first timestamps and merges.

    Two runs: the first, and the one after the application restart, which the fresh object
    resumes; both end FINISHED.
    """
    experiment = f"conformance-{uuid.uuid4().hex}"
    client = MlflowClient(tracking_uri)
    check_backend(
        lambda: MlflowBackend(tracking_uri, experiment),
        read_back=lambda: held_by(client, experiment),
        workdir=tmp_path / "log",
        # docs/backends.md: MLflow stores ±inf as ±1.7976931348623157e308, its SQL store -0 as 0
        values=("finite", "unsigned_zero"),
    )
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    assert sorted(run.info.status for run in runs) == ["FINISHED", "FINISHED"]
