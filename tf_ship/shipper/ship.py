"""The shipper: waits for the log, runs one worker per backend, decides when to stop."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from tf_ship.contract import Backend, RunInfo, RunStatus
from tf_ship.errors import TfShipError
from tf_ship.redaction import redact
from tf_ship.shipper import stopping
from tf_ship.shipper.configs import ConfigCatalog
from tf_ship.shipper.events import SkipReason
from tf_ship.shipper.lock import StateLock
from tf_ship.shipper.monitor import BackendStats, Monitor
from tf_ship.shipper.options import (
    BATCH_SIZE,
    CALL_TIMEOUT,
    FOLLOW,
    MAX_LINE_BYTES,
    POLL_INTERVAL,
    SHUTDOWN_TIMEOUT,
    TIMEOUT,
    WAIT,
)
from tf_ship.shipper.places import LOG_NAME
from tf_ship.shipper.progress import BackendProgress, ProgressReporter, Snapshot
from tf_ship.shipper.segments import OnRestart, Segments
from tf_ship.shipper.shaping import EventShaper
from tf_ship.shipper.state import BackendState, StateStore
from tf_ship.shipper.worker import (
    MIN_POLL_INTERVAL,
    BackendWorker,
    Control,
    RetryPolicy,
    WorkerSettings,
)

logger = logging.getLogger("tf_ship")

install_stop_handlers = stopping.install_stop_handlers
MIN_RATE_SECONDS = 1.0
"""Shipping shorter than this shows no lines/s: the figure would measure start-up, not speed."""


class LogNotFoundError(FileNotFoundError, TfShipError):
    """The log did not appear (in time)."""


@attrs.frozen
class ShipOptions:
    """How to ship; the command line's options, in one value.

    The engine options' defaults are declared once, in `tf_ship.shipper.options`.
    """

    follow: bool = FOLLOW.default
    wait: float | None = WAIT.default
    """Seconds to wait for the log to appear; None waits forever in follow mode, not at all
    otherwise."""
    timeout: float = TIMEOUT.default
    """Stop after this many seconds without new bytes in the log; 0 never does."""
    poll_interval: float = POLL_INTERVAL.default
    batch_size: int | None = BATCH_SIZE.default
    """Most events per batch; None: the backend's `preferred_batch_size`, else
    `tf_ship.shipper.options.DEFAULT_BATCH_SIZE`."""
    max_line_bytes: int = MAX_LINE_BYTES.default
    shutdown_timeout: float = SHUTDOWN_TIMEOUT.default
    """Seconds a stop waits in total for the backends to finish their batch, flush and close."""
    call_timeout: float = CALL_TIMEOUT.default
    """Seconds one backend call may take before it counts as a transient failure; 0: no limit."""
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    run_name: str | None = None
    """Name of the tracker runs; None names them after the log's directory (`default_run_name`)."""
    state_file: Path | None = None
    """Where cursors and run ids are kept between runs; None keeps none."""
    fresh: bool = False
    """Ignore the saved state: start new runs from the start of the log."""
    state_interval: float = 1.0
    """Seconds between two periodic saves of the state while shipping (for cursors that moved
    over lines without metrics); every flushed batch is saved at once anyway."""
    on_restart: OnRestart = attrs.field(default=OnRestart.CONTINUE, converter=OnRestart)
    """When the application restarted (a series' step went back): ``new-run`` ships what
    follows to a new run linked to the first, ``continue`` keeps one run for the whole log.
    The command line's default is ``new-run``; this default (for Python callers) keeps one run,
    as before the option existed."""

    shaper: EventShaper | None = None
    """Filters, renames and a prefix applied before every backend."""
    progress: ProgressReporter | None = None
    """Draws progress while shipping; None draws nothing."""

    def worker_settings(self) -> WorkerSettings:
        """The part of the options each worker needs."""
        return WorkerSettings(
            follow=self.follow,
            batch_size=self.batch_size,
            min_poll_interval=min(MIN_POLL_INTERVAL, self.poll_interval),
            poll_interval=self.poll_interval,
            max_line_bytes=self.max_line_bytes,
            retry=self.retry,
            call_timeout=self.call_timeout,
            on_restart=self.on_restart,
            shaper=self.shaper if self.shaper is not None and self.shaper.active else None,
        )


