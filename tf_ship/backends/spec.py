"""Command-line options of the built-in backends, declared as data.

The command line turns each entry into a click option and hands the values given to the backend
it belongs to, as keyword arguments. Declared here (not in the backend modules) so that building
the command line imports no tracker SDK.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs


@attrs.frozen
class BackendOption:
    """One command-line option that belongs to one backend."""

    flag: str
    """The long flag, for example ``--jsonl-path``."""
    keyword: str
    """The keyword argument of the backend's constructor that receives the value."""
    help: str
    multiple: bool = False
    aliases: tuple[str, ...] = ()
    """Further spellings, for example the flags of the tool tf-ship replaces."""
    metavar: str = "TEXT"


BACKEND_OPTIONS: Mapping[str, Sequence[BackendOption]] = {
    "jsonl": (
        BackendOption(
            "--jsonl-path",
            "path",
            "File the jsonl backend appends to (default: standard output).",
            metavar="PATH",
        ),
    ),
    "wandb": (
        BackendOption(
            "--wandb-project",
            "project",
            "wandb project [default: $WANDB_PROJECT, else torchfort].",
            aliases=("--wandb_project",),
        ),
        BackendOption(
            "--wandb-entity", "entity", "wandb entity (user or team).", aliases=("--wandb_entity",)
        ),
        BackendOption("--wandb-group", "group", "wandb run group.", aliases=("--wandb_group",)),
        BackendOption(
            "--wandb-dir",
            "directory",
            "Directory for wandb's files (offline runs land in DIR/wandb).",
            aliases=("--wandb_dir",),
            metavar="DIR",
        ),
        BackendOption(
            "--wandb-mode",
            "mode",
            "online or offline [default: $WANDB_MODE, else online].",
            metavar="MODE",
        ),
        BackendOption(
            "--wandb-tags",
            "tags",
            "A tag for the wandb run. Repeatable.",
            multiple=True,
            metavar="TAG",
        ),
        BackendOption("--wandb-id", "run_id", "Resume the wandb run with this id.", metavar="ID"),
        BackendOption("--wandb-job-type", "job_type", "wandb job type [default: train]."),
    ),
    "mlflow": (
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
            "--mlflow-run-id", "run_id", "Resume the MLflow run with this id.", metavar="ID"
        ),
    ),
    "tensorboard": (
        BackendOption(
            "--tensorboard-dir",
            "directory",
            "TensorBoard log directory [default: ./runs/<run name or timestamp>]; one "
            "subdirectory per model.",
            metavar="DIR",
        ),
    ),
    "trackio": (
        BackendOption(
            "--trackio-project", "project", "trackio project [default: torchfort].", metavar="NAME"
        ),
        BackendOption(
            "--trackio-dir",
            "directory",
            "trackio's store [default: $TRACKIO_DIR, else $HF_HOME/trackio].",
            metavar="DIR",
        ),
        BackendOption("--trackio-group", "group", "trackio run group.", metavar="GROUP"),
    ),
    "swanlab": (
        BackendOption(
            "--swanlab-project", "project", "SwanLab project [default: torchfort].", metavar="NAME"
        ),
        BackendOption(
            "--swanlab-mode",
            "mode",
            "online, offline or local [default: $SWANLAB_MODE, else online].",
            metavar="MODE",
        ),
        BackendOption(
            "--swanlab-logdir",
            "logdir",
            "Directory for SwanLab's run folders [default: $SWANLAB_LOGDIR, else ./swanlog].",
            metavar="DIR",
        ),
        BackendOption("--swanlab-group", "group", "SwanLab run group.", metavar="GROUP"),
        BackendOption(
            "--swanlab-workspace", "workspace", "SwanLab workspace (online).", metavar="NAME"
        ),
    ),
}
