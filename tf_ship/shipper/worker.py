"""One backend's pipeline: its own tailer, parser and cursor, on its own thread.

The log is the buffer: each backend reads the file at its own pace, so a slow or failing
tracker only lags behind and never slows another, and memory holds at most one read block per
backend. The cursor advances only after the backend's `flush` returned.

Checkpoints: the worker keeps a snapshot of (cursor, the backend's `resume_state()`) taken at
points where the two agree: after `open`, after each flushed batch (once the cursor moved past
it), after a config was recorded, and before a batch is sent when the backend's optional
`prepare(batch)` asks for a write-ahead save. The optional capabilities (`tf_ship.contract`) are
found once, when the worker is built. At each of these points it calls its `save` hook,
which makes the snapshot durable; a periodic save from another thread only ever writes the last
snapshot, never a half-updated one.

Application restarts (``--on-restart new-run``): the worker finds where a restarted application's
lines begin (`tf_ship.shipper.segments`), ships everything before that line, finishes the run,
opens a new one for the next segment and ships the rest there. The segment and the highest step
of each series are part of the snapshot, as of its cursor.
"""

from __future__ import annotations

import bisect
import functools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import attrs

from tf_ship.contract import (
    Backend,
    FatalBackendError,
    MetricEvent,
    PermanentBackendError,
    PreferredBatchSize,
    ReplaySafe,
    Resumable,
    RunInfo,
    RunStatus,
    ViewHint,
    WriteAhead,
)
from tf_ship.errors import TfShipError
from tf_ship.redaction import redact, redact_json
from tf_ship.shipper.configs import ConfigCatalog
from tf_ship.shipper.events import EventColumns, models_of
from tf_ship.shipper.monitor import BackendStats, Monitor
from tf_ship.shipper.options import (
    BATCH_SIZE,
    CALL_TIMEOUT,
    DEFAULT_BATCH_SIZE,
    FOLLOW,
    MAX_LINE_BYTES,
    POLL_INTERVAL,
    RETRY_TIMEOUT,
)
from tf_ship.shipper.parse import LineParser, ParsedChunk
from tf_ship.shipper.reasons import full_text, one_line, short_reason, unfixable
from tf_ship.shipper.segments import OnRestart, Segments
from tf_ship.shipper.shaping import EventShaper
from tf_ship.shipper.state import BackendState
from tf_ship.shipper.tail import NUL_GRACE, Chunk, Cursor, Tailer

logger = logging.getLogger("tf_ship")
details = logging.getLogger("tf_ship.details")
"""The whole text of errors that the main log only names (shown with ``-v``)."""
T = TypeVar("T")
MIN_POLL_INTERVAL = 0.05
"""Seconds of the first pause after new lines (polling backs off from it up to the interval)."""
FORCED_SCAN_INTERVAL = 0.5
"""Seconds between two rescans for a model without a config (TorchFort writes none for some)."""


class BackendFailedError(TfShipError):
    """A backend kept failing past the retry budget, or failed while stopping."""


SaveHook = Callable[[], None]
"""Makes the current snapshots durable; raises OSError when the state cannot be written."""


class CallTimeoutError(TimeoutError, TfShipError):
    """A backend call did not return within the call timeout: a transient failure."""


class _Call(Generic[T]):
    """One backend call, made on the worker's caller thread; waiting for it can time out."""

    def __init__(self, what: str, call: Callable[[], T]) -> None:
        self.what = what
        self._call = call
        self._result: T | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._queued = time.monotonic()

    def run(self) -> None:
        """Make the call (on the caller thread) and keep its result or exception."""
        try:
            self._result = self._call()
        except BaseException as error:  # noqa: BLE001 - handed to the waiting worker
            self._error = error
        finally:
            self._done.set()

    def running(self) -> bool:
        """True while the call has not returned."""
        return not self._done.is_set()

    def wait(self, timeout: float) -> T:
        """The call's result or exception; `CallTimeoutError` if it is still running."""
        if not self._done.wait(timeout):
            elapsed = time.monotonic() - self._queued
            msg = f"no answer after {elapsed:.1f} s, --call-timeout {timeout:g}"
            raise CallTimeoutError(msg)
        if self._error is not None:
            raise self._error
        return cast("T", self._result)  # set when the call returned


