"""The TensorBoard backend (`tf_ship.backends.tensorboard`) as the command line sees it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tf_ship.backends.spec import BackendOption, BackendSpec, PerLogOutput


def _place_example(
    options: dict[str, Any], folder: Path, stamp: str, _environ: Mapping[str, str]
) -> None:
    """A run folder per invocation under ``tensorboard/``, unless --tensorboard-dir is given."""
    if not options.get("directory"):
        options["directory"] = str(folder / "tensorboard" / stamp)


SPEC = BackendSpec(
    name="tensorboard",
    factory="tf_ship.backends.tensorboard:TensorBoardBackend",
    extra="tensorboard",
    place_example=_place_example,
    options=(
        BackendOption(
            "--tensorboard-dir",
            "directory",
            "TensorBoard log directory [default: ./runs/<run name or timestamp>]; one "
            "subdirectory per model.",
            metavar="DIR",
            per_log=PerLogOutput(),
        ),
    ),
)
