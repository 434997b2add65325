"""The conformance kit: every built-in backend and the example plugin pass it, broken ones fail.

Each backend is read back from its tracker's own store (its file, TensorBoard's reader, ...),
so that "stored once" is what the tracker holds, not what the backend says.
"""

from __future__ import annotations

import csv
import json
import math
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
METRICS = {"loss", "lr", "loss: train", "Verlust ä 損失"}  # the kit's metric names


# -- the built-in backends --------------------------------------------------------------------


def test_jsonl_passes_as_at_least_once(tmp_path: Path) -> None:
    """docs/delivery.md: jsonl is at-least-once (a re-sent batch is written again)."""
    out = tmp_path / "out.jsonl"

    def read_back() -> list[StoredEvent]:
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        # docs/backends.md: non-finite values are the strings "nan", "inf", "-inf"
        return [
            (r["model"], r["metric"], r["step"], float(r["value"])) for r in rows if "metric" in r
        ]

    check_backend(
        lambda: JsonlBackend(out), read_back=read_back, at_least_once=True, workdir=tmp_path / "l"
    )


def test_null_passes(tmp_path: Path) -> None:
    """It stores nothing: only the calls are checked."""
    check_backend(NullBackend, workdir=tmp_path)


def test_tensorboard_passes(tmp_path: Path) -> None:
    """Read back with TensorBoard's own EventAccumulator, every run folder (the run's identity)."""
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
                    held += [
                        ("conformance", tag, e.step, e.value, run_dir) for e in acc.Scalars(tag)
                    ]
        return held

    check_backend(
        lambda: TensorBoardBackend(out),
        read_back=read_back,
        workdir=tmp_path / "log",
        values="float32",  # docs/backends.md: TensorBoard stores float32
    )


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
        replay_twice=True,  # no resume state: a crash's replay is appended again
        workdir=tmp_path / "log",
    )


def test_the_csv_example_passes(tmp_path: Path, csv_backend: Any) -> None:
    """A failed flush that stored nothing: the re-sent batch is written once."""
    out = tmp_path / "metrics.csv"
    check_backend(
        lambda: csv_backend(str(out)),
        read_back=lambda: csv_rows(out),
        replay_twice=True,  # no resume state: a crash's replay is appended again
        workdir=tmp_path,
    )


# -- broken backends fail with a message that names what they broke ---------------------------


class Tracker(list[StoredEvent]):
    """The memory backends' "tracker": stored events, and which (run, file, offset) it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.places: set[tuple[str, FileIdentity | None, int]] = set()


class MemoryBackend:
    """Keeps events in a `Tracker` shared by all objects; stores each event once per run.

    The tracker knows which (run, file, offset) it holds, so a re-sent or replayed event is
    skipped; each stored event carries its run id (the optional 5th field of `StoredEvent`).
    """

    def __init__(self, store: Tracker) -> None:
        self.store = store
        self.run_id = ""
        self.closed = False

    def open(self, run: RunInfo) -> None:
        """Reopen the run named by the state, or start a new one."""
        self.closed = False
        self.run_id = str(run.state.get("run_id") or self.new_run_id())

    def new_run_id(self) -> str:
        """A run id the tracker has not used."""
        return f"run-{len({run for run, _, _ in self.store.places})}"

    def log_config(self, config: ModelConfig) -> None:
        """Configs are not kept."""

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Store the events the run does not hold yet."""
        for e in batch:
            if (self.run_id, e.file, e.offset) not in self.store.places:
                self.keep(e)

    def keep(self, e: MetricEvent) -> None:
        """Store one event in the run."""
        self.store.places.add((self.run_id, e.file, e.offset))
        self.store.append((e.model, e.metric, e.step, e.value, self.run_id))

    def flush(self) -> None:
        """Everything is stored already."""

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
        for e in batch:
            self.keep(e)


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
    store = Tracker()
    check_backend(lambda: MemoryBackend(store), read_back=lambda: store, workdir=tmp_path)


def test_a_backend_that_doubles_a_re_sent_batch_fails(tmp_path: Path) -> None:
    """The message counts the doubled events and names one."""
    store = Tracker()
    with pytest.raises(ConformanceError) as caught:
        check_backend(lambda: DoublingBackend(store), read_back=lambda: store, workdir=tmp_path)
    assert str(caught.value).startswith(
        "after a failed flush the same batch was sent again and 4 events were stored twice "
        "(such as conformance/loss = 1.75 at step 4): a backend must recognise a re-sent event"
    )


def test_a_doubling_backend_passes_when_declared_at_least_once(tmp_path: Path) -> None:
    """at_least_once=True allows the doubling."""
    store = Tracker()
    check_backend(
        lambda: DoublingBackend(store),
        read_back=lambda: store,
        at_least_once=True,
        workdir=tmp_path,
    )


