"""The contract between the engine and a tracker backend: values, errors, protocols.

A leaf module: the engine (`tf_ship.shipper`) and the backends (`tf_ship.backends`) both import
it, and it imports neither. `docs/writing-a-backend.md` explains it with an example;
`tf_ship.testing.check_backend` checks a backend against it.

The calls. The engine never calls a backend concurrently: one call at a time, all from one
thread of the backend's own (its worker's caller thread; the constructor runs elsewhere, on the
thread that built the backend), in this order::

    open(run) -> [log_config(config) | log_metrics(batch) ... flush()]* -> close(status)

- `open` starts or resumes the tracker run; `run.state` holds what `resume_state` returned
  last time (empty on a first start), so a backend can reopen the same run.
- `log_config` records a model's config; it is called before that model's first batch and again
  whenever the config file changes, and again after a restart of tf-ship (to the resumed run
  too). No flush of its own follows it: the next batch's `flush` (or `close`) does; a backend
  may hold configs and metrics until `flush`.
- `log_metrics` receives a batch of events in log order (at most the batch size).
- `flush` returns only when everything handed over so far is durable in the tracker; the
  engine advances the backend's cursor after it returns, never before.
- `close` ends the run with a status; the engine calls it once per run, even after a failure;
  it must release resources even when it raises, and a second call does nothing.

Two obligations follow from the log being the buffer:

(a) A re-sent batch. When `log_metrics` or `flush` raised (or did not return within
    ``--call-timeout``), the engine retries by calling `log_metrics` again with the same batch,
    then `flush`. A backend that can tell a re-sent event (each event's `file` and `offset` name
    its place in the log) stores it once: exactly-once. A backend that cannot stores it twice,
    and is at-least-once: say so in its documentation. (`file`, `offset`) is unique within one
    tracker run only: ``--fresh``, a truncated or replaced log and the next segment reuse
    offsets, so scope what is stored about them by run.
(b) Reopening after close. When the application restarted (``--on-restart new-run``), the engine
    closes the run (FINISHED) and calls `open` again, on the same object, for the next segment
    of the log: `run.segment` is then N (the N-th restart), `run.first_run` holds what the
    first run's `resume_state` returned, and `run.state` is empty. `open` must reset the object
    (everything `__init__` set up for a run) and start a new run, linked to the first as its
    tracker allows. A backend that cannot is shipped with ``--on-restart continue``.

A backend with only the 5 methods of `Backend` is a working at-least-once backend: it loses
nothing, but it may store an event twice after a failed flush or a restart of tf-ship (the log
is replayed from the last saved cursor).

Optional capabilities, each its own protocol below, found once when the worker is built:

- `Resumable.resume_state()`: JSON values (a run id, a count) saved with the cursor after each
  flush and handed back as `RunInfo.state`, so that a restarted tf-ship reopens the same run.
- `WriteAhead.prepare(batch)`: called before a batch is sent; True asks the engine to save
  `resume_state()` first, so that a crash while the batch is in flight replays it in a way
  the backend recognises (exactly-once across crashes).
- `PreferredBatchSize.preferred_batch_size`: events per batch when the user gives no
  ``--batch-size`` (a tracker whose `flush` is costly wants larger batches).
- `ViewHint.view_hint()`: one line (a command, a URL) printed in the final summary.
- `ReplaySafe.replay_safe`: True when a replay from ANY earlier saved cursor stores nothing
  twice (the backend cuts back or skips what it holds); the engine then saves the state after
  flushed batches at most once per state interval instead of after each one.

Timeouts. A call that does not return within the call timeout counts as a transient failure;
the engine waits for that same call again before it calls anything else, and takes its result
if it returned meanwhile. A call that never returns fails the backend and its run is not closed.

Errors. Isolation is the engine's job: an exception from one backend never reaches another. A
backend raises `PermanentBackendError` for input it will never accept (the engine splits the
batch, reports the refused events and ships the rest) and `FatalBackendError` when it cannot go
on at all (the engine stops it); any other exception is transient and retried with backoff,
except those no retry can fix (`tf_ship.shipper.reasons.UNFIXABLE`, and anything that is not an
`Exception`, such as a `KeyboardInterrupt` raised inside an SDK), which fail the backend at once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

from tf_ship.errors import TfShipError

__all__ = [
    "Backend",
    "BackendError",
    "FatalBackendError",
    "FileIdentity",
    "MetricEvent",
    "ModelConfig",
    "PermanentBackendError",
    "PreferredBatchSize",
    "ReplaySafe",
    "Resumable",
    "ResumableBackend",
    "RunInfo",
    "RunStatus",
    "ViewHint",
    "WriteAhead",
]


# -- the values -------------------------------------------------------------------------------


@attrs.frozen
class FileIdentity:
    """Which file a byte offset belongs to: device and inode, as `os.stat` reports them."""

    device: int
    inode: int

    def __str__(self) -> str:
        return f"{self.device}:{self.inode}"


@attrs.frozen(slots=True)
class MetricEvent:
    """One metric line of the log: a value of `metric` for `model` at TorchFort step `step`.

    `file` and `offset` say where its line starts in the log: together they identify the event
    within one tracker run, so a backend can recognise a re-sent or replayed one. The engine
    always sets both; `file=None` occurs only in events of a `LineParser` given no file, and
    `offset=-1` (the default) in events made by hand, as in tests. `value` may be NaN, ±inf or
    -0.0; `step` is any int64, negative, repeated or decreasing (docs/log-format.md).
    """

    model: str
    metric: str
    step: int
    value: float
    file: FileIdentity | None = None
    offset: int = -1

    @property
    def key(self) -> str:
        """The name most trackers show: ``<model>/<metric>``."""
        return f"{self.model}/{self.metric}"


@attrs.frozen
class ModelConfig:
    """A model's YAML config, as TorchFort wrote it beside the log, with `identifier` removed.

    `config` is what PyYAML's safe loader reads: dicts (top-level keys `str`), lists, str, int,
    float (NaN, ±inf too), bool, None, dates. `path` is the ``config_<name>.yaml`` it came from
    (None when made by hand), `version` counts the changes seen in this process (0 first), and
    `written_ns` is the file's modification time in nanoseconds.
    """

    model: str
    config: Mapping[str, Any]
    path: Path | None = None
    version: int = 0
    written_ns: int = 0


@attrs.frozen
class RunInfo:
    """What a backend needs to open (or reopen) its run."""

    logdir: Path
    log_file: Path
    run_name: str | None = None
    state: Mapping[str, Any] = attrs.field(factory=dict)
    """What `resume_state` returned last time (after a JSON round trip); empty at first."""
    segment: int = 0
    """Which application run of the log this tracker run is for: 0 for the first, N for the
    run after the N-th restart of the application (``--on-restart new-run``)."""
    first_run: Mapping[str, Any] = attrs.field(factory=dict)
    """For a segment after the first: what the first segment's run left in its resume state (its
    run id, name, directory), so that the new run can be linked to it; empty otherwise."""


class RunStatus(enum.Enum):
    """How a run ended; trackers that know run states record it."""

    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


# -- the errors -------------------------------------------------------------------------------


class BackendError(TfShipError):
    """Root of the errors a backend raises on purpose."""


class PermanentBackendError(BackendError):
    """The tracker refused something for good (an invalid key, a 4xx answer): do not retry.

    Raise it only when nothing of the call was recorded: the engine then splits the batch to
    find the refused events, reports them, and ships the rest.
    """


class FatalBackendError(BackendError):
    """The backend cannot go on at all (its output is gone): stop it now, without retries."""


# -- the protocols ----------------------------------------------------------------------------


@runtime_checkable
class Backend(Protocol):
    """What the engine needs of a tracker backend; see the module docstring for the contract."""

    def open(self, run: RunInfo) -> None:
        """Start or resume the tracker run; after a close, reset and start the next one."""

    def log_config(self, config: ModelConfig) -> None:
        """Record a model's config."""

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Hand over a batch of metric events, in log order; it may be a re-sent one."""

    def flush(self) -> None:
        """Return once everything handed over is durable in the tracker."""

    def close(self, status: RunStatus) -> None:
        """End the run; a second call does nothing."""


@runtime_checkable
class Resumable(Protocol):
    """Can reopen the same run after a restart of tf-ship."""

    def resume_state(self) -> Mapping[str, Any]:
        """JSON-serializable facts (run ids, ...) that `open` will find in `RunInfo.state`."""


@runtime_checkable
class WriteAhead(Protocol):
    """Needs its resume state saved before a batch is sent, to recognise it when replayed."""

    def prepare(self, batch: Sequence[MetricEvent]) -> bool:
        """Fix what a replay of `batch` must reproduce; True: save `resume_state()` first."""


@runtime_checkable
class PreferredBatchSize(Protocol):
    """Wants batches of its own size when the user gives no ``--batch-size``."""

    preferred_batch_size: int


@runtime_checkable
class ReplaySafe(Protocol):
    """Stores nothing twice when the log is replayed from any earlier saved cursor.

    Then a crash may cost a longer replay (up to the state interval's worth of batches), never
    a duplicate, and the engine saves the state after flushed batches at most once per state
    interval. A backend that only recognises a replay of the last batch must not claim it.
    """

    replay_safe: bool


@runtime_checkable
class ViewHint(Protocol):
    """Tells people where to look at the run (printed in the final summary)."""

    def view_hint(self) -> str | None:
        """One line: a command or a URL; None when there is nothing to show."""


@runtime_checkable
class ResumableBackend(Backend, Resumable, Protocol):
    """A backend that can reopen the same run after a restart of the shipper."""
