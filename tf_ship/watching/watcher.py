"""``tf-ship watch ROOT``: ship every TorchFort log under a directory, as new ones appear.

A sweep or a cluster of jobs writes many log directories under one root. `watch` looks for every
directory holding a ``torchfort.log`` (once with ``--no-follow``, every ``--scan-interval``
seconds otherwise) and ships each with a `Shipper` of its own: fresh backend instances, tracker
runs named after the folder, a state file in the log directory. At most ``--max-logs`` logs ship
at once, each in a thread of its own (plus one worker thread per backend); the others wait their
turn in the order they were found, and get a slot when a log ends (end of log with
``--no-follow``, ``--timeout`` of inactivity with ``--follow``).

Only the main thread handles SIGINT/SIGTERM: the first one stops every shipper cleanly, a second
one exits at once.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import attrs
import click

from tf_ship.backends.spec import BackendOption, BackendSpec, PerLogOutput
from tf_ship.backends.specs import builtin_specs
from tf_ship.cli import CONTEXT
from tf_ship.cli_options import (
    EXIT_FAILURE,
    EXIT_OK,
    ShipRequest,
    apply,
    ship_request,
    shipping_options,
)
from tf_ship.shipper.lock import LockError, LockHeldError
from tf_ship.shipper.ship import (
    LOG_NAME,
    LogNotFoundError,
    Shipper,
    ShipReport,
    install_stop_handlers,
)
from tf_ship.shipper.stopping import StopSignals, exit_process

logger = logging.getLogger("tf_ship")

DEFAULT_MAX_LOGS = 8
DEFAULT_SCAN_INTERVAL = 5.0
THREAD_PREFIX = "tf-ship-watch:"
_READ_BLOCK = 1 << 16


# -- finding logs -------------------------------------------------------------------------------


def find_log_dirs(root: Path, depth: int | None = None) -> list[Path]:
    """Directories under `root` (itself included) that hold a ``torchfort.log``, sorted.

    Hidden folders (names starting with ``.``) are skipped. Symbolic links to directories are
    followed, but each directory is visited once, under the first path that reaches it, so a
    link loop ends. `depth` limits how many levels below `root` are searched (0: `root` only;
    None: no limit). Folders that cannot be read are skipped.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        directory, level = stack.pop()
        try:
            info = directory.stat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        if _is_file(directory / LOG_NAME):
            found.append(directory)
        if depth is not None and level >= depth:
            continue
        try:
            with os.scandir(directory) as entries:
                names = sorted(e.name for e in entries if not e.name.startswith(".") and _is_dir(e))
        except OSError:
            continue
        stack.extend((directory / name, level + 1) for name in reversed(names))
    return found


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def folder_name(root: Path, directory: Path) -> str:
    """A log directory's name: its path below `root` with ``/`` replaced by ``-``.

    `root` itself is named after its own last component.
    """
    parts = directory.relative_to(root).parts
    if parts:
        return "-".join(parts)
    return root.resolve().name or "root"


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size)


def has_unshipped_lines(shipper: Shipper) -> bool:
    """Whether the log holds a complete line that some backend's saved cursor is before.

    Read from the shipper's state file after it ended: lines appended while it was closing its
    runs are noticed here, not lost.
    """
    if shipper.state is None:
        return False
    try:
        info = shipper.log_file.stat()
    except OSError:
        return False
    try:
        saved = shipper.state.load()
    except OSError:
        return False
    for name, _backend in shipper.backends:
        cursor = saved[name].cursor if name in saved else None
        if cursor is None or cursor.file is None:
            offset = 0
        elif (cursor.file.device, cursor.file.inode) != (info.st_dev, info.st_ino):
            return True  # the log was replaced
        else:
            offset = cursor.offset
        if offset < info.st_size and _newline_after(shipper.log_file, offset):
            return True
    return False


def _newline_after(path: Path, offset: int) -> bool:
    try:
        with path.open("rb") as stream:
            stream.seek(offset)
            while block := stream.read(_READ_BLOCK):
                if b"\n" in block:
                    return True
    except OSError:
        return False
    return False


# -- one watched log ----------------------------------------------------------------------------


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


class _NameLogs(logging.Filter):
    """Prefix the messages of a log's shipper thread with the log's name."""

    def filter(self, record: logging.LogRecord) -> bool:
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
                log.phase is Phase.IDLE and _signature(log.log_file) != log.idle_signature
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
        for spec, option, rule in _per_log_rules():
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
            log.idle_signature = _signature(log.log_file)
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


# -- the command --------------------------------------------------------------------------------


