"""The contract between the engine and a tracker backend.

The engine never calls a backend concurrently: one call at a time, from the backend's own
worker (`open`, `log_config`, `log_metrics`, `flush` and `close` run on one thread the worker
keeps for them, so that it can stop waiting for a call after ``--call-timeout``), in this order::

    open(run) -> [log_config(config) | log_metrics(batch) ... flush()]* -> close(status)

- `open` starts or resumes the tracker run; `run.state` holds what `resume_state` returned
  last time, so a backend can reopen the same run.
- `log_config` records a model's config; it is called before that model's first batch and again
  whenever the config file changes.
- `log_metrics` receives a batch of events in log order (at most the engine's batch size).
- `flush` returns only when everything handed over so far is durable in the tracker; the
  engine advances the backend's cursor after it returns, never before.
- `close` ends the run with a status; it is called exactly once, even after a failure, and
  must release resources even when it raises.
- When the application restarted (``--on-restart new-run``), the engine closes the run
  (FINISHED) and calls `open` again for the next segment of the log: `run.segment` is then N
  (the N-th restart), `run.first_run` holds what the first run's `resume_state` returned, and
  the backend starts a new run, linked to the first as its tracker allows, keeping nothing of
  the closed one. The sequence above then repeats.
- A call that does not return within the call timeout counts as a transient failure; the
  engine waits for that same call again before it calls anything else, and takes its result if
  it returned meanwhile. A call that never returns fails the backend and its run is not closed.

Isolation is the engine's job: an exception from one backend never reaches another. A backend
raises `PermanentBackendError` for input it will never accept (the engine reports it and moves
on) and `FatalBackendError` when it cannot go on at all (the engine stops it); any other
exception is treated as transient and retried with backoff, except those no retry can fix
(`tf_ship.shipper.reasons.UNFIXABLE`, and anything that is not an `Exception`, such as a
`KeyboardInterrupt` raised inside an SDK), which fail the backend at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from tf_ship.shipper.events import MetricEvent, ModelConfig, RunInfo, RunStatus


class BackendError(Exception):
    """Root of the errors a backend raises on purpose."""


class PermanentBackendError(BackendError):
    """The tracker refused something for good (an invalid key, a 4xx answer): do not retry.

    Raise it only when nothing of the call was recorded: the engine then splits the batch to
    find the refused events, reports them, and ships the rest.
    """


class FatalBackendError(BackendError):
    """The backend cannot go on at all (its output is gone): stop it now, without retries."""


@runtime_checkable
class Backend(Protocol):
    """What the engine needs of a tracker backend; see the module docstring for the contract."""

    def open(self, run: RunInfo) -> None:
        """Start or resume the tracker run."""

    def log_config(self, config: ModelConfig) -> None:
        """Record a model's config."""

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Hand over a batch of metric events, in log order."""

    def flush(self) -> None:
        """Return once everything handed over is durable in the tracker."""

    def close(self, status: RunStatus) -> None:
        """End the run; a second call does nothing."""


class ResumableBackend(Backend, Protocol):
    """A backend that can reopen the same run after a restart of the shipper."""

    def resume_state(self) -> Mapping[str, Any]:
        """JSON-serializable facts (run ids, ...) that `open` will find in `RunInfo.state`."""


def group_by_model_step(
    batch: Sequence[MetricEvent],
) -> Iterator[tuple[str, int, list[MetricEvent]]]:
    """Yield runs of consecutive events that share model and step, in log order.

    TorchFort writes all metrics of one (model, step) next to each other, so grouping runs of
    neighbours gives one tracker row per (model, step) without reordering anything.
    """
    for (model, step), events in itertools.groupby(batch, key=lambda e: (e.model, e.step)):
        yield model, step, list(events)