@attrs.define
class ShipReport:
    """What happened, for the final summary and the exit code."""

    log_file: Path
    lines_read: int
    skipped: dict[SkipReason, int]
    backends: list[BackendStats]
    elapsed: float
    stop_reason: str
    shipping_seconds: float | None = None
    """The longest a backend shipped, its own start-up left out (None: none shipped); the time
    lines/s is measured over."""

    @property
    def ok(self) -> bool:
        """True when every backend shipped everything it was given."""
        return not any(stats.failed for stats in self.backends)

    def summary(self) -> str:
        """A few lines for a person: lines read, per backend outcome, skips, time."""
        skipped = sum(self.skipped.values())
        shipping = self.shipping_seconds
        rate = (
            f" ({self.lines_read / shipping:,.0f} lines/s over {shipping:.1f} s of shipping)"
            if shipping is not None and shipping >= MIN_RATE_SECONDS
            else ""
        )
        lines = [
            (
                f"tf-ship: {self.stop_reason}; read {self.lines_read} lines of {self.log_file} "
                f"in {self.elapsed:.2f} s{rate}, skipped {skipped}"
            ),
        ]
        lines.extend(
            f"  skipped {count}: {reason.value}"
            for reason, count in sorted(self.skipped.items(), key=lambda item: -item[1])
        )
        for stats in self.backends:
            status = stats.status.value if stats.status else "NOT STARTED"
            line = (
                f"  backend {stats.name}: {status}, {stats.events} events, "
                f"{stats.configs} configs, {stats.retries} retries"
            )
            if stats.rejected:
                line += f", {stats.rejected} refused"
            if stats.restarts:
                line += f", {stats.restarts} application restarts (a new run each)"
            if stats.error:
                line += f"; error: {stats.error}"
            lines.append(line)
            if stats.view_hint and stats.events:
                lines.append(f"    look at it: {stats.view_hint}")
        return redact("\n".join(lines))


