"""Signals and the end of the process: every way out ends with a documented exit code.

- The first SIGINT or SIGTERM stops cleanly: every backend finishes its batch, flushes and
  closes, within the shutdown timeout.
- A second one stops waiting for the backends: those still busy fail ("abandoned"), the summary
  is printed and the process exits with code 1 (at the latest `ABANDON_GRACE` seconds later).
- A third one exits at once, with code 1.

A backend call that never returns leaves a thread behind that the interpreter's own shutdown
would wait for or trip over (a thread blocked on the terminal, or writing to standard error,
aborts Python's finalization). `exit_process` therefore runs the exit handlers (wandb finishes
its runs there) for at most `ATEXIT_GRACE` seconds and ends the process itself when a thread of
tf-ship is still running.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from tf_ship.exit_codes import EXIT_FAILURE
from tf_ship.shipper.lock import release_held_locks

logger = logging.getLogger("tf_ship")

ABANDON_GRACE = 2.0
"""Seconds a second signal leaves for the summary before the process ends regardless."""
ATEXIT_GRACE = 5.0
"""Seconds the exit handlers get when a backend's thread is stuck."""
THREAD_PREFIX = "tf-ship"
"""tf-ship names its threads so; one still running at exit is a stuck backend call."""

_planned_exit: list[int] = []
"""The exit code the main thread has decided on, once it has."""


def exit_now(code: int) -> NoReturn:
    """Release this process's state locks, flush standard output and error, exit with `code`."""
    release_held_locks()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _stuck_threads(wait: float = 0.5) -> list[threading.Thread]:
    """tf-ship's threads still running after `wait` seconds in all (daemon or not)."""
    deadline = time.monotonic() + wait
    current = threading.current_thread()
    stuck = []
    for thread in threading.enumerate():
        if thread is current or not thread.name.startswith(THREAD_PREFIX):
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            stuck.append(thread)
    return stuck


def exit_process(code: int) -> NoReturn:
    """Exit with `code`; without waiting for a backend thread that is stuck in a call."""
    _planned_exit.append(code)
    stuck = _stuck_threads()
    if not stuck:
        sys.exit(code)
    logger.debug(
        "still running at exit: %s; exiting without them", ", ".join(t.name for t in stuck)
    )
    handlers = threading.Thread(target=atexit._run_exitfuncs, daemon=True)  # noqa: SLF001
    handlers.start()
    handlers.join(ATEXIT_GRACE)
    exit_now(code)


def _exit_after_grace() -> None:
    exit_now(_planned_exit[0] if _planned_exit else EXIT_FAILURE)


def exit_soon(grace: float = ABANDON_GRACE) -> None:
    """End the process `grace` seconds from now (with the planned code, else 1) if still running.

    After a second signal: the summary may still be printed, but nothing is waited for.
    """
    timer = threading.Timer(grace, _exit_after_grace)
    timer.daemon = True
    timer.start()


class StopSignals:
    """Handles SIGINT and SIGTERM from the start, before there is anything to stop.

    A signal that comes before `connect` (while tracker SDKs are imported, say) is remembered
    and acted on when the shipper connects.
    """

    def __init__(self, doing: str = "finishing") -> None:
        self.received = 0
        self._doing = doing
        self._first: str | None = None
        self._stop: Callable[[str], None] | None = None
        self._abandon: Callable[[str], None] | None = None

    def install(self) -> StopSignals:
        """Install the handlers (from the main thread: Python runs handlers there only)."""
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def connect(
        self, stop: Callable[[str], None], abandon: Callable[[str], None] | None = None
    ) -> None:
        """What a signal does: `stop(reason)` first, `abandon(reason)` (or exit) next."""
        self._stop, self._abandon = stop, abandon
        if self._first is not None:
            stop(f"stopped by {self._first}")

    def _handle(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        self.received += 1
        name = signal.Signals(signum).name
        if self.received == 1:
            self._first = name
            logger.warning("%s received: %s (send it again to exit at once)", name, self._doing)
            if self._stop is not None:
                self._stop(f"stopped by {name}")
            return
        if self.received == 2 and self._abandon is not None:
            logger.warning("%s received again: not waiting for the backends any longer", name)
            exit_soon()
            self._abandon(f"abandoned after a second {name}")
            return
        logger.warning("%s received again: exiting now", name)
        exit_now(EXIT_FAILURE)


def install_stop_handlers(
    stop: Callable[[str], None],
    doing: str = "finishing",
    abandon: Callable[[str], None] | None = None,
) -> StopSignals:
    """SIGINT/SIGTERM: `stop(reason)` once, then `abandon(reason)`, then exit 1 at once."""
    signals = StopSignals(doing).install()
    signals.connect(stop, abandon)
    return signals
