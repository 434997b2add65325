"""The trackio backend (`tf_ship.backends.trackio`) as the command line sees it."""

from __future__ import annotations

from tf_ship.backends.spec import BackendOption, BackendSpec

SPEC = BackendSpec(
    name="trackio",
    factory="tf_ship.backends.trackio:TrackioBackend",
    extra="trackio",
    options=(
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
)
