"""The conformance kit: drive a backend through the whole contract and say what it broke.

`check_backend(factory)` plays the engine's part of `tf_ship.contract` against a backend built by
``factory()``, in the order a real shipping does, and raises `ConformanceError` at the first
obligation the backend broke, in plain words. Given `read_back` (what the tracker holds, read
from its own store), it also checks that every flushed event arrived, and arrived once.
docs/writing-a-backend.md explains how to use it.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from tf_ship.contract import (
    Backend,
    FileIdentity,
    MetricEvent,
    ModelConfig,
    PreferredBatchSize,
    Resumable,
    RunInfo,
    RunStatus,
)
from tf_ship.errors import TfShipError

__all__ = ["ConformanceError", "StoredEvent", "check_backend"]

StoredEvent = tuple[str, str, int, float]
"""An event as a tracker holds it: (model, metric, step, value)."""

MODEL = "conformance"
METRICS = ("loss", "lr")


class ConformanceError(AssertionError, TfShipError):
    """A backend broke an obligation of the contract; the message says which, in plain words."""


def check_backend(
    factory: Callable[[], Backend],
    *,
    read_back: Callable[[], Iterable[StoredEvent]] | None = None,
    at_least_once: bool = False,
    break_flush: Callable[[], AbstractContextManager[object]] | None = None,
    workdir: Path | None = None,
) -> None:
    """Drive ``factory()`` through the contract; raise `ConformanceError` if it broke it.

    `read_back` returns every event the tracker holds (in any order), read from its own store;
    without it, only the calls are checked, not what arrived. `at_least_once` allows a re-sent
    batch to be stored twice (the backend then documents itself as at-least-once).
    `break_flush` gives a context in which the backend's `flush` raises (say, a patched
    ``os.fsync``), to fail a flush for real; without it, the failed flush is one that raised
    before it did anything. `workdir` holds the log the events come from (a temporary folder
    by default). `factory` is called twice: the second object resumes the first one's run.
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="tf-ship-conformance-") as folder:
            _Check(factory, read_back, at_least_once, break_flush, Path(folder)).run()
    else:
        _Check(factory, read_back, at_least_once, break_flush, workdir).run()


class _Check:
    """One pass through the contract; each step names the obligation it checks."""

    def __init__(
        self,
        factory: Callable[[], Backend],
        read_back: Callable[[], Iterable[StoredEvent]] | None,
        at_least_once: bool,  # noqa: FBT001 - passed on from check_backend
        break_flush: Callable[[], AbstractContextManager[object]] | None,
        workdir: Path,
    ) -> None:
        self.factory = factory
        self.read_back = read_back
        self.at_least_once = at_least_once
        self.break_flush = break_flush
        self.logdir = workdir
        self.batches = _write_log(workdir, [(1, 4), (4, 6), (1, 3), (3, 5)])
        self.expected: Counter[StoredEvent] = Counter()

    def run(self) -> None:
        first, resent, restarted, resumed = self.batches
        backend = self._build()
        with _closed_on_failure(backend):
            self._call("open(run)", lambda: backend.open(self._run()))
            self._call("log_config(config)", lambda: backend.log_config(_config(0.5)))
            self._send(backend, first)
            self._send_again_after_a_failed_flush(backend, resent)
            first_state = self._resume_state(backend)
            self._call("close(FINISHED)", lambda: backend.close(RunStatus.FINISHED))
            self._call(
                "close() called a second time",
                lambda: backend.close(RunStatus.FINISHED),
                rule="a second close must do nothing",
            )
            self._compare("after a failed flush the same batch was sent again and")
            self._restart(backend, restarted, first_state)
            state = self._resume_state(backend)
            self._call("close(FINISHED)", lambda: backend.close(RunStatus.FINISHED))
        self._resume(state, first_state, resumed)

    def _build(self) -> Backend:
        backend = self.factory()
        missing = [name for name in _METHODS if not callable(getattr(backend, name, None))]
        if missing:
            msg = (
                f"{type(backend).__name__} has no {', '.join(missing)}: a backend needs the "
                f"five methods of tf_ship.Backend ({', '.join(_METHODS)})"
            )
            raise ConformanceError(msg)
        if isinstance(backend, PreferredBatchSize):
            size = backend.preferred_batch_size
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                msg = f"preferred_batch_size is {size!r}: it must be a positive int"
                raise ConformanceError(msg)
        return backend

    def _run(self, **changes: Any) -> RunInfo:  # noqa: ANN401 - RunInfo's fields
        return RunInfo(
            logdir=self.logdir,
            log_file=self.logdir / "torchfort.log",
            run_name="conformance",
            **changes,
        )

    def _send(self, backend: Backend, batch: Sequence[MetricEvent]) -> None:
        self._call("log_metrics(batch)", lambda: backend.log_metrics(batch))
        self._call("flush()", backend.flush)
        self.expected.update(_stored(batch))

    def _send_again_after_a_failed_flush(
        self, backend: Backend, batch: Sequence[MetricEvent]
    ) -> None:
        """Hand the batch over, fail its flush, hand it over again and flush: as the engine."""
        self._call("log_metrics(batch)", lambda: backend.log_metrics(batch))
        if self.break_flush is not None:
            try:
                with self.break_flush():
                    backend.flush()
            except Exception:  # noqa: BLE001, S110 - the failure asked for
                pass
            else:
                msg = "break_flush() did not make flush() fail: the kit cannot test a re-send"
                raise ConformanceError(msg)
        self._send(backend, batch)

    def _restart(
        self, backend: Backend, batch: Sequence[MetricEvent], first_state: Mapping[str, Any]
    ) -> None:
        """Open the closed object again for segment 1, as after an application restart."""
        rule = "open must reset the backend and start a new run for the next segment"
        run = self._run(segment=1, first_run=first_state)
        self._call(
            "open(run) on the closed backend (an application restart)",
            _bind(backend.open, run),
            rule=rule,
        )
        self._call(
            "log_config(config) after the restart",
            lambda: backend.log_config(_config(0.25)),
            rule=rule,
        )
        self._call(
            "log_metrics(batch) after the restart", lambda: backend.log_metrics(batch), rule=rule
        )
        self._call("flush() after the restart", backend.flush, rule=rule)
        self.expected.update(_stored(batch))
        self._compare(f"after open() was called again on the closed backend ({rule}),")
        if (
            isinstance(backend, Resumable)
            and first_state
            and _round_trip(backend.resume_state(), "after the restart") == first_state
        ):
            msg = (
                "after open() was called again on the closed backend (an application "
                "restart), resume_state() still names the closed run: " + rule
            )
            raise ConformanceError(msg)

    def _resume(
        self,
        state: Mapping[str, Any],
        first_state: Mapping[str, Any],
        batch: Sequence[MetricEvent],
    ) -> None:
        """A fresh object reopens the run from the saved state, as after a restart of tf-ship."""
        rule = "open(run) must reopen the run named by run.state"
        backend = self._build()
        with _closed_on_failure(backend):
            run = self._run(state=state, segment=1, first_run=first_state)
            self._call(
                "open(run) with the saved resume state, on a fresh object",
                _bind(backend.open, run),
                rule=rule,
            )
            self._send(backend, batch)
            self._resume_state(backend)
            self._call("close(FINISHED)", lambda: backend.close(RunStatus.FINISHED))
        self._compare(f"after a fresh object reopened the run from its resume state ({rule}),")

    def _resume_state(self, backend: Backend) -> Mapping[str, Any]:
        if not isinstance(backend, Resumable):
            return {}
        state = self._call("resume_state()", backend.resume_state)
        return _round_trip(state, "")

    def _compare(self, when: str) -> None:
        """Check that the tracker holds each flushed event once (at least once if allowed)."""
        if self.read_back is None:
            return
        held = Counter(_normal(event) for event in self._call("read_back()", self.read_back))
        missing = self.expected - held
        if missing:
            example = next(iter(missing))
            msg = (
                f"{when} {missing.total()} flushed events are not in the tracker "
                f"(such as {_describe(example)}): flush must return only once everything "
                "handed over is stored"
            )
            raise ConformanceError(msg)
        doubled = held - self.expected
        if doubled and not self.at_least_once:
            example = next(iter(doubled))
            msg = (
                f"{when} {doubled.total()} events were stored twice (such as "
                f"{_describe(example)}): a backend must recognise a re-sent event by its file "
                "and offset, or be declared at-least-once (at_least_once=True)"
            )
            raise ConformanceError(msg)

    def _call(self, what: str, call: Callable[[], Any], *, rule: str = "") -> Any:  # noqa: ANN401
        try:
            return call()
        except ConformanceError:
            raise
        except Exception as error:
            text = f"{what} raised {type(error).__name__}: {error}"
            raise ConformanceError(f"{text} ({rule})" if rule else text) from error


