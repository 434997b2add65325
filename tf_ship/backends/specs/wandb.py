"""The wandb backend (`tf_ship.backends.wandb`) as the command line sees it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tf_ship.backends.spec import BackendOption, BackendSpec


def _place_example(
    options: dict[str, Any], folder: Path, _stamp: str, environ: Mapping[str, str]
) -> None:
    """The folder itself for wandb's files, unless --wandb-dir is given or WANDB_DIR set."""
    if not options.get("directory") and not environ.get("WANDB_DIR"):
        options["directory"] = str(folder)


SPEC = BackendSpec(
    name="wandb",
    factory="tf_ship.backends.wandb:WandbBackend",
    extra="wandb",
    place_example=_place_example,
    options=(
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
        BackendOption(
            "--wandb-id",
            "run_id",
            "Resume the wandb run with this id.",
            metavar="ID",
            names_one_run=True,
        ),
        BackendOption("--wandb-job-type", "job_type", "wandb job type [default: train]."),
    ),
)
