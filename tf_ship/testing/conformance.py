"""The conformance kit: drive a backend through the whole contract and say what it broke.

`check_backend(factory)` plays the engine's part of `tf_ship.contract` against a backend built by
``factory()``, in the order a real shipping does, and raises `ConformanceError` at the first
obligation the backend broke, in plain words. Given `read_back` (what the tracker holds, read
from its own store), it checks after every flush that every flushed event arrived, value for
value, and arrived once; and that a resumed object continues its run, replay included.
docs/writing-a-backend.md explains how to use it.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import attrs

from tf_ship.contract import (
    Backend,
    FileIdentity,
    MetricEvent,
    ModelConfig,
    PreferredBatchSize,
    ReplaySafe,
    Resumable,
    RunInfo,
    RunStatus,
    WriteAhead,
)
from tf_ship.errors import TfShipError

__all__ = ["ConformanceError", "StoredEvent", "check_backend"]

StoredEvent = tuple[str, str, int, float] | tuple[str, str, int, float, object]
"""An event as a tracker holds it, as `read_back` returns it: (model, metric, step, value).

An optional 5th field names the tracker run that holds it (a run id, a run folder: anything
that compares equal for the same run). With it the kit also checks that a resumed object
continues the run its state names and that an application restart starts another; plain
4-tuples skip that check.
"""

MODEL = "conformance"
METRICS = ("loss", "lr")


class ConformanceError(AssertionError, TfShipError):
    """A backend broke an obligation of the contract; the message says which, in plain words."""


def check_backend(  # noqa: PLR0913 - one optional setting each
    factory: Callable[[], Backend],
    *,
    read_back: Callable[[], Iterable[StoredEvent]] | None = None,
    at_least_once: bool = False,
    replay_twice: bool = False,
    break_flush: Callable[[], AbstractContextManager[object]] | None = None,
    workdir: Path | None = None,
    values: str | Iterable[str] = "exact",
    steps: str = "exact",
) -> None:
    """Drive ``factory()`` through the contract; raise `ConformanceError` if it broke it.

    `read_back` returns every event the tracker holds (in any order), read from its own store;
    without it, only the calls are checked, not what arrived. `at_least_once` allows a re-sent
    batch to be stored twice (the backend then documents itself as at-least-once);
    `replay_twice` only the events a restarted tf-ship replays after a crash (a backend that
    recognises a re-sent batch but not, without a resume state, what its tracker holds).
    `break_flush` gives a context in which the backend's `flush` raises (say, a patched
    ``os.fsync``), to fail a flush for real; without it, the failed flush is one that raised
    before it did anything. `workdir` holds the log the events come from (a temporary folder
    by default). `factory` is called twice: the second object resumes the run of the first
    one's restart, from the state a crash left, and is handed the events flushed after it.

    Values and steps are compared exactly (NaN as NaN, -0.0 by its sign, steps as ints), unless
    the tracker documents a lossy conversion: ``values="float32"`` (it stores float32),
    ``values="finite"`` (it stores an infinity as the largest double of that sign),
    ``values="unsigned_zero"`` (it stores -0.0 as 0.0), or several of them as a tuple;
    ``steps="float64"`` (it stores steps as doubles).
    """
    conversions = frozenset([values] if isinstance(values, str) else values) - {"exact"}
    if not conversions <= set(VALUES) or steps not in STEPS:
        msg = f"values must be among {VALUES} and steps one of {STEPS}"
        raise ValueError(msg)
    tolerance = _Tolerance(conversions, steps, replay_twice=replay_twice)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="tf-ship-conformance-") as folder:
            _Check(
                factory, read_back, at_least_once, break_flush, Path(folder), tolerance
            ).run_through()
    else:
        _Check(factory, read_back, at_least_once, break_flush, workdir, tolerance).run_through()


class _Check:
    """One pass through the contract; each step names the obligation it checks."""

    def __init__(  # noqa: PLR0913, PLR0917 - passed on from check_backend
        self,
        factory: Callable[[], Backend],
        read_back: Callable[[], Iterable[StoredEvent]] | None,
        at_least_once: bool,  # noqa: FBT001 - passed on from check_backend
        break_flush: Callable[[], AbstractContextManager[object]] | None,
        workdir: Path,
        tolerance: _Tolerance,
    ) -> None:
        self.factory = factory
        self.read_back = read_back
        self.at_least_once = at_least_once
        self.break_flush = break_flush
        self.logdir = workdir
        self.tolerance = tolerance
        self.batches = _write_log(workdir, [(1, 4), (4, 6), (1, 3), (3, 4), (4, 6)])
        self.expected: Counter[_Key] = Counter()
        self.tolerated: Counter[_Key] = Counter()
        """Events stored twice by a crash's replay, which `replay_twice` allows."""
        self.runs: dict[_Key, str] = {}
        """Which tracker run each expected event belongs to: "first" or "restart"."""
        self.tracker_run = "first"

    def run_through(self) -> None:
        first, resent, restarted, crashed, resumed = self.batches
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
            self.tracker_run = "restart"
            saved = self._restart(backend, restarted, crashed, first_state)
            # a crashed tf-ship closes nothing; the kit closes the run all the same, so that a
            # tracker with one active run per process lets the fresh object reopen it
            self._call("close(FINISHED)", lambda: backend.close(RunStatus.FINISHED))
        self._resume(saved, first_state, resumed)

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

    def _prepare(self, backend: Backend, batch: Sequence[MetricEvent]) -> bool:
        """The engine's write-ahead call before a batch is sent: True asks for a state save."""
        if not isinstance(backend, WriteAhead):
            return False
        return bool(self._call("prepare(batch)", lambda: backend.prepare(batch)))

    def _send(
        self,
        backend: Backend,
        batch: Sequence[MetricEvent],
        *,
        when: str = "after flush() returned,",
        prepared: bool = False,
    ) -> None:
        """Hand a batch over and flush it, as the engine does; check what the tracker holds."""
        if not prepared:
            self._prepare(backend, batch)
        self._call("log_metrics(batch)", lambda: backend.log_metrics(batch))
        self._call("flush()", backend.flush)
        self._expect(batch)
        self._compare(when)

    def _expect(self, batch: Iterable[MetricEvent]) -> None:
        for event in batch:
            key = self.tolerance.key(event.model, event.metric, event.step, event.value)
            self.expected[key] += 1
            self.runs[key] = self.tracker_run

    def _send_again_after_a_failed_flush(
        self, backend: Backend, batch: Sequence[MetricEvent]
    ) -> None:
        """Hand the batch over, fail its flush, hand it over again and flush: as the engine."""
        self._prepare(backend, batch)
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
        self._send(
            backend,
            batch,
            when="after a failed flush the same batch was sent again and",
            prepared=True,
        )

    def _restart(
        self,
        backend: Backend,
        batch: Sequence[MetricEvent],
        crashed: Sequence[MetricEvent],
        first_state: Mapping[str, Any],
    ) -> _Saved:
        """Open the closed object again for segment 1, as after an application restart.

        Returns the state a crash after the last flush leaves: the engine saves the state after
        each flush (before a batch, when `prepare` asks), a `ReplaySafe` backend's at most once
        per state interval; so the events flushed after the last save are replayed.
        """
        rule = "open must reset the backend and start a new run for the next segment"
        when = f"after open() was called again on the closed backend ({rule}),"
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
        replay_safe = isinstance(backend, ReplaySafe) and backend.replay_safe is True
        saved = _Saved(self._resume_state(backend), [*batch, *crashed])
        if self._prepare(backend, batch):
            saved = _Saved(self._resume_state(backend), [*batch, *crashed])
        self._send(backend, batch, when=when, prepared=True)
        if not replay_safe:
            saved = _Saved(self._resume_state(backend), list(crashed))
        if self._prepare(backend, crashed):
            saved = _Saved(self._resume_state(backend), list(crashed))
        self._send(backend, crashed, when=when, prepared=True)
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
        return saved

    def _resume(
        self, saved: _Saved, first_state: Mapping[str, Any], batch: Sequence[MetricEvent]
    ) -> None:
        """A fresh object reopens the run from the saved state, as after a crash of tf-ship.

        The engine replays the events flushed after that state was saved, then goes on.
        """
        rule = "open(run) must reopen the run named by run.state"
        when = f"after a fresh object reopened the run from its resume state ({rule}),"
        backend = self._build()
        with _closed_on_failure(backend):
            run = self._run(state=saved.state, segment=1, first_run=first_state)
            self._call(
                "open(run) with the saved resume state, on a fresh object",
                _bind(backend.open, run),
                rule=rule,
            )
            self._call(
                "log_config(config) after the resume",
                lambda: backend.log_config(_config(0.25)),
                rule=rule,
            )
            self._prepare(backend, saved.replayed)
            self._call(
                "log_metrics(batch) replaying the events flushed after the last saved state",
                lambda: backend.log_metrics(saved.replayed),
                rule=rule,
            )
            self._call("flush() after the replay", backend.flush, rule=rule)
            self._compare(
                f"after a fresh object reopened the run from its resume state and was handed "
                f"the {len(saved.replayed)} events flushed after that state was saved (a "
                "replay after a crash),",
                replayed=True,
            )
            self._send(backend, batch, when=when)
            self._resume_state(backend)
            self._call("close(FINISHED)", lambda: backend.close(RunStatus.FINISHED))
        self._compare_runs(rule)

    def _resume_state(self, backend: Backend) -> Mapping[str, Any]:
        if not isinstance(backend, Resumable):
            return {}
        state = self._call("resume_state()", backend.resume_state)
        return _round_trip(state, "")

    def _held(self) -> list[tuple[_Key, Any]]:
        """What the tracker holds: (key, run identity or None) per stored event."""
        assert self.read_back is not None  # noqa: S101 - checked by the callers
        held = []
        for event in self._call("read_back()", self.read_back):
            model, metric, step, value, *rest = event
            held.append((self.tolerance.key(model, metric, step, value), rest[0] if rest else None))
        return held

    def _compare(self, when: str, *, replayed: bool = False) -> None:
        """Check that the tracker holds each flushed event once (at least once if allowed)."""
        if self.read_back is None:
            return
        held_events = self._held()
        held = Counter(key for key, _ in held_events)
        missing = self.expected - held
        if missing:
            example = next(iter(missing))
            msg = (
                f"{when} {missing.total()} events handed over are not in the tracker "
                f"(such as {_describe(example)}; {_came_back(example, held)}): flush must "
                "return only once everything handed over is stored, value for value"
            )
            raise ConformanceError(msg)
        doubled = held - self.expected - self.tolerated
        if doubled and replayed and self.tolerance.replay_twice:
            self.tolerated += doubled
        elif doubled and not self.at_least_once:
            example = next(iter(doubled))
            rule = (
                "a backend must recognise a replayed event (by what its tracker holds, or by "
                "its resume state), or be declared at-least-once after a crash "
                "(replay_twice=True)"
                if replayed
                else "a backend must recognise a re-sent event by its file and offset, or be "
                "declared at-least-once (at_least_once=True)"
            )
            msg = (
                f"{when} {doubled.total()} events were stored twice (such as "
                f"{_describe(example)}): {rule}"
            )
            raise ConformanceError(msg)

    def _compare_runs(self, rule: str) -> None:
        """With run identities: the restart's events in one run, which the first run is not."""
        if self.read_back is None:
            return
        found: dict[str, set[Any]] = {"first": set(), "restart": set()}
        for key, run in self._held():
            if run is not None and key in self.runs:
                found[self.runs[key]].add(run)
        restart = found["restart"]
        if len(restart) > 1:
            msg = (
                "after a fresh object reopened the run from its resume state, the events of "
                f"that run are in {len(restart)} tracker runs "
                f"({', '.join(sorted(map(str, restart)))}): {rule}"
            )
            raise ConformanceError(msg)
        if restart and restart & found["first"]:
            msg = (
                f"the events after the application restart are in run {next(iter(restart))}, as "
                "those before it: open must reset the backend and start a new run for the next "
                "segment"
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


@attrs.frozen
class _Saved:
    """The resume state a crash leaves, and the events a restarted engine replays after it."""

    state: Mapping[str, Any]
    replayed: list[MetricEvent]


_Key = tuple[str, str, int, str]
"""An event as compared: (model, metric, step, the value's exact text: repr, "nan" for NaN)."""


@attrs.frozen
class _Tolerance:
    """How exactly a tracker holds values and steps; exact unless its documentation says not."""

    values: frozenset[str] = frozenset()
    steps: str = "exact"
    replay_twice: bool = False

    def key(self, model: object, metric: object, step: object, value: object) -> _Key:
        return (str(model), str(metric), self._step(step), self._value(value))

    def _step(self, step: object) -> int:
        if self.steps == "float64" and isinstance(step, int | float):
            return int(float(step))
        return int(step) if isinstance(step, int | float) else int(str(step))

    def _value(self, value: object) -> str:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return repr(value)
        number = float(value)
        if math.isnan(number):
            return "nan"
        if "float32" in self.values:
            number = _float32(number)
        if "finite" in self.values and math.isinf(number):
            number = math.copysign(sys.float_info.max, number)
        if "unsigned_zero" in self.values and number == 0:
            number = 0.0
        return repr(number)


VALUES = ("exact", "float32", "finite", "unsigned_zero")
STEPS = ("exact", "float64")


def _float32(number: float) -> float:
    """The value as a float32 holds it (too large: an infinity of the same sign)."""
    try:
        return float(struct.unpack("f", struct.pack("f", number))[0])
    except OverflowError:
        return math.copysign(math.inf, number)


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


HARD_EVENTS: tuple[tuple[str, int, float], ...] = (
    ("loss", -(2**63), math.nan),
    ("loss", 2**63 - 1, math.inf),
    ("loss", -7, -math.inf),
    ("loss", 0, -0.0),
    ("loss", -1, 1e300),
    ("loss: train", 2, 0.125),
    ("Verlust ä 損失", 1, 2.0**53),
)
"""Values docs/log-format.md calls valid that a careless store loses: NaN, infinities, -0.0,
the extreme int64 steps, steps going backwards, a metric name with ": " and one not ASCII."""


def _write_log(logdir: Path, segments: Sequence[tuple[int, int]]) -> list[list[MetricEvent]]:
    """Write a TorchFort log with one batch per (first step, stop step); return the batches.

    The first batch ends with `HARD_EVENTS`.
    """
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / "torchfort.log"
    lines: list[bytes] = []
    batches: list[list[tuple[str, int, float, int]]] = []
    offset = 0
    count = 0
    for index, (start, stop) in enumerate(segments):
        batch = []
        events: list[tuple[str, int, float]] = []
        for step in range(start, stop):
            for metric in METRICS:
                count += 1
                events.append((metric, step, count / 4))  # exact in float32 too, and unique
        if index == 0:
            events += HARD_EVENTS
        for metric, step, value in events:
            text = "nan" if math.isnan(value) else repr(value)
            line = f"TORCHFORT::WANDB: model: {MODEL}, step: {step}, {metric}: {text}\n"
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


def _describe(key: _Key) -> str:
    model, metric, step, value = key
    return f"{model}/{metric} = {value} at step {step}"


def _came_back(key: _Key, held: Counter[_Key]) -> str:
    """What the tracker holds at that event's model, metric and step instead."""
    there = sorted({value for (m, k, s, value) in held if (m, k, s) == key[:3]})
    if not there:
        return "the tracker holds nothing at that step of that name"
    return f"the tracker holds {', '.join(there)} there"