_METHODS = ("open", "log_config", "log_metrics", "flush", "close")


def _bind(method: Callable[[RunInfo], None], run: RunInfo) -> Callable[[], None]:
    return lambda: method(run)


def _round_trip(state: Mapping[str, Any], when: str) -> dict[str, Any]:
    """The state as the engine hands it back: through the JSON of the state file."""
    try:
        return dict(json.loads(json.dumps(dict(state), allow_nan=False)))
    except (TypeError, ValueError) as error:
        msg = (
            f"resume_state() {when + ' ' if when else ''}returned something JSON cannot hold "
            f"({error}): the engine saves it in the state file as JSON"
        )
        raise ConformanceError(msg) from None


@contextlib.contextmanager
def _closed_on_failure(backend: Backend) -> Iterator[None]:
    """Close a backend the check gave up on, so that it releases what it holds."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            backend.close(RunStatus.FAILED)
        raise


def _write_log(logdir: Path, segments: Sequence[tuple[int, int]]) -> list[list[MetricEvent]]:
    """Write a TorchFort log with one batch per (first step, stop step); return the batches."""
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / "torchfort.log"
    lines: list[bytes] = []
    batches: list[list[tuple[str, int, float, int]]] = []
    offset = 0
    count = 0
    for start, stop in segments:
        batch = []
        for step in range(start, stop):
            for metric in METRICS:
                count += 1
                value = count / 4  # exact in float32 too, and unique: each event is its own
                line = f"TORCHFORT::WANDB: model: {MODEL}, step: {step}, {metric}: {value!r}\n"
                batch.append((metric, step, value, offset))
                lines.append(line.encode())
                offset += len(lines[-1])
        batches.append(batch)
    path.write_bytes(b"".join(lines))
    stat = path.stat()
    file = FileIdentity(stat.st_dev, stat.st_ino)
    return [
        [MetricEvent(MODEL, metric, step, value, file, at) for metric, step, value, at in batch]
        for batch in batches
    ]


def _config(rate: float) -> ModelConfig:
    return ModelConfig(MODEL, {"optimizer": {"type": "adam", "learning_rate": rate}})


def _stored(batch: Iterable[MetricEvent]) -> Iterator[StoredEvent]:
    return ((e.model, e.metric, e.step, e.value) for e in batch)


def _normal(event: StoredEvent) -> StoredEvent:
    model, metric, step, value = event
    return (str(model), str(metric), int(step), float(value))


def _describe(event: StoredEvent) -> str:
    model, metric, step, value = event
    return f"{model}/{metric} = {value!r} at step {step}"
