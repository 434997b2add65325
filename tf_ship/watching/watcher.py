"""The watcher: ships every log found under a root, each with a `Shipper` of its own.

A sweep or a cluster of jobs writes many log directories under one root. The watcher looks for
every directory holding a ``torchfort.log`` (once without follow, every ``scan_interval`` seconds
with it) and ships each with fresh backend instances, tracker runs named after the folder and a
state file in the log directory. At most ``max_logs`` logs ship at once, each in a thread of its
own (plus one worker thread per backend); the others wait their turn in the order they were
found, and get a slot when a log ends (end of log without follow, the ``timeout`` of inactivity
with follow). Logs are found by `tf_ship.watching.finding`; what watch refuses, and how it gives
each log its own outputs, is in `tf_ship.watching.rules`.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import attrs
import click

from tf_ship.cli_options import ShipRequest
from tf_ship.shipper.lock import LockError, LockHeldError
from tf_ship.shipper.places import LOG_NAME
from tf_ship.shipper.ship import (
    LogNotFoundError,
    Shipper,
    ShipReport,
    install_stop_handlers,
)
from tf_ship.watching.finding import find_log_dirs, folder_name, has_unshipped_lines, signature
from tf_ship.watching.rules import per_log_rules

logger = logging.getLogger("tf_ship")

DEFAULT_MAX_LOGS = 8
DEFAULT_SCAN_INTERVAL = 5.0
THREAD_PREFIX = "tf-ship-watch:"


class Phase(enum.Enum):
    """Where a watched log stands."""

    QUEUED = "waiting for a slot"
    SHIPPING = "shipping"
    IDLE = "idle, shipped again when it grows"
    DONE = "shipped"
    FAILED = "failed"
    GONE = "log disappeared"
    HELD = "skipped: another process ships it"


@attrs.define(eq=False)
class WatchedLog:
    """A log directory found under ROOT, and what its shippers did."""

    directory: Path
    name: str
    phase: Phase = Phase.QUEUED
    reports: list[ShipReport] = attrs.field(factory=list)
    """One report per shipping session (a log idle after --timeout may be shipped again)."""
    error: str | None = None
    idle_signature: tuple[int, int, int] | None = None
    shipper: Shipper | None = None
    thread: threading.Thread | None = None
    outcome: ShipReport | BaseException | None = None
    ended: bool = False
    held_by: str | None = None
    """Who else ships this log (said once), while it is `Phase.HELD`."""

    @property
    def log_file(self) -> Path:
        """The ``torchfort.log`` of the directory."""
        return self.directory / LOG_NAME

    @property
    def failed(self) -> bool:
        """Whether a backend failed (or the shipper itself did)."""
        return self.phase is Phase.FAILED

    def summary(self) -> str:
        """One line: how it ended, lines read, each backend's outcome over all sessions."""
        lines = sum(report.lines_read for report in self.reports)
        skipped = sum(sum(report.skipped.values()) for report in self.reports)
        if self.phase is Phase.HELD:
            state = f"{self.phase.value} ({self.held_by})"
        elif not self.reports:
            state = self.phase.value
        elif self.phase is Phase.DONE:
            state = self.reports[-1].stop_reason
        else:
            state = f"{self.phase.value} ({self.reports[-1].stop_reason})"
        text = f"  {self.name}: {state}; read {lines} lines, skipped {skipped}"
        backends: dict[str, list[Any]] = {}
        for report in self.reports:
            for stats in report.backends:
                entry = backends.setdefault(stats.name, [None, 0, None])
                entry[0] = stats.status.value if stats.status else "NOT STARTED"
                entry[1] += stats.events
                entry[2] = stats.error or entry[2]
        for name, (status, events, error) in backends.items():
            text += f"; {name} {status} {events} events"
            if error:
                text += f" ({error})"
        if self.error:
            text += f"; error: {self.error}"
        return text


class NameLogs(logging.Filter):
    """Prefix the messages of a log's shipper thread with the log's name."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Prefix the record's message; never drops a record."""
        name = threading.current_thread().name
        if name.startswith(THREAD_PREFIX) and isinstance(record.msg, str):
            prefix = name.removeprefix(THREAD_PREFIX)
            if record.args:  # the message is %-formatted: keep a % of the name as it is
                prefix = prefix.replace("%", "%%")
            if not record.msg.startswith(f"[{prefix}]"):
                record.msg = f"[{prefix}] {record.msg}"
        return True


# -- the watcher --------------------------------------------------------------------------------


