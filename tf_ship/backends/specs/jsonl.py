"""The jsonl backend (`tf_ship.backends.jsonl`) as the command line sees it."""

from __future__ import annotations

from tf_ship.backends.spec import BackendOption, BackendSpec, PerLogOutput

SPEC = BackendSpec(
    name="jsonl",
    factory="tf_ship.backends.jsonl:JsonlBackend",
    options=(
        BackendOption(
            "--jsonl-path",
            "path",
            "File the jsonl backend appends to (default: standard output).",
            metavar="PATH",
            per_log=PerLogOutput(suffix=".jsonl", required=True, unset=("-",)),
        ),
    ),
)
