"""The conformance kit over the wandb backend, offline, read back from wandb's transaction logs.

Every session of every run the kit starts (the first run, the restart's run, the resumed
session) leaves a transaction log under the test's wandb directory; the events are what their
history rows hold, so that "stored once" is what wandb wrote, not what the backend says.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from wandb_helpers import PROJECT, offline_wandb, settle, transaction_logs

from tf_ship.backends.wandb import WandbBackend
from tf_ship.backends.wandb.transaction_log import TransactionLogTail, history_rows
from tf_ship.testing import StoredEvent, check_backend

pytest.importorskip("wandb")

X_AXIS = "/step"


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An offline wandb whose runs go to a directory of this test; its service ends after it."""
    yield offline_wandb(monkeypatch, tmp_path)
    settle()


def stored_events(runs: Path) -> list[StoredEvent]:
    """Every event the history rows of every run and session under `runs` hold.

    A row holds ``<model>/<metric>`` values and each model's x-axis ``<model>/step``. Logs of
    live runs are read as far as they are whole (wandb-core is still writing them). Each event
    carries its run id, so that the kit checks that a resumed session continues its run.
    """
    held: list[StoredEvent] = []
    for path in transaction_logs(runs):
        for row in history_rows(path, strict=False):
            models = sorted(
                (key.removesuffix(X_AXIS) for key in row if key.endswith(X_AXIS)),
                key=len,
                reverse=True,
            )
            for key, value in row.items():
                if key.endswith(X_AXIS) or key.startswith("_"):
                    continue
                model = next(m for m in models if key.startswith(f"{m}/"))
                step = row[model + X_AXIS]
                run = path.stem.removeprefix("run-")  # each session of a run: run-<id>.wandb
                held.append((model, key.removeprefix(f"{model}/"), step, value, run))
    return held


def unreadable_transaction_log() -> mock._patch[mock.MagicMock]:
    """A context in which reading the transaction log fails: `flush` fails after the hand-over."""
    error = OSError("the transaction log cannot be read, on purpose")
    return mock.patch.object(TransactionLogTail, "new_history_count", side_effect=error)


def test_wandb_passes(runs: Path, tmp_path: Path) -> None:
    """Every flushed event once in wandb's logs, across a restart's run and a resumed session."""
    check_backend(
        lambda: WandbBackend(directory=str(runs), project=PROJECT),
        read_back=lambda: stored_events(runs),
        workdir=tmp_path / "log",
    )


def test_wandb_passes_with_a_real_failed_flush(runs: Path, tmp_path: Path) -> None:
    """A flush that failed after wandb took the rows: the batch sent again is not logged twice."""
    check_backend(
        lambda: WandbBackend(directory=str(runs), project=PROJECT),
        read_back=lambda: stored_events(runs),
        break_flush=unreadable_transaction_log,
        workdir=tmp_path / "log",
    )