def test_a_backend_whose_second_close_raises_fails(tmp_path: Path) -> None:
    """The message names the second close."""
    store = Tracker()
    with pytest.raises(ConformanceError) as caught:
        check_backend(lambda: CloseTwiceBackend(store), read_back=lambda: store, workdir=tmp_path)
    assert str(caught.value) == (
        "close() called a second time raised RuntimeError: already closed "
        "(a second close must do nothing)"
    )


def test_a_backend_whose_resume_state_is_not_json_fails(tmp_path: Path) -> None:
    """The message names JSON and the state file."""
    store = Tracker()
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


class NanAsNoneBackend(MemoryBackend):
    """Stores NaN as None, as a SQL store that takes NaN for NULL."""

    def keep(self, e: MetricEvent) -> None:
        """Store one event, NaN as None."""
        super().keep(e)
        model, metric, step, value, run = self.store[-1]
        if math.isnan(value):
            self.store[-1] = (model, metric, step, None, run)  # type: ignore[assignment]


class NegativeZeroAsZeroBackend(MemoryBackend):
    """Stores -0.0 as 0.0."""

    def keep(self, e: MetricEvent) -> None:
        """Store one event, -0.0 as 0.0."""
        super().keep(e)
        model, metric, step, value, run = self.store[-1]
        self.store[-1] = (model, metric, step, value + 0.0, run)


class IgnoresStateBackend(MemoryBackend):
    """Starts a new run at every open, whatever `run.state` names."""

    def open(self, run: RunInfo) -> None:  # noqa: ARG002 - the state it ignores
        """Always a new run."""
        self.closed = False
        self.run_id = self.new_run_id()


class UnflushedBackend(MemoryBackend):
    """Holds events until close: its flush does not persist them."""

    def __init__(self, store: Tracker) -> None:
        super().__init__(store)
        self.pending: list[MetricEvent] = []

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Keep the events in memory."""
        self.pending += batch

    def close(self, status: RunStatus) -> None:
        """Store what was held, once."""
        pending, self.pending = self.pending, []
        super().log_metrics(pending)
        super().close(status)


def test_a_backend_that_stores_nan_as_none_fails(tmp_path: Path) -> None:
    """The message names the event and what came back."""
    store = Tracker()
    with pytest.raises(ConformanceError) as caught:
        check_backend(lambda: NanAsNoneBackend(store), read_back=lambda: store, workdir=tmp_path)
    assert str(caught.value) == (
        "after flush() returned, 1 events handed over are not in the tracker (such as "
        "conformance/loss = nan at step -9223372036854775808; the tracker holds None there): "
        "flush must return only once everything handed over is stored, value for value"
    )


def test_a_backend_that_stores_negative_zero_as_zero_fails(tmp_path: Path) -> None:
    """-0.0 is compared by its sign."""
    store = Tracker()
    with pytest.raises(ConformanceError) as caught:
        check_backend(
            lambda: NegativeZeroAsZeroBackend(store), read_back=lambda: store, workdir=tmp_path
        )
    assert "(such as conformance/loss = -0.0 at step 0; the tracker holds 0.0 there)" in str(
        caught.value
    )


def test_a_backend_that_ignores_the_resume_state_fails(tmp_path: Path) -> None:
    """A fresh object must continue the run its state names: the replay is then recognised."""
    store = Tracker()
    with pytest.raises(ConformanceError) as caught:
        check_backend(lambda: IgnoresStateBackend(store), read_back=lambda: store, workdir=tmp_path)
    assert str(caught.value) == (
        "after a fresh object reopened the run from its resume state and was handed the 2 "
        "events flushed after that state was saved (a replay after a crash), 2 events were "
        "stored twice (such as conformance/loss = 3.75 at step 3): a backend must recognise a "
        "replayed event (by what its tracker holds, or by its resume state), or be declared "
        "at-least-once after a crash (replay_twice=True)"
    )


def test_a_backend_that_ignores_the_resume_state_fails_as_at_least_once_too(
    tmp_path: Path,
) -> None:
    """With run identities in the read-back, the kit sees the new run itself."""
    store = Tracker()
    with pytest.raises(ConformanceError) as caught:
        check_backend(
            lambda: IgnoresStateBackend(store),
            read_back=lambda: store,
            at_least_once=True,
            workdir=tmp_path,
        )
    assert str(caught.value) == (
        "after a fresh object reopened the run from its resume state, the events of that run "
        "are in 2 tracker runs (run-1, run-2): open(run) must reopen the run named by run.state"
    )


def test_a_backend_whose_flush_does_not_persist_fails_at_the_first_flush(tmp_path: Path) -> None:
    """Reported as a flush that did not persist, not later under open()."""
    store = Tracker()
    with pytest.raises(ConformanceError) as caught:
        check_backend(lambda: UnflushedBackend(store), read_back=lambda: store, workdir=tmp_path)
    assert str(caught.value).startswith(
        "after flush() returned, 13 events handed over are not in the tracker (such as "
        "conformance/loss = 0.25 at step 1; the tracker holds nothing at that step of that name)"
    )


class ReplaySafeMemoryBackend(MemoryBackend):
    """Looks up what the tracker holds before it stores: replay from any saved state is safe."""

    replay_safe = True


class WriteAheadBackend(MemoryBackend):
    """Does not look at what the tracker holds: recognises a replay by the batch it announced.

    `prepare` puts the batch's offsets in the resume state (and asks the engine to save it);
    a fresh object skips them. A batch re-sent to the same object is skipped until its flush.
    """

    def __init__(self, store: Tracker) -> None:
        super().__init__(store)
        self.announced: list[int] = []
        self.replayed: set[int] = set()
        self.unflushed: set[int] = set()

    def open(self, run: RunInfo) -> None:
        """Reopen the run; the batch announced in its state is already held."""
        super().open(run)
        self.announced = []
        self.replayed = set(run.state.get("announced", []))
        self.unflushed = set()

    def prepare(self, batch: Sequence[MetricEvent]) -> bool:
        """Announce the batch; True: save the state before it is sent."""
        self.announced = [e.offset for e in batch]
        return True

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Store the events neither replayed nor handed over since the last flush."""
        for e in batch:
            if e.offset not in self.replayed | self.unflushed:
                self.unflushed.add(e.offset)
                self.keep(e)

    def flush(self) -> None:
        """Everything is stored already."""
        self.unflushed.clear()

    def resume_state(self) -> dict[str, Any]:
        """The run to reopen and the batch announced last."""
        return {"run_id": self.run_id, "announced": self.announced}


