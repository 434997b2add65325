"""The trackio backend passes the conformance kit, read back with trackio's own reader.

trackio reads ``$TRACKIO_DIR`` once, when it is imported, and the other trackio tests import it
with their own store; so the check runs in a child process with a store of its own.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import clean_env

from tf_ship.testing import StoredEvent

if importlib.util.find_spec("trackio") is None:  # not imported here: TRACKIO_DIR comes first
    pytest.skip("trackio is not installed", allow_module_level=True)

PROJECT = "conformance"


def held_events(project: str) -> list[StoredEvent]:
    """Every event of every run of the project, with its run id, from trackio's `SQLiteStorage`."""
    from trackio.sqlite_storage import SQLiteStorage  # noqa: PLC0415 - after TRACKIO_DIR is set

    held = []
    for record in SQLiteStorage.get_run_records(project):
        for row in SQLiteStorage.get_logs(project, run_id=record["id"]):
            values = {k: v for k, v in row.items() if k not in {"step", "timestamp"}}
            step = values.pop("conformance/step")
            ((key, value),) = values.items()
            model, metric = key.split("/", 1)
            held.append((model, metric, step, value, record["id"]))
    return held


def check(workdir: str) -> None:
    """The check itself, in the child process."""
    import os  # noqa: PLC0415
    from unittest import mock  # noqa: PLC0415

    from trackio.sqlite_storage import SQLiteStorage  # noqa: PLC0415

    from tf_ship.backends.trackio import TrackioBackend  # noqa: PLC0415
    from tf_ship.testing import check_backend  # noqa: PLC0415

    real = SQLiteStorage.bulk_log
    failed: list[bool] = []

    def commit_then_fail(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)
        failed.append(True)
        msg = "disk I/O error (on purpose)"
        raise OSError(msg)

    def break_flush() -> object:
        """A flush whose transaction committed and then failed: the worst case for a re-send."""
        return mock.patch.object(SQLiteStorage, "bulk_log", commit_then_fail)

    assert os.environ["TRACKIO_DIR"]
    check_backend(
        lambda: TrackioBackend(project=PROJECT),
        read_back=lambda: held_events(PROJECT),
        break_flush=break_flush,
        workdir=Path(workdir),
    )
    assert failed


def test_trackio_passes(tmp_path: Path) -> None:
    """Exactly once: a batch re-sent after a flush that committed and then failed is stored once."""
    code = textwrap.dedent(
        f"""
        import test_trackio_conformance as module
        module.check({str(tmp_path / "log")!r})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent,
        env=clean_env(TRACKIO_DIR=str(tmp_path / "store")),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