class Shipper:
    """Ships one TorchFort log to several backends at once."""

    def __init__(
        self,
        log_file: Path,
        backends: Sequence[tuple[str, Backend]] | Mapping[str, Backend],
        options: ShipOptions | None = None,
    ) -> None:
        self.log_file = Path(log_file)
        self.backends = list(backends.items() if isinstance(backends, Mapping) else backends)
        names = [name for name, _ in self.backends]
        if len(set(names)) != len(names):
            msg = f"backend names must be unique, got {names}"
            raise ValueError(msg)
        if not self.backends:
            msg = "at least one backend is needed"
            raise ValueError(msg)
        self.options = options or ShipOptions()
        self.control = Control()
        self.monitor = Monitor()
        self._stop_reason: str | None = None
        self._started = time.monotonic()
        state_file = self.options.state_file
        self.state = None if state_file is None else StateStore(Path(state_file))
        self.lock = None if state_file is None else StateLock(Path(state_file), self._lost_lock)
        self._workers: list[BackendWorker] = []
        self._save_lock = threading.Lock()
        self._abandoned: str | None = None

    # -- stopping -----------------------------------------------------------------------------

    def request_stop(self, reason: str = "stopped") -> None:
        """Stop reading; every backend flushes and closes its run (status KILLED)."""
        self._stop_reason = self._stop_reason or reason
        self.control.stop.set()

    def request_drain(self, reason: str, status: RunStatus | None = None) -> None:
        """Ship what the log holds now, then stop; the runs end with `status` (or FINISHED)."""
        self._stop_reason = self._stop_reason or reason
        if status is not None:
            self.control.outcome.setdefault("status", status)
        self.control.drain.set()

    def abandon(self, reason: str) -> None:
        """Stop at once, without waiting for the backends: those still busy fail."""
        self._abandoned = reason
        self.request_stop(reason)

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM: the first stops cleanly, a second abandons, a third exits at once."""
        install_stop_handlers(self.request_stop, abandon=self.abandon)

    # -- running ------------------------------------------------------------------------------

    def run(self) -> ShipReport:
        """Wait for the log, ship it, return the report.

        Raises `LockHeldError` when another process ships with the same state file.
        """
        started = self._started = time.monotonic()
        workers: list[BackendWorker] = []
        try:
            self.take_lock(wait_for_folder=True)
            if not self.control.stop.is_set() and self._wait_for_log():
                self.take_lock()
                workers = self._start_workers()
                self._supervise(workers)
        finally:
            if self.lock is not None:
                self.lock.release()
            if self.options.progress is not None:
                self.options.progress.close()
        failed = [worker.stats.name for worker in workers if worker.stats.failed]
        if failed and len(failed) == len(workers) and self._stop_reason is None:
            self._stop_reason = "every backend failed" if len(failed) > 1 else "the backend failed"
        return ShipReport(
            self.log_file,
            self.monitor.lines_read,
            dict(self.monitor.skipped),
            [worker.stats for worker in workers],
            time.monotonic() - started,
            self._stop_reason or "end of log",
            _shipping_seconds([worker.stats for worker in workers]),
        )

    def take_lock(self, *, wait_for_folder: bool = False) -> None:
        """Lock the state file (see `tf_ship.shipper.lock`); raises `LockHeldError` when held.

        With `wait_for_folder`, a state file whose folder does not exist yet (a log directory
        still to appear) is locked later, by `run`, once the log is there.
        """
        if self.lock is None or self.lock.held:
            return
        if wait_for_folder and not self.lock.path.parent.is_dir():
            return
        self.lock.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()

    def _lost_lock(self, reason: str) -> None:
        """Another process took the state over: stop, and write the state no more."""
        self.state = None
        self.request_stop(reason)

    def _wait_for_log(self) -> bool:
        options = self.options
        if self.log_file.exists():
            return True
        limit = options.wait if options.wait is not None else (None if options.follow else 0.0)
        if limit == 0.0:
            msg = (
                f"{self.log_file} does not exist (with --no-follow tf-ship does not wait for it: "
                "--wait SECONDS waits that long for it to appear)"
            )
            raise LogNotFoundError(msg)
        what = self.log_file if self.log_file.parent.is_dir() else self.log_file.parent
        logger.info("waiting for %s to appear%s", what, f" (up to {limit:g} s)" if limit else "")
        deadline = None if limit is None else time.monotonic() + limit
        interval = 0.05
        while not self.log_file.exists():
            if self.control.stop.is_set() or self.control.drain.is_set():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                msg = f"{self.log_file} did not appear within {limit:g} s (--wait {limit:g})"
                raise LogNotFoundError(msg)
            self.control.stop.wait(interval)
            interval = min(interval * 1.5, options.poll_interval)
        return True

    def _saved_state(self) -> dict[str, BackendState]:
        if self.state is None:
            return {}
        if self.options.fresh:
            logger.info("--fresh: ignoring the saved state in %s", self.state.path)
            return {}
        saved = self.state.load()
        for name in saved:
            if name in dict(self.backends):
                logger.info(
                    "backend %s resumes at line %d", name, saved[name].cursor.line_number + 1
                )
        return saved

    def _start_workers(self) -> list[BackendWorker]:
        logdir = self.log_file.parent
        catalog = ConfigCatalog(logdir)
        settings = self.options.worker_settings()
        saved = self._saved_state()
        workers = []
        run_name = self.options.run_name or default_run_name(self.log_file)
        for name, backend in self.backends:
            state = saved.get(name, BackendState())
            run = RunInfo(logdir, self.log_file, run_name, state.resume)
            workers.append(
                BackendWorker(
                    name,
                    backend,
                    run,
                    catalog=catalog,
                    monitor=self.monitor,
                    control=self.control,
                    settings=settings,
                    cursor=state.cursor if state.cursor.file is not None else None,
                    save=None if self.state is None else self._save_now,
                    segments=Segments.from_json(state.segments),
                )
            )
        self._workers = workers
        for worker in workers:
            worker.start()
        return workers

    def _supervise(self, workers: list[BackendWorker]) -> None:
        """Watch for inactivity and stop requests until every worker has finished."""
        try:
            self._supervise_loop(workers)
        finally:
            self._save_state(workers)
            if self.state is not None and self.state.saves:
                logger.debug(
                    "state saved %d times, %.2f ms per save",
                    self.state.saves,
                    1000 * self.state.seconds / self.state.saves,
                )

    def _save_now(self) -> None:
        """Write every worker's last snapshot; raises OSError. Called from any thread.

        Snapshots are gathered under the same lock as the write, so a save never writes an
        older snapshot of a backend after a newer one (a write-ahead record must not be lost).
        """
        if self.state is None:
            return
        with self._save_lock:
            self.state.save({worker.stats.name: worker.snapshot() for worker in self._workers})

    def _save_state(self, workers: list[BackendWorker]) -> None:
        if self.state is None:
            return
        self._workers = workers
        try:
            self._save_now()
        except OSError as error:
            logger.warning("could not save the state to %s: %s", self.state.path, error)

    def _supervise_loop(self, workers: list[BackendWorker]) -> None:
        options = self.options
        last_seen = _file_signature(self.log_file)
        last_change = last_save = time.monotonic()
        while any(worker.is_alive() for worker in workers):
            if self.control.stop.is_set():
                self._join(workers, options.shutdown_timeout)
                return
            if time.monotonic() - last_save >= options.state_interval:
                self._save_state(workers)
                last_save = time.monotonic()
            if options.timeout > 0 and options.follow and not self.control.drain.is_set():
                seen = _file_signature(self.log_file)
                now = time.monotonic()
                if seen != last_seen:
                    last_seen, last_change = seen, now
                elif now - last_change >= options.timeout:
                    logger.info(
                        "no new lines for %g s: shipping the rest and stopping", options.timeout
                    )
                    self.request_drain(f"no new lines for {options.timeout:g} s")
            if options.progress is not None:
                options.progress.update(self._progress(workers))
            for worker in workers:
                worker.join(0.1 / len(workers))

    def _progress(self, workers: list[BackendWorker]) -> Snapshot:
        signature = _file_signature(self.log_file)
        now = time.monotonic()
        return Snapshot(
            elapsed=time.monotonic() - self._started,
            size=0 if signature is None else signature[1],
            lines_read=self.monitor.lines_read,
            backends=[
                BackendProgress(
                    worker.stats.name,
                    worker.cursor.offset,
                    worker.stats.lines,
                    worker.stats.events,
                    worker.stats.retries,
                    failed=worker.stats.error is not None,
                    lag_seconds=worker.lag_seconds(),
                    waiting=worker.stats.waiting,
                    retry_in=worker.stats.retry_at - now,
                )
                for worker in workers
            ],
        )

    def _join(self, workers: list[BackendWorker], timeout: float) -> None:
        """Wait for the workers up to `timeout` seconds, or until `abandon` is called."""
        deadline = time.monotonic() + timeout
        while self._abandoned is None and time.monotonic() < deadline:
            alive = [worker for worker in workers if worker.is_alive()]
            if not alive:
                return
            alive[0].join(min(0.1, max(0.0, deadline - time.monotonic())))
        for worker in workers:
            if worker.is_alive():
                worker.stats.error = (
                    f"{self._abandoned} while busy"
                    if self._abandoned is not None
                    else f"did not finish within the shutdown timeout ({timeout:g} s, "
                    "--shutdown-timeout)"
                )
                worker.stats.status = RunStatus.FAILED
                worker.stats.waiting = None
                logger.error("backend %s %s", worker.stats.name, worker.stats.error)


def default_run_name(log_file: Path) -> str:
    """The runs' name when none is given: the log directory's name (``run1`` for run1/)."""
    return Path(log_file).resolve().parent.name or "torchfort"


def _shipping_seconds(backends: Sequence[BackendStats]) -> float | None:
    """The longest a backend shipped, from its open run to its end of shipping; None: none did.

    Each backend's own start-up is left out: with a fast and a slow tracker, the time from the
    first open run would count the slow one's start-up as shipping.
    """
    spans = [
        stats.done_at - stats.opened_at
        for stats in backends
        if stats.opened_at is not None and stats.done_at is not None
    ]
    return max(0.0, *spans) if spans else None


def _file_signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size)


def ship(
    log: str | os.PathLike[str],
    backends: Sequence[tuple[str, Backend]] | Mapping[str, Backend] | Sequence[Backend],
    *,
    follow: bool = False,
    **options: object,
) -> ShipReport:
    """Ship a TorchFort log (a `torchfort.log` file or its directory) to backends, from Python.

    `backends` maps names to backend instances (a plain list is named by class). Other keyword
    arguments are `ShipOptions` fields. Returns the report; raises `LogNotFoundError` when the
    log is missing and not waited for.
    """
    path = Path(log)
    if path.is_dir() or path.suffix != ".log":
        path = path / LOG_NAME
    named: Sequence[tuple[str, Backend]] | Mapping[str, Backend]
    if isinstance(backends, Mapping):
        named = backends
    else:
        items = list(backends)
        if items and not isinstance(items[0], tuple):
            named = [(f"{type(b).__name__.lower()}-{i}", b) for i, b in enumerate(items)]  # type: ignore[misc]
        else:
            named = items  # type: ignore[assignment]
    shipper = Shipper(path, named, ShipOptions(follow=follow, **options))  # type: ignore[arg-type]
    return shipper.run()
