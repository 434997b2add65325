"""One backend's pipeline: its own tailer, parser and cursor, on its own thread.

The log is the buffer: each backend reads the file at its own pace, so a slow or failing
tracker only lags behind and never slows another, and memory holds at most one read block per
backend. The cursor advances only after the backend's `flush` returned.

Checkpoints: the worker keeps a snapshot of (cursor, the backend's `resume_state()`) taken at
points where the two agree: after `open`, after each flushed batch (once the cursor moved past
it), after a config was recorded, and before a batch is sent when the backend's optional
`prepare(batch)` asks for a write-ahead save. At each of these points it calls its `save` hook,
which makes the snapshot durable; a periodic save from another thread only ever writes the last
snapshot, never a half-updated one.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from tf_ship.backends.base import Backend, FatalBackendError, PermanentBackendError
from tf_ship.shipper.configs import ConfigCatalog
from tf_ship.shipper.events import MetricEvent, RunInfo, RunStatus
from tf_ship.shipper.monitor import BackendStats, Monitor
from tf_ship.shipper.parse import LineParser
from tf_ship.shipper.shaping import EventShaper
from tf_ship.shipper.state import BackendState
from tf_ship.shipper.tail import Chunk, Cursor, Tailer

logger = logging.getLogger("tf_ship")
T = TypeVar("T")
FORCED_SCAN_INTERVAL = 0.5
"""Seconds between two rescans for a model without a config (TorchFort writes none for some)."""


class BackendFailedError(Exception):
    """A backend kept failing past the retry budget, or failed while stopping."""


SaveHook = Callable[[], None]
"""Makes the current snapshots durable; raises OSError when the state cannot be written."""


@attrs.frozen
class RetryPolicy:
    """Exponential backoff with jitter; give up after `give_up_after` seconds of failures."""

    initial: float = 0.5
    maximum: float = 30.0
    give_up_after: float = 600.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based), with full jitter."""
        ceiling = min(self.maximum, self.initial * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


@attrs.frozen
class Control:
    """How the shipper steers its workers."""

    stop: threading.Event = attrs.field(factory=threading.Event)
    """Stop reading now: finish the batch in hand, flush and close."""
    drain: threading.Event = attrs.field(factory=threading.Event)
    """Read to the current end of the log, then flush and close."""
    outcome: dict[str, RunStatus] = attrs.field(factory=dict)
    """``{"status": ...}`` when the runs should end with a given status (the application's)."""


@attrs.frozen
class WorkerSettings:
    """The engine options a worker needs."""

    follow: bool = True
    batch_size: int = 1000
    min_poll_interval: float = 0.05
    poll_interval: float = 0.5
    max_line_bytes: int = 1 << 20
    nul_grace: float = 2.0
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    shaper: EventShaper | None = None


class BackendWorker(threading.Thread):
    """Ships the log to one backend."""

    def __init__(  # noqa: PLR0913 - a worker is wired from this many parts
        self,
        name: str,
        backend: Backend,
        run: RunInfo,
        *,
        catalog: ConfigCatalog,
        monitor: Monitor,
        control: Control,
        settings: WorkerSettings,
        cursor: Cursor | None = None,
        save: SaveHook | None = None,
    ) -> None:
        super().__init__(name=f"tf-ship-{name}", daemon=True)
        self.backend = backend
        self.run_info = run
        self.catalog = catalog
        self.monitor = monitor
        self.control = control
        self.settings = settings
        self.stats = BackendStats(name)
        self.tailer = Tailer(
            Path(run.log_file),
            cursor or Cursor(),
            max_line_bytes=settings.max_line_bytes,
            nul_grace=settings.nul_grace,
        )
        self.parser = LineParser(settings.max_line_bytes)
        self.cursor = self.tailer.cursor
        self.resume: dict[str, Any] = dict(run.state)
        self._snapshot = BackendState(self.cursor, self.resume)
        self._save = save
        self._sent_configs: dict[str, Any] = {}
        self._last_forced_scan = -FORCED_SCAN_INTERVAL
        self._lines = 0
        self.caught_up_at = time.monotonic()
        """When this worker last had shipped everything the log held."""
        self.behind = True

    # -- the thread ---------------------------------------------------------------------------

    def run(self) -> None:
        """Open, ship until told to stop or the log ends, close with the right status."""
        try:
            self._retrying("open the run", lambda: self.backend.open(self.run_info))
            self._retrying("save the state", lambda: self._checkpoint(required=True))
            self._loop()
        except BackendFailedError as error:
            self.stats.error = str(error)
        except Exception as error:
            self.stats.error = f"{type(error).__name__}: {error}"
            logger.exception("backend %s stopped by an unexpected error", self.stats.name)
        finally:
            self._close()

    def snapshot(self) -> BackendState:
        """The last consistent cursor and run facts: everything before the cursor was flushed."""
        return self._snapshot

    def _checkpoint(self, *, save: bool = True, required: bool = False) -> None:
        """Take a snapshot of the cursor and the backend's resume state; save it if asked.

        Call only where the two agree. A failed save raises when `required` (a write-ahead
        save, without which the batch must not be sent); otherwise it is reported and the next
        save catches up.
        """
        resume_state = getattr(self.backend, "resume_state", None)
        if callable(resume_state):
            self.resume = dict(resume_state())
        self._snapshot = BackendState(self.cursor, self.resume)
        if not save or self._save is None:
            return
        try:
            self._save()
        except OSError as error:
            if required:
                raise
            logger.warning("backend %s: could not save the state: %s", self.stats.name, error)

    def _close(self) -> None:
        if self.stats.error is not None:
            status = RunStatus.FAILED
        elif self.control.stop.is_set():
            status = RunStatus.KILLED
        else:
            status = self.control.outcome.get("status", RunStatus.FINISHED)
        try:
            self.backend.close(status)
        except Exception as error:  # noqa: BLE001 - reported, never raised to other backends
            logger.warning("backend %s failed to close its run: %s", self.stats.name, error)
            self.stats.error = self.stats.error or f"close failed: {error}"
            status = RunStatus.FAILED
        finally:
            self.stats.status = status
            self.stats.view_hint = self._view_hint()
            self.tailer.close()

    def _view_hint(self) -> str | None:
        hint = getattr(self.backend, "view_hint", None)
        if not callable(hint):
            return None
        try:
            text = hint()
        except Exception:  # noqa: BLE001 - a hint is never worth a failure
            return None
        return str(text) if text else None

    def _loop(self) -> None:
        settings = self.settings
        interval = settings.min_poll_interval
        while not self.control.stop.is_set():
            draining = not settings.follow or self.control.drain.is_set()
            read = self.tailer.read(hold_nul=not draining)
            for notice in read.notices:
                self.monitor.notice(notice)
            if read.skipped:
                self.monitor.skip(self._content_key(), read.skipped)
            if read.chunk is not None:
                self._ship_chunk(read.chunk)
                interval = settings.min_poll_interval
            self.behind = not read.at_end
            if read.at_end:
                self.caught_up_at = time.monotonic()
            elif read.chunk is not None:
                continue
            if read.at_end and draining:
                partial = self.tailer.pending_partial()
                if partial is not None:
                    self.monitor.skip(self._content_key(), [partial])
                return
            self._send_configs(self._sent_configs)
            self.control.stop.wait(interval)
            interval = min(interval * 1.5, settings.poll_interval)

    def lag_seconds(self) -> float:
        """How long this backend has been behind the log (0 when caught up)."""
        return time.monotonic() - self.caught_up_at if self.behind else 0.0

    def _content_key(self) -> tuple[object, int]:
        return (self.tailer.cursor.file, self.tailer.generation)

    # -- shipping -----------------------------------------------------------------------------

    def _ship_chunk(self, chunk: Chunk) -> None:
        parsed = self.parser.parse(
            chunk.data, offset=chunk.offset, line_number=chunk.line_number, file=chunk.file
        )
        if parsed.skipped:
            self.monitor.skip(self._content_key(), parsed.skipped)
        events = parsed.events
        shaper = self.settings.shaper
        if shaper is not None:
            kept = shaper.events(events)
            self._send_configs({e.model for e in events if shaper.name(e.model, e.metric)})
            events = kept
        size = self.settings.batch_size
        position, lines = 0, chunk.line_number  # newlines counted so far, for cursors
        for start in range(0, len(events), size):
            batch = events[start : start + size]
            if shaper is None:
                self._send_configs({event.model for event in batch})
            self._deliver(batch)
            if start + size < len(events):
                following = events[start + size].offset - chunk.offset
                lines += chunk.data.count(b"\n", position, following)
                position = following
                self.cursor = self.tailer.cursor_at(chunk.offset + following, lines)
                self._checkpoint()
                if self.control.stop.is_set():
                    return
        self.cursor = chunk.end
        self._checkpoint(save=bool(events))
        self._lines += parsed.lines
        self.stats.lines = self._lines
        self.monitor.read_up_to(self._lines)

    def _send_configs(self, models: Iterable[str]) -> None:
        """Send the config of each model that has a new or changed one."""
        models = list(models)
        if not models:
            return
        now = time.monotonic()
        missing = any(model not in self._sent_configs for model in models)
        force = missing and now - self._last_forced_scan >= FORCED_SCAN_INTERVAL
        if force:
            self._last_forced_scan = now
        configs = self.catalog.configs(force=force)
        logged = False
        for model in models:
            config = configs.get(model)
            if config is None or self._sent_configs.get(model) == config.config:
                continue
            shaped = config if self.settings.shaper is None else self.settings.shaper.config(config)
            try:
                self._retrying(
                    f"record the config of {model!r}",
                    functools.partial(self.backend.log_config, shaped),
                )
            except PermanentBackendError as error:
                logger.warning(
                    "backend %s refused the config of %r (%s): shipping its metrics anyway",
                    self.stats.name,
                    model,
                    error,
                )
            self._sent_configs[model] = config.config
            self.stats.configs += 1
            logged = True
        if logged:
            self._checkpoint()

    def _deliver(self, batch: Sequence[MetricEvent]) -> None:
        """Hand a batch over and flush it; isolate events the tracker refuses for good."""

        def send() -> None:
            self.backend.log_metrics(batch)
            self.backend.flush()

        prepare = getattr(self.backend, "prepare", None)
        try:
            if callable(prepare):
                write_ahead = functools.partial(self._write_ahead, prepare, batch)
                self._retrying(f"prepare {len(batch)} events", write_ahead)
            self._retrying(f"ship {len(batch)} events", send)
        except PermanentBackendError as error:
            if len(batch) > 1:
                middle = len(batch) // 2
                self._deliver(batch[:middle])
                self._deliver(batch[middle:])
                return
            event = batch[0]
            self.stats.rejected += 1
            logger.warning(
                "backend %s refused %s at step %d (byte %d of the log): %s",
                self.stats.name,
                event.key,
                event.step,
                event.offset,
                error,
            )
            return
        self.stats.events += len(batch)
        self.stats.batches += 1

    def _write_ahead(
        self, prepare: Callable[[Sequence[MetricEvent]], bool], batch: Sequence[MetricEvent]
    ) -> None:
        """Let the backend fix what a replay of `batch` must reproduce; save it before sending.

        The snapshot keeps the cursor before the batch: after a crash the batch is replayed,
        and the backend finds in its state what it needs to recognise it.
        """
        if prepare(batch):
            self._checkpoint(required=True)

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Call, retrying transient errors with backoff until the policy gives up."""
        policy = self.settings.retry
        first_failure: float | None = None
        attempt = 0
        while True:
            try:
                return call()
            except PermanentBackendError:
                raise
            except FatalBackendError as error:
                msg = f"could not {what}: {error}"
                raise BackendFailedError(msg) from error
            except Exception as error:
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                attempt += 1
                self.stats.retries += 1
                if self.control.stop.is_set() or now - first_failure >= policy.give_up_after:
                    msg = f"could not {what}: {type(error).__name__}: {error}"
                    raise BackendFailedError(msg) from error
                delay = policy.delay(attempt)
                logger.warning(
                    "backend %s could not %s (%s: %s); retry %d in %.1f s",
                    self.stats.name,
                    what,
                    type(error).__name__,
                    error,
                    attempt,
                    delay,
                )
                self.control.stop.wait(delay)