class _Caller:
    """A daemon thread that makes one worker's backend calls, one at a time, in order.

    The worker waits for each call with a timeout. A call that never returns keeps this thread
    (a daemon: it cannot hold the process) and nothing else reaches the backend behind it.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (call := self._queue.get()) is not None:
            call.run()

    def submit(self, what: str, call: Callable[[], T]) -> _Call[T]:
        """Queue a call; the caller thread makes it after the calls queued before."""
        pending = _Call(what, call)
        self._queue.put(pending)
        return pending

    def shut(self) -> None:
        """Let the thread end once the calls queued so far have returned."""
        self._queue.put(None)


@attrs.frozen
class RetryPolicy:
    """Exponential backoff with jitter; give up after `give_up_after` seconds of failures."""

    initial: float = 0.5
    maximum: float = 30.0
    give_up_after: float = RETRY_TIMEOUT.default

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
    """The engine options a worker needs (defaults: `tf_ship.shipper.options`)."""

    follow: bool = FOLLOW.default
    batch_size: int | None = BATCH_SIZE.default
    min_poll_interval: float = MIN_POLL_INTERVAL
    poll_interval: float = POLL_INTERVAL.default
    max_line_bytes: int = MAX_LINE_BYTES.default
    nul_grace: float = NUL_GRACE
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    shaper: EventShaper | None = None
    call_timeout: float = CALL_TIMEOUT.default
    """Seconds a backend call may take before it counts as a transient failure; 0: no limit."""
    on_restart: OnRestart = OnRestart.CONTINUE
    """What to do when the application restarted (its steps went back)."""


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
        segments: Segments | None = None,
    ) -> None:
        super().__init__(name=f"tf-ship-{name}", daemon=True)
        self.backend = backend
        self.segments = segments or Segments()
        if self.segments.number:
            run = attrs.evolve(
                run, segment=self.segments.number, first_run=dict(self.segments.first_run)
            )
        self.run_info = run
        self.catalog = catalog
        self.monitor = monitor
        self.control = control
        self.settings = settings
        # the optional capabilities (tf_ship.contract), found once: bound methods or None
        self._resume_state = backend.resume_state if isinstance(backend, Resumable) else None
        self._prepare = backend.prepare if isinstance(backend, WriteAhead) else None
        self._hint = backend.view_hint if isinstance(backend, ViewHint) else None
        self._replay_safe = isinstance(backend, ReplaySafe) and backend.replay_safe is True
        preferred = (
            backend.preferred_batch_size if isinstance(backend, PreferredBatchSize) else None
        )
        self.batch_size = settings.batch_size or (
            preferred if isinstance(preferred, int) and preferred > 0 else DEFAULT_BATCH_SIZE
        )
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
        self._snapshot = BackendState(self.cursor, self.resume, self.segments.to_json())
        self._save = save
        self._sent_configs: dict[str, Any] = {}
        self._last_forced_scan = -FORCED_SCAN_INTERVAL
        self._lines = 0
        self._caller: _Caller | None = None
        """Makes the backend calls when they have a timeout; started with the first call."""
        self._stuck: _Call[Any] | None = None
        """A call abandoned when the worker gave up while it was still running."""
        self.caught_up_at = time.monotonic()
        """When this worker last had shipped everything the log held."""
        self.behind = True

    # -- the thread ---------------------------------------------------------------------------

    def run(self) -> None:
        """Open, ship until told to stop or the log ends, close with the right status."""
        try:
            self._retrying("open the run", lambda: self.backend.open(self.run_info))
            self.stats.opened_at = time.monotonic()
            self._retrying("save the state", lambda: self._checkpoint(required=True))
            self._loop()
            self.stats.done_at = time.monotonic()
        except BackendFailedError as error:
            self._fail(str(error))
        except BaseException as error:  # noqa: BLE001 - whatever ends the thread fails the backend
            self._fail(f"stopped by an unexpected error: {one_line(error)}")
            details.info("backend %s", self.stats.name, exc_info=error)
        finally:
            self._close()
            if self._caller is not None:
                self._caller.shut()

    def _fail(self, reason: str) -> None:
        self.stats.error = redact(reason)
        self.stats.waiting = None
        logger.error("backend %s failed: %s", self.stats.name, self.stats.error)

    def snapshot(self) -> BackendState:
        """The last consistent cursor and run facts: everything before the cursor was flushed."""
        return self._snapshot

    def _checkpoint(self, *, save: bool = True, required: bool = False) -> None:
        """Take a snapshot of the cursor and the backend's resume state; save it if asked.

        Call only where the two agree. A failed save raises when `required` (a write-ahead
        save, without which the batch must not be sent); otherwise it is reported and the next
        save catches up. For a `ReplaySafe` backend only required saves are made here: the
        periodic save writes its snapshot once per state interval (a save costs two fsyncs).
        """
        if self._resume_state is not None:
            self.resume = dict(self._resume_state())
        self._snapshot = BackendState(
            self.cursor, redact_json(self.resume), redact_json(self.segments.to_json())
        )
        if not save or self._save is None or (self._replay_safe and not required):
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
            self._close_backend(status)
        except BaseException as error:  # noqa: BLE001 - reported, never raised to other backends
            reason = one_line(error, limit=200)
            logger.warning("backend %s failed to close its run: %s", self.stats.name, reason)
            self.stats.error = self.stats.error or redact(f"close failed: {reason}")
            status = RunStatus.FAILED
        finally:
            self.stats.status = status
            self.stats.view_hint = self._view_hint()
            self.tailer.close()

    def _view_hint(self) -> str | None:
        if self._hint is None:
            return None
        try:
            text = self._hint()
        except BaseException:  # noqa: BLE001 - a hint is never worth a failure
            return None
        return redact(str(text)) if text else None

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
                self._count_lines(len(read.skipped))  # whole lines the tailer skipped
            if read.chunk is not None:
                self._ship_chunk(read.chunk)
                interval = settings.min_poll_interval
            self.behind = not read.at_end
            if read.at_end:
                self.caught_up_at = time.monotonic()
            else:
                continue  # more to read now: no pause
            if read.at_end and draining:
                partial = self.tailer.pending_partial()
                if partial is not None:
                    self.monitor.skip(self._content_key(), [partial])
                return
            if settings.on_restart is not OnRestart.NEW_RUN:
                # With new-run, a rewritten config waits for its model's next line: after a
                # restart that line opens the new run, which gets the config, the old one not.
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
            chunk.data,
            offset=chunk.offset,
            line_number=chunk.line_number,
            file=chunk.file,
            lines=chunk.lines,
        )
        if parsed.skipped:
            self.monitor.skip(self._content_key(), parsed.skipped)
        events = parsed.events
        newlines = newline_counter(chunk, parsed)
        detect = self.settings.on_restart is OnRestart.NEW_RUN
        moved: tuple[int, int] | None = (0, chunk.line_number)  # newlines counted, for cursors
        while moved is not None:
            cut = self.segments.boundary(events) if detect else None
            moved = self._ship_events(
                chunk,
                events[:cut],
                moved,
                newlines,
                restart_follows=cut is not None,
            )
            if moved is None:
                return  # stopped in the middle of the chunk
            if cut is None:
                break
            position, lines = moved
            restart = events[cut]
            lines += newlines(position, restart.offset - chunk.offset)
            moved = (restart.offset - chunk.offset, lines)
            self.cursor = self.tailer.cursor_at(restart.offset, lines)
            self._next_segment(restart)
            events = events[cut:]
            if self.control.stop.is_set():
                return
        self.cursor = chunk.end
        self._checkpoint(save=bool(parsed.events))
        self._count_lines(parsed.lines)

    def _count_lines(self, lines: int) -> None:
        self._lines += lines
        self.stats.lines = self._lines
        self.monitor.read_up_to(self._lines)

    def _ship_events(
        self,
        chunk: Chunk,
        events: Sequence[MetricEvent],
        moved: tuple[int, int],
        newlines: Callable[[int, int], int],
        *,
        restart_follows: bool,
    ) -> tuple[int, int] | None:
        """Ship events of one segment of the chunk in batches, moving the cursor after each.

        `moved` is (position in the chunk, line number) where the cursor stands; returns where
        it stands after the last mid-chunk move, or None when stopped. Before a restart, configs
        that changed are not sent: they belong to the application run after it. `newlines`
        counts the chunk's newlines between two positions (see `newline_counter`).
        """
        position, lines = moved
        shaper = self.settings.shaper
        changed = not restart_follows
        events_to_send: Sequence[MetricEvent] = events
        if shaper is not None:
            events_to_send = shaper.events(events)
            models = {e.model for e in events if shaper.name(e.model, e.metric)}
            self._send_configs(models, changed=changed)
        size = self.batch_size
        observed = 0
        for start in range(0, len(events_to_send), size):
            batch = events_to_send[start : start + size]
            if shaper is None:
                self._send_configs(models_of(batch), changed=changed)
            self._deliver(batch)
            if start + size < len(events_to_send):
                following = events_to_send[start + size].offset - chunk.offset
                lines += newlines(position, following)
                position = following
                self.cursor = self.tailer.cursor_at(chunk.offset + following, lines)
                observed = self._observe(events, observed, chunk.offset + following)
                self._checkpoint()
                if self.control.stop.is_set():
                    return None
        self._observe(events, observed, None)
        return position, lines

    def _observe(self, events: Sequence[MetricEvent], start: int, before: int | None) -> int:
        """Let restart detection take the events from `start` up to offset `before` (or all)."""
        if self.settings.on_restart is not OnRestart.NEW_RUN:
            return start
        if before is None:
            end = len(events)
        elif isinstance(events, EventColumns):
            end = bisect.bisect_left(events.offsets, before, lo=start)
        else:
            end = bisect.bisect_left(events, before, lo=start, key=lambda e: e.offset)
        self.segments.observe(events[start:end])
        return end

    def _next_segment(self, restart: MetricEvent) -> None:
        """The application restarted at `restart`: finish the run, open the next segment's.

        The cursor stands at the restart's line. The state is saved before the run is closed (a
        crash then reopens and finishes the old run, and finds the restart again) and once the
        new run is open (a crash after that resumes the new run).
        """
        segments = self.segments
        highest = segments.highest.get((restart.model, restart.metric))
        logger.info(
            "backend %s: %s went back from step %s to %d at line %d: the application restarted; "
            "what follows goes to a new run (restart %d)",
            self.stats.name,
            restart.key,
            highest,
            restart.step,
            self.cursor.line_number + 1,
            segments.number + 1,
        )
        self._retrying("save the state", lambda: self._checkpoint(required=True))
        first_run = segments.first_run if segments.number else dict(self.resume)
        try:
            self._close_backend(RunStatus.FINISHED)
        except Exception as error:  # noqa: BLE001 - reported; the next run is opened anyway
            logger.warning("backend %s failed to close its run: %s", self.stats.name, error)
        segments.begin_next(first_run)
        self.run_info = attrs.evolve(
            self.run_info, state={}, segment=segments.number, first_run=dict(segments.first_run)
        )
        self.resume = {}
        self._sent_configs.clear()
        self._last_forced_scan = -FORCED_SCAN_INTERVAL  # the new run's configs are looked for now
        self.stats.restarts += 1
        self._retrying("open the run", lambda: self.backend.open(self.run_info))
        self._retrying("save the state", lambda: self._checkpoint(required=True))

    def _send_configs(self, models: Iterable[str], *, changed: bool = True) -> None:
        """Send the config of each model that has a new (or, if `changed`, a changed) one."""
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
            if not changed and model in self._sent_configs:
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

        prepare = self._prepare
        try:
            if prepare is not None:
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
        """Call, retrying transient errors with backoff until the policy gives up.

        With a call timeout, a call that has not returned in time counts as a transient failure.
        The backend is never called twice at once: the next attempt waits again for the same
        call (up to the call timeout) and takes its result if it returned meanwhile, or makes the
        call anew if it raised. A call still running when the policy gives up (or a stop comes)
        is abandoned on its daemon thread, and the backend fails. An error that another attempt
        cannot fix (`reasons.unfixable`: a missing package, a programming error, an interrupt or
        exit raised inside the SDK) fails the backend at once.
        """
        timeout = self.settings.call_timeout
        first_failure: float | None = None
        attempt = 0
        pending: _Call[T] | None = None
        while True:
            try:
                if timeout <= 0:
                    result = call()
                else:
                    pending = pending or self._submit(what, call)
                    result = pending.wait(timeout)
            except PermanentBackendError:
                raise
            except FatalBackendError as error:
                msg = f"could not {what}: {error}"
                raise BackendFailedError(msg) from error
            except BaseException as error:  # noqa: BLE001 - an SDK may raise KeyboardInterrupt
                if pending is not None and not pending.running():
                    pending = None  # it raised: the next attempt calls again
                if first_failure is None:
                    first_failure = time.monotonic()  # retrying is bounded from here on
                attempt += 1
                self._after_failure(what, error, attempt, first_failure, pending)
            else:
                if attempt:
                    self.stats.waiting = None
                    logger.info(
                        "backend %s: %s worked after %d retries", self.stats.name, what, attempt
                    )
                return result

    def _after_failure(
        self,
        what: str,
        error: BaseException,
        attempt: int,
        first_failure: float,
        pending: _Call[Any] | None,
    ) -> None:
        """Report a failed attempt and wait before the next; raise when there is none."""
        policy = self.settings.retry
        name = self.stats.name
        details.info("backend %s could not %s: %s", name, what, full_text(error))
        if unfixable(error):
            self._stuck = pending
            details.info("backend %s", name, exc_info=error)
            msg = f"could not {what}: {_unfixable_reason(error)}"
            raise BackendFailedError(msg) from error
        self.stats.retries += 1
        reason = short_reason(error)
        now = time.monotonic()
        if self.control.stop.is_set() or now - first_failure >= policy.give_up_after:
            self._stuck = pending
            if self.control.stop.is_set():
                msg = f"could not {what}: {reason} (stopped while retrying)"
            else:
                msg = (
                    f"could not {what}: {reason}, for {now - first_failure:.0f} s "
                    f"({RETRY_TIMEOUT.flag} {policy.give_up_after:g})"
                )
            raise BackendFailedError(msg) from error
        # the last attempt comes when the retry timeout is up, not a backoff step after it
        delay = min(policy.delay(attempt), policy.give_up_after - (now - first_failure))
        self.stats.waiting = reason
        self.stats.retry_at = now + delay
        if attempt == 1:
            logger.warning(
                "backend %s could not %s (%s): retrying for up to %s (%s %g), next in %.1f s",
                name,
                what,
                reason,
                _seconds(policy.give_up_after),
                RETRY_TIMEOUT.flag,
                policy.give_up_after,
                delay,
            )
        else:
            logger.warning(
                "backend %s could not %s (%s): retry %d in %.1f s",
                name,
                what,
                reason,
                attempt,
                delay,
            )
        self.control.stop.wait(delay)

    def _close_backend(self, status: RunStatus) -> None:
        """Close the backend's run, within the call timeout; never while another call runs.

        A call abandoned while still running gets up to the call timeout to return; if it does
        not, the run is left unclosed (`close` would run concurrently with it) and this raises.
        """
        timeout = self.settings.call_timeout
        stuck, self._stuck = self._stuck, None
        if stuck is not None and stuck.running():
            try:
                stuck.wait(timeout)
            except CallTimeoutError as error:
                msg = f"not closed: the call to {stuck.what} has not returned ({error})"
                raise CallTimeoutError(msg) from None
            except Exception:  # noqa: BLE001, S110 - its failure was reported already
                pass
        if timeout <= 0:
            self.backend.close(status)
            return
        self._submit("close the run", functools.partial(self.backend.close, status)).wait(timeout)

    def _submit(self, what: str, call: Callable[[], T]) -> _Call[T]:
        if self._caller is None:
            self._caller = _Caller(f"{self.name}-calls")
        return self._caller.submit(what, call)


def newline_counter(chunk: Chunk, parsed: ParsedChunk) -> Callable[[int, int], int]:
    """Counts the newlines of `chunk` between two line starts (positions in its data).

    In a clean chunk (one event per line, as the parser's fast path returns it) the events'
    offsets are the line starts, so the count is a difference of two bisections instead of
    another pass over the bytes.
    """
    events = parsed.events
    if not isinstance(events, EventColumns) or parsed.skipped or len(events) != parsed.lines:
        return functools.partial(chunk.data.count, b"\n")
    starts = events.offsets
    base = chunk.offset

    def newlines(start: int, end: int) -> int:
        return bisect.bisect_left(starts, base + end) - bisect.bisect_left(starts, base + start)

    return newlines


def _seconds(seconds: float) -> str:
    """``10 min`` for long spans, ``8 s`` for short ones."""
    if seconds >= 120:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:g} s"


def _unfixable_reason(error: BaseException) -> str:
    """Why another attempt would fail the same way, in one line."""
    if isinstance(error, KeyboardInterrupt):
        return (
            "the backend raised KeyboardInterrupt (an SDK waiting for input that cannot come?); "
            "not retried"
        )
    if isinstance(error, SystemExit):
        return f"the backend called sys.exit({error.code!r}); not retried"
    if not isinstance(error, Exception):
        return f"the backend raised {one_line(error)}; not retried"
    return f"{one_line(error, limit=160)} (retrying cannot fix this)"
