"""`tf-ship run`: start the application, ship its metrics while it runs, end with its outcome.

Instead of guessing from an inactivity timeout that the application is done, `run` starts it
(or follows a process started elsewhere, ``--follow-pid``) and knows: when the application
exits, tf-ship ships what the log holds, closes every tracker run with the application's
outcome (FINISHED on exit code 0, FAILED otherwise) and exits with the application's code.

Threads: the main thread handles SIGINT and SIGTERM (Python runs signal handlers there only)
and otherwise waits; one thread runs the `Shipper`, one waits for the application to end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import click

from tf_ship.cli_options import EXIT_FAILURE, StartupError, apply, ship_request, shipping_options
from tf_ship.redaction import redact
from tf_ship.shipper.lock import LockError, release_held_locks
from tf_ship.shipper.places import LOG_NAME
from tf_ship.shipper.stopping import exit_now, exit_process, exit_soon

logger = logging.getLogger("tf_ship.run")

RUNS_DIR = "tf-ship-runs"
"""Where `run` makes a fresh log directory when neither --logdir nor TORCHFORT_LOGDIR is set."""
LOGDIR_VARIABLE = "TORCHFORT_LOGDIR"
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MAX_PID_POLL = 1.0
"""Longest pause between two looks at a followed process, when it cannot be waited for."""


def exit_code(returncode: int) -> int:
    """The exit code a shell would report: a death by signal N (returncode -N) is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """How the application ended, in words."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the application was killed by {name} (exit code {exit_code(returncode)})"
    return f"the application exited with code {returncode}"


def fresh_logdir(parent: Path) -> Path:
    """A new, empty directory ``parent/<UTC timestamp>-<6 random hex digits>``."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = parent / f"{stamp}-{secrets.token_hex(3)}"
    path.mkdir(parents=True)
    return path


def pid_alive(pid: int) -> bool:
    """Whether process `pid` is still running (a zombie, dead but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, and belongs to someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        state = stat.rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: kill(pid, 0) is all there is
    return state not in {"Z", "X"}


def wait_for_pid(pid: int, stop: threading.Event, max_interval: float = MAX_PID_POLL) -> None:
    """Return when process `pid` has ended or `stop` is set.

    With a pidfd (Linux 5.3 and later) the kernel says when the process ends; elsewhere its
    existence is polled, backing off up to `max_interval` seconds.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            while not stop.is_set():
                if poller.poll(int(max_interval * 1000)):
                    return
        finally:
            os.close(pidfd)
        return
    interval = 0.05
    while pid_alive(pid) and not stop.wait(interval):
        interval = min(interval * 1.5, max_interval)


