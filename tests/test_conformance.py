"""The conformance kit: every built-in backend and the example plugin pass it, broken ones fail.

Each backend is read back from its tracker's own store (its file, TensorBoard's reader, ...),
so that "stored once" is what the tracker holds, not what the backend says.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tf_ship.backends.jsonl import JsonlBackend
from tf_ship.backends.null import NullBackend
from tf_ship.contract import FileIdentity, MetricEvent, ModelConfig, RunInfo, RunStatus
from tf_ship.testing import ConformanceError, StoredEvent, check_backend

ROOT = Path(__file__).resolve().parent.parent
METRICS = {"loss", "lr"}


# -- the built-in backends --------------------------------------------------------------------


def test_jsonl_passes_as_at_least_once(tmp_path: Path) -> None:
    """docs/delivery.md: jsonl is at-least-once (a re-sent batch is written again)."""
    out = tmp_path / "out.jsonl"

    def read_back() -> list[StoredEvent]:
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        return [(r["model"], r["metric"], r["step"], r["value"]) for r in rows if "metric" in r]

    check_backend(
        lambda: JsonlBackend(out), read_back=read_back, at_least_once=True, workdir=tmp_path / "l"
    )


def test_null_passes(tmp_path: Path) -> None:
    """It stores nothing: only the calls are checked."""
    check_backend(NullBackend, workdir=tmp_path)


def test_tensorboard_passes(tmp_path: Path) -> None:
    """Read back with TensorBoard's own EventAccumulator, every run folder."""
    pytest.importorskip("tensorboardX")
    from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415

    from tf_ship.backends.tensorboard import TensorBoardBackend  # noqa: PLC0415

    out = tmp_path / "runs"

    def read_back() -> list[StoredEvent]:
        held = []
        for run_dir in sorted({p.parent for p in out.rglob("events.out.tfevents.*")}):
            acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags()["scalars"]:
                if tag in METRICS:
                    held += [("conformance", tag, e.step, e.value) for e in acc.Scalars(tag)]
        return held

    check_backend(lambda: TensorBoardBackend(out), read_back=read_back, workdir=tmp_path / "log")


# -- the example plugin -----------------------------------------------------------------------


@pytest.fixture
def csv_backend() -> Iterator[Any]:
    """The example plugin's class, imported from its source folder."""
    sys.path.insert(0, str(ROOT / "examples" / "tf-ship-csv"))
    try:
        from tf_ship_csv import CsvBackend  # noqa: PLC0415

        yield CsvBackend
    finally:
        sys.path.remove(str(ROOT / "examples" / "tf-ship-csv"))
        sys.modules.pop("tf_ship_csv", None)


def csv_rows(path: Path) -> list[StoredEvent]:
    """The rows of the CSV file, header checked."""
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream)
        assert next(reader) == ["model", "metric", "step", "value"]
        return [(m, k, int(s), float(v)) for m, k, s, v in reader]


def failing_fsync() -> Any:
    """A context in which fsync fails, as on a broken disk."""
    return mock.patch("os.fsync", side_effect=OSError("fsync failed on purpose"))


def test_the_csv_example_passes_with_a_real_failed_fsync(tmp_path: Path, csv_backend: Any) -> None:
    """A failed fsync no longer doubles the rows of the batch sent again."""
    out = tmp_path / "metrics.csv"
    check_backend(
        lambda: csv_backend(str(out)),
        read_back=lambda: csv_rows(out),
        break_flush=failing_fsync,
        workdir=tmp_path / "log",
    )


def test_the_csv_example_passes(tmp_path: Path, csv_backend: Any) -> None:
    """A failed flush that stored nothing: the re-sent batch is written once."""
    out = tmp_path / "metrics.csv"
    check_backend(lambda: csv_backend(str(out)), read_back=lambda: csv_rows(out), workdir=tmp_path)


# -- broken backends fail with a message that names what they broke ---------------------------


