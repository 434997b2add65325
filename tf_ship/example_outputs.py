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

from tf_ship.backends.plugin_specs import all_specs

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

    Each backend's spec says how (`BackendSpec.place_example`); for instance MLflow gets a
    SQLite store there unless a tracking URI was given or its own variable sets one.
    """
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H-%M-%SZ")
    placed = {name: dict(options.get(name, {})) for name in backends}
    for spec in all_specs():
        if spec.place_example is not None and spec.name in placed:
            spec.place_example(placed[spec.name], folder, stamp, environ)
    return placed