def terminal_signals_our_group() -> bool:
    """Whether our process group is the foreground group of our controlling terminal.

    Then a Ctrl-C reaches every process of the group, the application included, by itself.
    """
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class Application:
    """The application `run` started: its process, waited for and signalled."""

    def __init__(self, command: Sequence[str], env: dict[str, str]) -> None:
        self.command = list(command)
        self.process = subprocess.Popen(self.command, env=env)  # noqa: S603 - the user's command
        self.pid = self.process.pid
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            # A pidfd names this very process, even after its pid was reused.
            self._pidfd = os.pidfd_open(self.pid)

    def wait(self) -> int:
        """Block until the application exits; its return code (-N for a death by signal N)."""
        return self.process.wait()

    def send_signal(self, signum: int) -> None:
        """Pass a signal on, unless the application has already ended."""
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                self.process.send_signal(signum)

    def close(self) -> None:
        """Release the pidfd."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class Session:
    """Ships while the application runs, drains when it ends, and decides the exit code.

    Give `start` (which starts the application) or `follow_pid` (a process started elsewhere).
    `shipper` is a `tf_ship.shipper.ship.Shipper`; with `follow` false it starts only once the
    application has ended, and ships the log once.
    """

    def __init__(
        self,
        shipper: Any,  # noqa: ANN401 - a Shipper, imported only when used
        *,
        start: Callable[[], Application] | None = None,
        follow_pid: int | None = None,
        follow: bool = True,
        early: Sequence[int] = (),
    ) -> None:
        if (start is None) == (follow_pid is None):
            msg = "give start or follow_pid"
            raise ValueError(msg)
        self.shipper = shipper
        self.follow = follow
        self.follow_pid = follow_pid
        self.application: Application | None = None
        self.report: Any = None
        self.error: Exception | None = None
        self.returncode: int | None = None
        self._start = start
        self._ended = threading.Event()
        """Set when the application has ended, or (--follow-pid) tf-ship was told to stop."""
        self._stop_waiting = threading.Event()
        self._signals = 0
        self._early: list[int] = list(early)
        """Signals that came before the application started (or before `run`)."""
        self._shipper_thread: threading.Thread | None = None

    # -- signals ------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        """First signal: pass it on; second: stop shipping at once; third: exit at once.

        With --follow-pid nothing is passed on (the process is not ours): the first signal stops
        shipping, as for `tf-ship ship`, a second one stops waiting for the backends (exit code
        1), a third exits at once. Exiting at once gives the application's code when it has
        ended with one, else 1.
        """
        if self._start is not None and self.application is None:
            self._early.append(signum)  # passed on once the application has started
            return
        self._signals += 1
        name = signal.Signals(signum).name
        if self.application is None:
            if self._signals > 2:
                logger.warning("%s received again: exiting now", name)
                exit_now(EXIT_FAILURE)
            if self._signals > 1:
                logger.warning("%s received again: not waiting for the backends any longer", name)
                exit_soon()
                self.shipper.abandon(f"abandoned after a second {name}")
                return
            logger.warning("%s received: finishing (send it again to exit at once)", name)
            self.shipper.request_stop(f"stopped by {name}")
            self._stop_waiting.set()
            self._ended.set()
            return
        if self._signals > 2:
            logger.warning("%s received a third time: exiting now", name)
            exit_now(self._code_now())
        if signum == signal.SIGINT and terminal_signals_our_group():
            passed = "the application got it from the terminal too"
        else:
            self.application.send_signal(signum)
            passed = "passed on to the application"
        if self._signals == 1:
            logger.warning(
                "%s received (%s); shipping goes on until the application exits "
                "(send it again to stop shipping at once)",
                name,
                passed,
            )
        else:
            logger.warning(
                "%s received again (%s): stopping shipping (a third one exits at once)",
                name,
                passed,
            )
            self.shipper.request_stop(f"stopped by {name}")

    # -- threads ------------------------------------------------------------------------------

    def _ship(self) -> None:
        from tf_ship.shipper.ship import LogNotFoundError  # noqa: PLC0415

        try:
            self.report = self.shipper.run()
        except LogNotFoundError as error:
            self.error = error
        except Exception as error:
            logger.exception("shipping stopped by an unexpected error")
            self.error = error

    def _start_shipper(self) -> None:
        self._shipper_thread = threading.Thread(target=self._ship, name="tf-ship", daemon=True)
        self._shipper_thread.start()

    def _wait_for_application(self) -> None:
        try:
            if self.application is not None:
                self.returncode = self.application.wait()
            elif self.follow_pid is not None:
                wait_for_pid(self.follow_pid, self._stop_waiting)
        finally:
            self._ended.set()

    # -- the whole run ------------------------------------------------------------------------

    def run(self) -> None:
        """Ship until the application has ended and the log is drained (or a signal stops)."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in HANDLED_SIGNALS}
        try:
            if self._start is not None:
                self.application = self._start()
            for signum in self._early:
                self._on_signal(signum, None)
            if self.follow:
                self._start_shipper()
            waiter = threading.Thread(
                target=self._wait_for_application, name="tf-ship-wait", daemon=True
            )
            waiter.start()
            self._ended.wait()
            self._application_ended()
            if self._shipper_thread is not None:
                self._shipper_thread.join()
        finally:
            self._stop_waiting.set()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self.application is not None:
                self.application.close()

    def _application_ended(self) -> None:
        """Tell the shipper to ship the rest and close the runs with the application's outcome."""
        from tf_ship.contract import RunStatus  # noqa: PLC0415

        if self.shipper.control.stop.is_set():
            if self._shipper_thread is None:
                logger.warning("stopped before shipping: nothing was shipped")
            return  # stopped by a signal: the runs end KILLED
        if self.returncode is None:
            reason = f"the application (pid {self.follow_pid}) has ended"
            status = None  # its exit code is not ours to know: the runs end FINISHED
        else:
            reason = describe_exit(self.returncode)
            status = RunStatus.FINISHED if self.returncode == 0 else RunStatus.FAILED
        log_file = self.shipper.log_file
        if not log_file.exists():
            logger.warning("%s without writing %s: nothing to ship", reason, log_file)
            self.shipper.request_stop(f"{reason}; it wrote no log")
            return
        logger.info("%s: shipping the rest of the log", reason)
        self.shipper.request_drain(reason, status=status)
        if self._shipper_thread is None:
            self._start_shipper()

    @property
    def shipped(self) -> bool:
        """Whether everything was shipped (or there was nothing to ship)."""
        return self.error is None and (self.report is None or self.report.ok)

    def _code_now(self) -> int:
        """The exit code when tf-ship must exit at once: the application's, if it failed."""
        code = 0 if self.returncode is None else exit_code(self.returncode)
        return code or EXIT_FAILURE

    def exit_code(self) -> int:
        """The application's exit code; 1 when it succeeded (or is not ours) but shipping failed."""
        code = 0 if self.returncode is None else exit_code(self.returncode)
        if code == 0 and not self.shipped:
            return EXIT_FAILURE
        return code


