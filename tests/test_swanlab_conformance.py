"""The SwanLab backend, offline, passes the conformance kit, read back from SwanLab's run files.

In one process: SwanLab keeps one active run per process, and `finish()` (the backend's
`close`) clears it, so the kit's reopen after close (an application restart) and its fresh
object (a restart of tf-ship) each start a run of their own here, as they would in the shipper.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tf_ship.backends.swanlab import SwanLabBackend
from tf_ship.backends.swanlab.files import scalars
from tf_ship.testing import StoredEvent, check_backend

pytest.importorskip("swanlab")

MODEL = "conformance"


def held_events(log_dir: Path) -> list[StoredEvent]:
    """Every event of every session under `log_dir`: one row per SwanLab step of a session."""
    rows: dict[tuple[str, int], dict[str, float]] = collections.defaultdict(dict)
    for session in sorted(log_dir.glob("run-*")):
        for key, step, value in scalars(session):
            rows[session.name, step][key] = value
    held = []
    for row in rows.values():
        step = row.pop(f"{MODEL}/step")
        ((key, value),) = row.items()
        model, metric = key.split("/", 1)
        held.append((model, metric, int(step), value))
    return held


def failing_file_flush() -> Any:
    """A context in which SwanLab's run file cannot be flushed, as on a full disk."""
    return mock.patch(
        "swanlab.sdk.internal.core_python.store.DataStoreWriter.ensure_flushed",
        side_effect=OSError("no space left on device (on purpose)"),
    )


def test_swanlab_offline_passes(tmp_path: Path) -> None:
    """Exactly once: a batch re-sent after a flush that failed for real is stored once."""
    log_dir = tmp_path / "swanlog"
    check_backend(
        lambda: SwanLabBackend(mode="offline", logdir=log_dir),
        read_back=lambda: held_events(log_dir),
        break_flush=failing_file_flush,
        workdir=tmp_path / "log",
        steps="float64",  # docs/backends.md: SwanLab stores the TorchFort step as a double
    )
    assert len(list(log_dir.glob("run-*"))) == 3  # the run, its restart's run, a resumed session