class SilentWriteAheadBackend(WriteAheadBackend):
    """Announces a batch but never asks the engine to save the state first."""

    def prepare(self, batch: Sequence[MetricEvent]) -> bool:
        """Announce, without a save."""
        super().prepare(batch)
        return False


class LookbackBackend(MemoryBackend):
    """Looks up what the run holds only from the last flushed batch of its state on.

    Exactly-once when replayed from the state saved after the last flush but one (the engine's
    default), not from any earlier state: it must not claim `ReplaySafe`.
    """

    def __init__(self, store: Tracker) -> None:
        super().__init__(store)
        self.since: int | None = None
        self.batch_start: int | None = None
        self.mine: set[int] = set()

    def open(self, run: RunInfo) -> None:
        """Reopen the run; look back from the state's last flushed batch."""
        super().open(run)
        self.since = run.state.get("since")
        self.mine = set()

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Store what this object did not store and the look-back does not find."""
        self.batch_start = batch[0].offset if batch else self.batch_start
        for e in batch:
            looked_up = self.since is not None and e.offset >= self.since
            if e.offset in self.mine or (
                looked_up and (self.run_id, e.file, e.offset) in self.store.places
            ):
                continue
            self.mine.add(e.offset)
            self.keep(e)

    def flush(self) -> None:
        """The look-back starts at the batch just flushed."""
        self.since = self.batch_start

    def resume_state(self) -> dict[str, Any]:
        """The run to reopen and where to look back from."""
        return {"run_id": self.run_id, "since": self.since}


class FalselyReplaySafeBackend(LookbackBackend):
    """Claims `ReplaySafe`, which its look-back is not."""

    replay_safe = True


def test_a_replay_safe_backend_passes(tmp_path: Path) -> None:
    """Replayed from the state saved before the restart's first batch: nothing stored twice."""
    store = Tracker()
    check_backend(lambda: ReplaySafeMemoryBackend(store), read_back=lambda: store, workdir=tmp_path)


def test_a_write_ahead_backend_passes(tmp_path: Path) -> None:
    """The kit calls prepare before each batch and saves the state when it asks."""
    store = Tracker()
    check_backend(lambda: WriteAheadBackend(store), read_back=lambda: store, workdir=tmp_path)


def test_a_write_ahead_backend_that_asks_for_no_save_fails(tmp_path: Path) -> None:
    """Its announcement is lost with the crash: the replay is stored twice."""
    store = Tracker()
    with pytest.raises(ConformanceError) as caught:
        check_backend(
            lambda: SilentWriteAheadBackend(store), read_back=lambda: store, workdir=tmp_path
        )
    assert "(a replay after a crash), 2 events were stored twice" in str(caught.value)


def test_a_backend_safe_for_the_last_window_passes(tmp_path: Path) -> None:
    """Replayed from the state saved after the last flush but one: nothing stored twice."""
    store = Tracker()
    check_backend(lambda: LookbackBackend(store), read_back=lambda: store, workdir=tmp_path)


def test_a_backend_that_claims_replay_safe_falsely_fails(tmp_path: Path) -> None:
    """Replayed from an earlier saved state, it stores the events it did not look up twice."""
    store = Tracker()
    with pytest.raises(ConformanceError) as caught:
        check_backend(
            lambda: FalselyReplaySafeBackend(store), read_back=lambda: store, workdir=tmp_path
        )
    assert "(a replay after a crash), 6 events were stored twice" in str(caught.value)
