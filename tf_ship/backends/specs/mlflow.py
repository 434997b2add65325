"""The MLflow backend (`tf_ship.backends.mlflow`) as the command line sees it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tf_ship.backends.spec import BackendOption, BackendSpec


def _place_example(
    options: dict[str, Any], folder: Path, _stamp: str, environ: Mapping[str, str]
) -> None:
    """A SQLite store and an artifact folder, unless a URI is given or MLFLOW_TRACKING_URI set."""
    if not options.get("tracking_uri") and not environ.get("MLFLOW_TRACKING_URI"):
        options["tracking_uri"] = f"sqlite:///{(folder / 'mlflow.db').as_posix()}"
        options.setdefault("artifact_location", (folder / "mlartifacts").absolute().as_uri())


SPEC = BackendSpec(
    name="mlflow",
    factory="tf_ship.backends.mlflow:MlflowBackend",
    extra="mlflow",
    place_example=_place_example,
    options=(
        BackendOption(
            "--mlflow-tracking-uri",
            "tracking_uri",
            "MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].",
            metavar="URI",
        ),
        BackendOption(
            "--mlflow-experiment",
            "experiment",
            "MLflow experiment [default: torchfort].",
            metavar="NAME",
        ),
        BackendOption(
            "--mlflow-run-id",
            "run_id",
            "Resume the MLflow run with this id.",
            metavar="ID",
            names_one_run=True,
        ),
    ),
)
