"""The SwanLab backend (`tf_ship.backends.swanlab`) as the command line sees it."""

from __future__ import annotations

from tf_ship.backends.spec import BackendOption, BackendSpec

SPEC = BackendSpec(
    name="swanlab",
    factory="tf_ship.backends.swanlab:SwanLabBackend",
    extra="swanlab",
    options=(
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
)