class MemoryBackend:
    """Keeps events in a list shared by all objects (the "tracker"); recognises a re-send."""

    def __init__(self, store: list[StoredEvent]) -> None:
        self.store = store
        self.unflushed: set[tuple[FileIdentity | None, int]] = set()
        self.run_id = ""
        self.closed = False

    def open(self, run: RunInfo) -> None:
        """Reset; reopen the run named by the state."""
        self.unflushed = set()
        self.closed = False
        self.run_id = str(run.state.get("run_id") or f"run-{run.segment}")

    def log_config(self, config: ModelConfig) -> None:
        """Configs are not kept."""

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Store the events not handed over since the last flush."""
        new = [e for e in batch if (e.file, e.offset) not in self.unflushed]
        self.store.extend((e.model, e.metric, e.step, e.value) for e in new)
        self.unflushed.update((e.file, e.offset) for e in new)

    def flush(self) -> None:
        """Everything is stored already."""
        self.unflushed.clear()

    def close(self, status: RunStatus) -> None:  # noqa: ARG002 - no status to keep
        """Mark closed."""
        self.closed = True

    def resume_state(self) -> dict[str, Any]:
        """The run to reopen."""
        return {"run_id": self.run_id}


class DoublingBackend(MemoryBackend):
    """Stores a re-sent batch again."""

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Store every event handed over."""
        self.store.extend((e.model, e.metric, e.step, e.value) for e in batch)


class CloseTwiceBackend(MemoryBackend):
    """Raises on a second close."""

    def close(self, status: RunStatus) -> None:
        """Close once; raise the second time."""
        if self.closed:
            msg = "already closed"
            raise RuntimeError(msg)
        super().close(status)


class SetStateBackend(MemoryBackend):
    """Returns a set in its resume state."""

    def resume_state(self) -> dict[str, Any]:
        """Not JSON: a set."""
        return {"run_id": self.run_id, "seen": {1, 2}}


def test_a_correct_memory_backend_passes(tmp_path: Path) -> None:
    """The broken ones below differ from it in one method each."""
    store: list[StoredEvent] = []
    check_backend(lambda: MemoryBackend(store), read_back=lambda: store, workdir=tmp_path)


def test_a_backend_that_doubles_a_re_sent_batch_fails(tmp_path: Path) -> None:
    """The message counts the doubled events and names one."""
    store: list[StoredEvent] = []
    with pytest.raises(ConformanceError) as caught:
        check_backend(lambda: DoublingBackend(store), read_back=lambda: store, workdir=tmp_path)
    assert str(caught.value).startswith(
        "after a failed flush the same batch was sent again and 4 events were stored twice "
        "(such as conformance/loss = 1.75 at step 4): a backend must recognise a re-sent event"
    )


def test_a_doubling_backend_passes_when_declared_at_least_once(tmp_path: Path) -> None:
    """at_least_once=True allows the doubling."""
    store: list[StoredEvent] = []
    check_backend(
        lambda: DoublingBackend(store),
        read_back=lambda: store,
        at_least_once=True,
        workdir=tmp_path,
    )


def test_a_backend_whose_second_close_raises_fails(tmp_path: Path) -> None:
    """The message names the second close."""
    store: list[StoredEvent] = []
    with pytest.raises(ConformanceError) as caught:
        check_backend(lambda: CloseTwiceBackend(store), read_back=lambda: store, workdir=tmp_path)
    assert str(caught.value) == (
        "close() called a second time raised RuntimeError: already closed "
        "(a second close must do nothing)"
    )


def test_a_backend_whose_resume_state_is_not_json_fails(tmp_path: Path) -> None:
    """The message names JSON and the state file."""
    store: list[StoredEvent] = []
    with pytest.raises(ConformanceError) as caught:
        check_backend(lambda: SetStateBackend(store), read_back=lambda: store, workdir=tmp_path)
    assert str(caught.value) == (
        "resume_state() returned something JSON cannot hold (Object of type set is not JSON "
        "serializable): the engine saves it in the state file as JSON"
    )


def test_an_object_without_the_five_methods_fails(tmp_path: Path) -> None:
    """The message names the missing methods."""
    with pytest.raises(ConformanceError) as caught:
        check_backend(object, workdir=tmp_path)  # type: ignore[arg-type,return-value]
    assert str(caught.value) == (
        "object has no open, log_config, log_metrics, flush, close: a backend needs the five "
        "methods of tf_ship.Backend (open, log_config, log_metrics, flush, close)"
    )
