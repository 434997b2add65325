"""Where ``tf-ship --example`` puts what the trackers write: one folder, ``./tf-ship-example``.

A first try should leave the current folder as it was, apart from one folder that is plainly the
example's and that can be removed to start over. Only outputs the user did not place (with a
flag, ``--backend-opt`` or the tracker's own environment variable) go there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

EXAMPLE_OUTPUT = Path("tf-ship-example")
"""The example's folder, in the current directory."""


def example_backend_options(
    backends: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
    environ: Mapping[str, str],
    *,
    folder: Path = EXAMPLE_OUTPUT,
    now: datetime | None = None,
) -> dict[str, dict[str, Any]]:
    """The backends' options with every output the user left to its default placed in `folder`.

    MLflow gets a SQLite store and an artifact folder there (unless a tracking URI was given or
    ``MLFLOW_TRACKING_URI`` is set), TensorBoard a run folder per invocation under
    ``tensorboard/``, wandb its directory (unless ``WANDB_DIR`` is set).
    """
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H-%M-%SZ")
    placed = {name: dict(options.get(name, {})) for name in backends}
    mlflow = placed.get("mlflow")
    if (
        mlflow is not None
        and not mlflow.get("tracking_uri")
        and not environ.get("MLFLOW_TRACKING_URI")
    ):
        mlflow["tracking_uri"] = f"sqlite:///{(folder / 'mlflow.db').as_posix()}"
        mlflow.setdefault("artifact_location", (folder / "mlartifacts").absolute().as_uri())
    tensorboard = placed.get("tensorboard")
    if tensorboard is not None and not tensorboard.get("directory"):
        tensorboard["directory"] = str(folder / "tensorboard" / stamp)
    wandb = placed.get("wandb")
    if wandb is not None and not wandb.get("directory") and not environ.get("WANDB_DIR"):
        wandb["directory"] = str(folder)
    return placed