def check_request(request: ShipRequest) -> None:
    """Refuse options that would make several logs share one output, run or state file."""
    if request.params["state_file"]:
        msg = (
            "--state-file names one file, but watch keeps a state file in each log directory "
            "(leave it out, or give --no-state)"
        )
        raise click.UsageError(msg)
    options = request.backend_options
    for spec in builtin_specs():
        for option in spec.options:
            if option.names_one_run and options.get(spec.name, {}).get(option.keyword):
                msg = (
                    f"{option.flag} would send every log to one run: watch starts a run per log "
                    "directory"
                )
                raise click.UsageError(msg)
    for spec, option, rule in _per_log_rules():
        values = options.get(spec.name)
        if rule.required and values is not None and not rule.given(values.get(option.keyword)):
            what = "file" if rule.suffix else "folder"
            msg = (
                f"--backend {spec.name} needs {option.flag} DIR with watch (one {what} per log: "
                f"DIR/NAME{rule.suffix})"
            )
            raise click.UsageError(msg)


def _per_log_rules() -> list[tuple[BackendSpec, BackendOption, PerLogOutput]]:
    """Every backend option that watch rewrites for each log, with its rule."""
    return [
        (spec, option, option.per_log)
        for spec in builtin_specs()
        for option in spec.options
        if option.per_log is not None
    ]


def _watch(  # its help: `_watch_help`
    root: Path,
    max_logs: int,
    scan_interval: float,
    depth: int | None,
    **params: Any,  # noqa: ANN401
) -> None:
    signals = StopSignals("stopping every log").install()  # also while SDKs are imported
    request = ship_request(params)
    check_request(request)
    request.build_backends()  # an unknown backend is a usage error before anything ships
    logging.getLogger("tf_ship").addFilter(_NameLogs())
    watcher = Watcher(root, request, max_logs=max_logs, scan_interval=scan_interval, depth=depth)
    signals.connect(watcher.stop)
    watcher.run()
    if not request.quiet or not watcher.ok:
        click.echo(watcher.summary(), err=True)
    exit_process(EXIT_OK if watcher.ok else EXIT_FAILURE)


_WATCH_OPTIONS = [
    click.argument("root", type=click.Path(file_okay=False, path_type=Path)),
    click.option(
        "--max-logs",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_LOGS,
        metavar="N",
        show_default=True,
        envvar="TF_SHIP_MAX_LOGS",
        help="How many logs ship at once (each uses one thread, plus one per backend); the "
        "others wait their turn until a log ends.",
    ),
    click.option(
        "--scan-interval",
        type=click.FloatRange(min=0.05),
        default=DEFAULT_SCAN_INTERVAL,
        metavar="SECONDS",
        show_default=True,
        envvar="TF_SHIP_SCAN_INTERVAL",
        help="How often to search ROOT for new log directories (with --follow).",
    ),
    click.option(
        "--depth",
        type=click.IntRange(min=0),
        default=None,
        metavar="N",
        envvar="TF_SHIP_DEPTH",
        help="Search at most N folder levels below ROOT (0: ROOT only) [default: no limit].",
    ),
]


def _watch_help() -> str:
    """The command's help; which options write to one place per log comes from the specs."""
    places = ", ".join(
        f"{option.flag} DIR {'writes to' if not index else 'to'} {rule.target}"
        for index, (_, option, rule) in enumerate(_per_log_rules())
    )
    return f"""Ship every TorchFort log under ROOT, each to runs of its own, as new ones appear.

    Finds every folder under ROOT (ROOT included, hidden folders skipped) that holds a
    torchfort.log and ships it as `tf-ship --logdir FOLDER` would: its own backends, its own
    tracker runs and its own state file (FOLDER/.tf-ship-state.json), so that running the same
    command again continues each log where it stopped. The runs of a log are named after its
    path below ROOT with / replaced by - (with --run-name NAME: NAME-<folder>);
    {places}.

    At most --max-logs logs ship at once; the others wait their turn, in the order found, until
    a log ends. With --follow (the default), ROOT is searched again every --scan-interval
    seconds, each log ships until --timeout seconds without new lines (then it is shipped again
    from where it stopped when it grows), and watch runs until SIGINT or SIGTERM. With
    --no-follow, every log found is shipped once and watch exits. --wait is how long to wait for
    ROOT to appear. One summary line per log and a total go to standard error; the exit code is
    1 when a backend of any log failed.
    """


watch_command: click.Command = click.command(
    "watch",
    help=_watch_help(),
    context_settings=CONTEXT,
    epilog="Exit codes: 0 shipped, 1 a backend of some log failed, 2 usage error.",
)(apply([*_WATCH_OPTIONS, *shipping_options()], _watch))