def _child_environment(logdir: Path, *, from_user: bool) -> dict[str, str]:
    """The application's environment: ours, with TORCHFORT_LOGDIR naming the shipped folder."""
    env = dict(os.environ)
    current = env.get(LOGDIR_VARIABLE)
    if current is not None and Path(current).resolve() == logdir.resolve():
        return env
    if current is not None and from_user:
        logger.warning(
            "the application writes to --logdir %s, not to TORCHFORT_LOGDIR=%s", logdir, current
        )
    env[LOGDIR_VARIABLE] = str(logdir.resolve())
    return env


def _start(command: Sequence[str], env: dict[str, str], made: Path | None) -> Application:
    """Start the application; when it cannot start, remove the folder `made` for it and exit."""
    try:
        return Application(command, env)
    except OSError as error:
        release_held_locks()  # about to exit: the lock must not keep `made` from going
        if made is not None:
            with contextlib.suppress(OSError):
                made.rmdir()
        if isinstance(error, FileNotFoundError):
            click.echo(f"tf-ship: error: cannot run {command[0]}: no such command", err=True)
            sys.exit(EXIT_NOT_FOUND)
        click.echo(f"tf-ship: error: cannot run {command[0]}: {error.strerror}", err=True)
        sys.exit(EXIT_CANNOT_EXECUTE)


def _check_writable(folder: Path) -> None:
    """Refuse at once when the default log folder cannot be made."""
    from tf_ship.shipper.places import write_problem  # noqa: PLC0415

    problem = write_problem(folder)
    if problem is not None:
        msg = f"cannot make a log folder in {folder.absolute()} ({problem}): give --logdir DIR"
        raise StartupError(msg)


def _check_target(follow_pid: int | None, command: Sequence[str], logdir: str | None) -> None:
    if follow_pid is not None and command:
        msg = "give either --follow-pid PID or a command to run, not both"
        raise click.UsageError(msg)
    if follow_pid is None and not command:
        msg = "no application: tf-ship run [OPTIONS] -- COMMAND [ARGS]... (or --follow-pid PID)"
        raise click.UsageError(msg)
    if follow_pid is not None:
        if logdir is None:
            msg = "--follow-pid needs the application's log folder: --logdir or TORCHFORT_LOGDIR"
            raise click.UsageError(msg)
        if follow_pid == os.getpid() or not pid_alive(follow_pid):
            msg = f"no running process with pid {follow_pid} to follow"
            raise click.BadParameter(msg, param_hint="--follow-pid")