class Watcher:
    """Finds the logs under a root and ships each with its own `Shipper`, a few at a time."""

    def __init__(
        self,
        root: Path,
        request: ShipRequest,
        *,
        max_logs: int = DEFAULT_MAX_LOGS,
        scan_interval: float = DEFAULT_SCAN_INTERVAL,
        depth: int | None = None,
    ) -> None:
        self.root = root
        self.request = request
        self.max_logs = max_logs
        self.scan_interval = scan_interval
        self.depth = depth
        self.follow = bool(request.params["follow"])
        self.logs: dict[Path, WatchedLog] = {}
        """By the directory's resolved path, so that a folder reached by two paths ships once."""
        self.problems: list[str] = []
        self._names: dict[str, Path] = {}
        self._clashes: set[Path] = set()
        self._queue: deque[WatchedLog] = deque()
        self._running: list[WatchedLog] = []
        self._wake = threading.Event()
        self._stop_reason: str | None = None
        self._warned_waiting = False
        self._started = time.monotonic()

    # -- stopping -----------------------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Start no further log; every running shipper stops cleanly (runs end KILLED)."""
        self._stop_reason = self._stop_reason or reason
        for log in list(self._running):
            if log.shipper is not None:
                log.shipper.request_stop(reason)
        self._wake.set()

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM: the first stops every shipper cleanly, a second exits at once.

        Call from the main thread (the only one that may install handlers).
        """
        install_stop_handlers(self.stop, "stopping every log")

    # -- running ------------------------------------------------------------------------------

    @property
    def ok(self) -> bool:
        """True when no backend of any log failed and nothing else went wrong."""
        return not self.problems and not any(log.failed for log in self.logs.values())

    def run(self) -> None:
        """Ship until every log is shipped (--no-follow) or until stopped (--follow)."""
        try:
            self._run()
        finally:  # even after an unexpected error: every running log stops cleanly
            if self._running:
                self.stop(self._stop_reason or "stopped")
            while self._running:
                self._reap()
                self._pause(0.1)

    def _run(self) -> None:
        if not self._wait_for_root():
            return
        next_scan = 0.0
        while self._stop_reason is None:
            if time.monotonic() >= next_scan:
                self._scan()
                next_scan = time.monotonic() + self.scan_interval if self.follow else math.inf
            self._reap()
            self._start_queued()
            if not self.follow and not self._queue and not self._running:
                if not self.logs:
                    self.problems.append(f"found no {LOG_NAME} under {self.root}")
                return
            self._pause(min(1.0, max(0.0, next_scan - time.monotonic())))

    def _pause(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _wait_for_root(self) -> bool:
        if self.root.is_dir():
            return True
        limit = self.request.params["wait"]
        if limit is None and not self.follow:
            limit = 0.0
        if limit == 0.0:
            self.problems.append(f"{self.root} is not a directory")
            return False
        logger.info(
            "waiting for %s to appear%s", self.root, f" (up to {limit:g} s)" if limit else ""
        )
        deadline = math.inf if limit is None else time.monotonic() + limit
        while not self.root.is_dir():
            if self._stop_reason is not None:
                return False
            if time.monotonic() >= deadline:
                self.problems.append(f"{self.root} did not appear within {limit:g} s")
                return False
            self._pause(min(1.0, self.scan_interval))
        return True

    def _scan(self) -> None:
        for directory in find_log_dirs(self.root, self.depth):
            key = directory.resolve()
            log = self.logs.get(key)
            if log is None:
                self._found(directory, key)
            elif log.phase in (Phase.GONE, Phase.HELD) or (
                log.phase is Phase.IDLE and signature(log.log_file) != log.idle_signature
            ):
                self._enqueue(log)

    def _found(self, directory: Path, key: Path) -> None:
        name = folder_name(self.root, directory)
        if name in self._names:
            if key not in self._clashes:
                self._clashes.add(key)
                logger.error(
                    "skipping %s: its runs would be named %r, like those of %s",
                    directory,
                    name,
                    self._names[name],
                )
            return
        self._names[name] = key
        log = WatchedLog(directory, name)
        self.logs[key] = log
        logger.info("found %s (runs named %s)", log.log_file, self._run_name(log))
        self._enqueue(log)

    def _enqueue(self, log: WatchedLog) -> None:
        log.phase = Phase.QUEUED
        self._queue.append(log)

    def _start_queued(self) -> None:
        while self._queue and len(self._running) < self.max_logs and self._stop_reason is None:
            self._start(self._queue.popleft())
        if self._queue and self.follow and not self._warned_waiting:
            self._warned_waiting = True
            logger.warning(
                "%d log(s) wait for a slot: %d ship at once (--max-logs), and a log frees its "
                "slot only when it ends (--timeout)",
                len(self._queue),
                self.max_logs,
            )

    def _run_name(self, log: WatchedLog) -> str:
        prefix = self.request.params["run_name"]
        return f"{prefix}-{log.name}" if prefix else log.name

    def request_for(self, log: WatchedLog) -> ShipRequest:
        """The request for one log: its own output for each option with a per-log rule.

        An option naming a folder DIR becomes DIR/<name><suffix> (`BackendOption.per_log`).
        """
        options = {name: dict(values) for name, values in self.request.backend_options.items()}
        for spec, option, rule in per_log_rules():
            values = options.get(spec.name)
            if values is not None and rule.given(values.get(option.keyword)):
                values[option.keyword] = rule.for_log(values[option.keyword], log.name)
        return attrs.evolve(self.request, backend_options=options)

    def _start(self, log: WatchedLog) -> None:
        request = self.request_for(log)
        fresh = bool(request.params["fresh"]) and not log.reports
        try:
            options = request.ship_options(  # no progress line per log: they would mix
                log.log_file, run_name=self._run_name(log), wait=0.0, fresh=fresh, progress=None
            )
        except click.ClickException as error:  # no place for its state: this log only
            logger.error("cannot ship %s: %s", log.log_file, error.format_message())  # noqa: TRY400 - said in full
            log.phase, log.error = Phase.FAILED, error.format_message()
            return
        try:
            shipper = Shipper(log.log_file, request.build_backends(), options)
        except Exception as error:  # a backend that cannot be made fails this log only
            logger.exception("cannot ship %s", log.log_file)
            log.phase, log.error = Phase.FAILED, str(error) or type(error).__name__
            return
        thread = threading.Thread(
            target=self._ship, args=(log, shipper), name=THREAD_PREFIX + log.name, daemon=True
        )
        log.phase, log.shipper, log.thread = Phase.SHIPPING, shipper, thread
        log.outcome, log.ended = None, False
        self._running.append(log)
        if self._stop_reason is not None:  # a signal came in since this log was taken
            shipper.request_stop(self._stop_reason)
        thread.start()

    def _ship(self, log: WatchedLog, shipper: Shipper) -> None:
        try:
            log.outcome = shipper.run()
        except Exception as error:  # one log's crash is reported; the others go on
            if not isinstance(error, (LogNotFoundError, LockError)):
                logger.exception("shipping %s failed", log.log_file)
            log.outcome = error
        finally:
            log.ended = True
            self._wake.set()

    def _reap(self) -> None:
        for log in [log for log in self._running if log.ended]:
            if log.thread is not None:
                log.thread.join()
            self._running.remove(log)
            self._finished(log)

    def _finished(self, log: WatchedLog) -> None:
        outcome, shipper = log.outcome, log.shipper
        log.shipper = log.thread = log.outcome = None
        if isinstance(outcome, LogNotFoundError):
            logger.warning("%s disappeared before it was shipped", log.log_file)
            log.phase = Phase.GONE
            return
        if isinstance(outcome, LockHeldError):
            holder = outcome.holder.describe() if outcome.holder else "its lock is being written"
            if log.held_by is None:
                logger.warning("skipping %s: another tf-ship ships it (%s)", log.log_file, holder)
            log.phase, log.held_by = Phase.HELD, holder
            return
        if isinstance(outcome, LockError):
            logger.error("cannot ship %s: %s", log.log_file, outcome)
        if not isinstance(outcome, ShipReport) or shipper is None:
            log.phase = Phase.FAILED
            log.error = str(outcome) or type(outcome).__name__
            return
        log.reports.append(outcome)
        if not outcome.ok:
            log.phase = Phase.FAILED
        elif (
            self.follow
            and self._stop_reason is None
            and shipper.control.drain.is_set()
            and shipper.state is not None
        ):  # stopped by --timeout: shipped again (from its saved cursors) when it grows
            log.phase = Phase.IDLE
            log.idle_signature = signature(log.log_file)
            if has_unshipped_lines(shipper):
                self._enqueue(log)
        else:
            log.phase = Phase.DONE

    # -- the end ------------------------------------------------------------------------------

    def summary(self) -> str:
        """One line per log, then the total."""
        logs = sorted(self.logs.values(), key=lambda log: log.name)
        lines = [log.summary() for log in logs]
        count = {phase: sum(log.phase is phase for log in logs) for phase in Phase}
        read = sum(report.lines_read for log in logs for report in log.reports)
        events = sum(
            stats.events for log in logs for report in log.reports for stats in report.backends
        )
        ending = self._stop_reason or ("following" if self.follow else "every log shipped")
        total = (
            f"tf-ship watch: {ending}; {len(logs)} log{'' if len(logs) == 1 else 's'} under "
            f"{self.root} in "
            f"{time.monotonic() - self._started:.2f} s: {count[Phase.DONE]} ended, "
            f"{count[Phase.IDLE]} idle, {count[Phase.FAILED]} failed, "
            + (f"{count[Phase.HELD]} shipped by another process, " if count[Phase.HELD] else "")
            + f"{count[Phase.QUEUED]} not started; read {read} lines, delivered {events} events"
        )
        if logs or not self.problems:
            lines.append(total)
        lines.extend(f"tf-ship watch: error: {problem}" for problem in self.problems)
        return "\n".join(lines)