def _run(
    *,
    logdir: str | None,
    follow_pid: int | None,
    command: tuple[str, ...],
    **params: Any,  # noqa: ANN401
) -> None:
    """Run a TorchFort application and ship its metrics while it runs.

    Starts COMMAND with TORCHFORT_LOGDIR set (to --logdir, or to a fresh folder under
    ./tf-ship-runs/ when neither is given; the folder is made first), ships the log while the
    application runs, ships the rest once it has exited, and closes each tracker run FINISHED
    when it exited with code 0, FAILED otherwise. Put the command after `--`:

    \b
        tf-ship run --backend mlflow -- ./my_torchfort_app arg1 arg2

    Exit code: the application's (128+N when signal N killed it), or 1 when it succeeded but
    shipping failed; 127 when COMMAND cannot be found. The first SIGINT or SIGTERM is passed on
    to the application (a Ctrl-C in a terminal reaches it directly) and shipping goes on until
    it exits; a second one stops shipping at once; a third exits at once (with the
    application's code if it has failed, else 1). With --no-follow the log is shipped once,
    after the application has exited.

    --follow-pid PID follows an application started elsewhere, given its --logdir: when the
    process ends, tf-ship ships the rest and closes the runs FINISHED (its exit code cannot be
    known); it exits 0 when everything was shipped, 1 when a backend failed. Signals are not
    passed on: the first stops shipping (runs end KILLED), a second stops waiting for the
    backends and exits 1.
    """  # noqa: D301 - \b is click's mark for a paragraph it must not rewrap
    early: list[int] = []
    for signum in HANDLED_SIGNALS:  # until the session handles them (SDK imports take a while)
        signal.signal(signum, lambda received, _frame: early.append(received))
    request = ship_request(params)
    _check_target(follow_pid, command, logdir)
    built = request.build_backends()

    from tf_ship.shipper.ship import Shipper  # noqa: PLC0415

    log_dir = Path(str(logdir)) if logdir is not None else None
    made = None
    if follow_pid is None:
        if log_dir is None:
            _check_writable(Path(RUNS_DIR))
            log_dir = made = fresh_logdir(Path(RUNS_DIR))
        elif not log_dir.is_dir():
            # made first: TorchFort writes no config file into a folder that does not exist
            log_dir.mkdir(parents=True, exist_ok=True)
            made = log_dir
        env = _child_environment(log_dir, from_user=logdir is not None)
        logger.info("TorchFort log folder: %s", log_dir)
    assert log_dir is not None  # noqa: S101 - checked above
    log_file = log_dir / LOG_NAME
    shipper = Shipper(log_file, built, request.ship_options(log_file))
    try:  # before the application starts: a second shipper of this log must not start it
        shipper.take_lock(wait_for_folder=True)
    except LockError as error:
        raise StartupError(str(error)) from error
    follow = bool(request.params["follow"])
    if follow_pid is None:
        session = Session(
            shipper, start=lambda: _start(command, env, made), follow=follow, early=early
        )
    else:
        logger.info("following the application with pid %d", follow_pid)
        session = Session(shipper, follow_pid=follow_pid, follow=follow, early=early)
    try:
        session.run()
    finally:
        if shipper.lock is not None:
            shipper.lock.release()
    if session.error is not None:
        click.echo(redact(f"tf-ship: error: {session.error}"), err=True)
    report = session.report
    if report is not None and (not request.quiet or not report.ok):
        click.echo(report.summary(), err=True)
    exit_process(session.exit_code())


_RUN_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--logdir",
        envvar=["TF_SHIP_LOGDIR", LOGDIR_VARIABLE],
        metavar="DIR",
        help="TorchFort log folder; the application gets it as TORCHFORT_LOGDIR, made first "
        "[default: $TORCHFORT_LOGDIR, else a fresh ./tf-ship-runs/<UTC time>-<random>].",
    ),
    click.option(
        "--follow-pid",
        type=click.IntRange(min=1),
        metavar="PID",
        help="Instead of starting a command, follow the application with this pid (started "
        "elsewhere) until it ends.",
    ),
]

run_command: click.Command = click.command(
    "run",
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        # Options end where the command begins, with or without `--`. Unknown options before
        # it stay errors, so that a mistyped tf-ship option is never run as the command.
        "allow_interspersed_args": False,
    },
)(
    apply(
        [
            *_RUN_OPTIONS,
            *shipping_options(),
            click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[--] COMMAND..."),
        ],
        _run,
    )
)
