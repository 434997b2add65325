"""One shipper per state file: a lock file beside it that works on network filesystems too.

Two shippers of one log would read the same state and both ship everything, so the second one
must refuse. ``flock`` and ``fcntl`` locks are unreliable or off on network filesystems (NFS,
Lustre, GPFS, depending on mount options), so the lock is a file, ``<state file>.lock``:

- **Taking it**: create it with ``O_EXCL`` (atomic on local filesystems and on NFS since v3),
  write the holder into it (host, PID, the process's start time, the boot id, a random token)
  and fsync it.
- **A lock whose holder is gone** is taken over. On the same host the holder is gone when its
  PID no longer runs, runs with another start time (the PID was reused) or the host has
  rebooted since (another boot id): a SIGKILLed shipper's lock is taken over by the next run at
  once. On another host the holder's process cannot be seen: the holder refreshes the lock
  file's modification time every `HEARTBEAT_SECONDS`, and a lock not refreshed for
  `STALE_SECONDS` is taken over. That age is measured with the filesystem's own clock (the
  modification time of a file made there just before), so clock skew between hosts does not
  count.
- **Taking over** happens under a second, short-lived lock file (``<lock>.takeover``, also
  ``O_EXCL``), so two newcomers never both take over: the lock is read again, and only when it
  still holds the stale holder is a new lock file renamed over it (atomic); reading it back
  with our token proves we won.
- **Releasing** removes the lock when it is still ours: on a normal end, on an error, after
  SIGINT or SIGTERM (the normal stop), and before a second signal's immediate exit
  (`release_held_locks`). Only SIGKILL or a crash of the host leaves it, to be taken over as
  above.

A holder that finds, at a heartbeat, that its lock was taken over or removed (it was stopped or
cut off for longer than `STALE_SECONDS`) calls its ``on_lost`` callback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from tf_ship.errors import TfShipError

logger = logging.getLogger("tf_ship")

LOCK_SUFFIX = ".lock"
HEARTBEAT_SECONDS = 15.0
"""How often a holder refreshes its lock file's modification time."""
STALE_SECONDS = 120.0
"""A lock held from another host and not refreshed for this long is taken over."""
TAKEOVER_STALE_SECONDS = 10.0
"""A takeover lock this old belongs to a newcomer that died in the middle (it is held for
milliseconds)."""
_UNREADABLE_WAIT = 1.0
"""How long a lock file that cannot be parsed (its creator is still writing it) is read again."""
_ACQUIRE_SECONDS = 5.0
"""How long acquiring goes on through races with other newcomers and releasing holders."""


@attrs.frozen
class Holder:
    """Who holds a lock: enough to tell whether that process still runs."""

    host: str
    pid: int
    started: int | None = None
    """The process's start time, in clock ticks after boot (``/proc/<pid>/stat``, field 22)."""
    boot: str | None = None
    """The host's boot id: another one means the host rebooted since."""
    token: str = ""
    since: float = 0.0
    """When the lock was taken (seconds since the epoch)."""

    @classmethod
    def me(cls) -> Holder:
        """The holder record of this process, with a new token."""
        pid = os.getpid()
        host = socket.gethostname()
        return cls(host, pid, _start_time(pid), _boot_id(), secrets.token_hex(8), time.time())

    def describe(self) -> str:
        """``host H, PID P, since HH:MM:SS`` (the date too when not today)."""
        since = time.localtime(self.since)
        today = time.strftime("%Y-%m-%d", since) == time.strftime("%Y-%m-%d")
        when = time.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M:%S", since)
        return f"host {self.host}, PID {self.pid}, since {when}"

    def to_json(self) -> str:
        """The lock file's text."""
        return json.dumps(attrs.asdict(self) | {"program": "tf-ship"}, sort_keys=True) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Holder | None:
        """Parse a lock file; None when it is not (yet) a complete lock record."""
        try:
            data = json.loads(text)
            holder = cls(
                str(data["host"]),
                int(data["pid"]),
                None if data.get("started") is None else int(data["started"]),
                None if data.get("boot") is None else str(data["boot"]),
                str(data.get("token") or ""),
                float(data.get("since") or 0.0),
            )
        except (ValueError, TypeError, KeyError):
            return None
        return holder if holder.pid > 0 else None


class LockError(RuntimeError, TfShipError):
    """The state file cannot be locked; the message says why and what to do."""


class LockHeldError(LockError):
    """Another running process holds the lock."""

    def __init__(self, path: Path, holder: Holder | None) -> None:
        self.path = path
        self.holder = holder
        who = holder.describe() if holder is not None else "a process whose lock is being written"
        super().__init__(
            f"another tf-ship ships this log ({who}; lock {path.absolute()}): stop it first, or "
            "let it finish"
        )


_HELD: set[StateLock] = set()
_HELD_LOCK = threading.Lock()


def release_held_locks() -> None:
    """Remove every lock this process holds; for a process about to exit with ``os._exit``."""
    with _HELD_LOCK:
        held = list(_HELD)
    for lock in held:
        lock.release(join=False)


@attrs.define(eq=False)
class StateLock:
    """The lock of one state file: `acquire` it before reading the state, `release` it after."""

    state_file: Path
    on_lost: Callable[[str], None] | None = None
    """Called (from the heartbeat thread) with a reason when the lock was lost."""
    heartbeat: float = attrs.field(factory=lambda: HEARTBEAT_SECONDS)
    me: Holder = attrs.field(factory=Holder.me)
    _stop: threading.Event = attrs.field(factory=threading.Event, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _held: bool = attrs.field(default=False, init=False)

    @property
    def path(self) -> Path:
        """The lock file: the state file's name with ``.lock`` appended."""
        return self.state_file.with_name(self.state_file.name + LOCK_SUFFIX)

    @property
    def held(self) -> bool:
        """Whether this process took the lock and has not released it."""
        return self._held

    # -- taking it ----------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lock, or take over a stale one; raises `LockHeldError` when it is held."""
        if self._held:
            return None
        deadline = time.monotonic() + _ACQUIRE_SECONDS
        holder: Holder | None = None
        while time.monotonic() < deadline:
            if self._create():
                return self._taken()
            seen = self._read_settled()
            if seen is None:
                continue  # released in the meantime: try again
            text, holder, mtime = seen
            reason = self._stale_reason(holder, mtime)
            if reason is None:
                raise LockHeldError(self.path, holder)
            if self._take_over(text, holder, reason):
                return self._taken()
            time.sleep(0.05)  # another newcomer is taking it over: look again
        raise LockHeldError(self.path, holder)

    def _taken(self) -> None:
        self._held = True
        with _HELD_LOCK:
            _HELD.add(self)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"tf-ship-lock:{self.path.name}", daemon=True
        )
        self._thread.start()

    def _create(self) -> bool:
        """Create the lock file holding us; False when it exists."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as error:
            raise self._cannot(error) from error
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(self.me.to_json())
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as error:
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise self._cannot(error) from error
        _fsync_directory(self.path.parent)
        return True

    def _cannot(self, error: OSError) -> LockError:
        return LockError(
            f"cannot create the lock file {self.path} ({error.strerror or error}): give "
            "--state-file in a folder you can write, or --no-state"
        )

    def _read(self) -> tuple[str, Holder | None, float] | None:
        """The lock file's text, holder and modification time; None when there is none."""
        try:
            with self.path.open(encoding="utf-8", errors="replace") as stream:
                mtime = os.fstat(stream.fileno()).st_mtime
                text = stream.read()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._cannot(error) from error
        return text, Holder.from_text(text), mtime

    def _read_settled(self) -> tuple[str, Holder | None, float] | None:
        """`_read`, again for a moment while the file cannot be parsed (being written)."""
        deadline = time.monotonic() + _UNREADABLE_WAIT
        while True:
            seen = self._read()
            if seen is None or seen[1] is not None or time.monotonic() >= deadline:
                return seen
            time.sleep(0.02)

    def _stale_reason(self, holder: Holder | None, mtime: float) -> str | None:
        """Why the holder is gone, or None while it may still run."""
        if holder is not None and holder.host == self.me.host:
            if holder.boot and self.me.boot and holder.boot != self.me.boot:
                return "the host restarted since"
            if not process_runs(holder.pid, holder.started):
                return f"process {holder.pid} no longer runs"
            return None
        age = _filesystem_now(self.path.parent) - mtime
        if age > STALE_SECONDS:
            return f"not refreshed for {age:.0f} s (more than {STALE_SECONDS:g} s)"
        return None

    def _take_over(self, seen: str, holder: Holder | None, reason: str) -> bool:
        """Replace the stale lock holding `seen` by ours; True when we hold it then."""
        mutex = self.path.with_name(self.path.name + ".takeover")
        try:
            os.close(os.open(mutex, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            with contextlib.suppress(OSError):
                age = _filesystem_now(self.path.parent) - mutex.stat().st_mtime
                if age > TAKEOVER_STALE_SECONDS:
                    mutex.unlink()
            return False
        except OSError as error:
            raise self._cannot(error) from error
        try:
            current = self._read()
            if current is None or current[0] != seen:
                return False  # released or taken meanwhile: look again
            self._replace()
            after = self._read()
            won = after is not None and after[1] is not None and after[1].token == self.me.token
        finally:
            with contextlib.suppress(OSError):
                mutex.unlink()
        if won:
            who = holder.describe() if holder is not None else "an unreadable lock file"
            logger.info("took over the lock %s from %s (%s)", self.path.absolute(), who, reason)
        return won

    def _replace(self) -> None:
        """Write our lock record to a new file and rename it over the lock file."""
        temp = self.path.with_name(f"{self.path.name}.{self.me.token}.new")
        try:
            with temp.open("w", encoding="utf-8") as stream:
                stream.write(self.me.to_json())
                stream.flush()
                os.fsync(stream.fileno())
            temp.replace(self.path)
        except OSError as error:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise self._cannot(error) from error
        _fsync_directory(self.path.parent)

    # -- holding and releasing it -------------------------------------------------------------

    def owned(self) -> bool:
        """Whether the lock file on disk is still ours."""
        try:
            seen = self._read()
        except LockError:
            return False
        return seen is not None and seen[1] is not None and seen[1].token == self.me.token

    def _beat(self) -> None:
        """Refresh the lock file's modification time; report a lost lock once."""
        while not self._stop.wait(self.heartbeat):
            try:
                if not self.owned():
                    self._lost("it was removed or taken over by another process")
                    return
                os.utime(self.path)
            except FileNotFoundError:
                self._lost("it was removed")
                return
            except OSError as error:  # a network filesystem's hiccup: try again next time
                logger.debug("could not refresh the lock %s: %s", self.path, error)

    def _lost(self, reason: str) -> None:
        with _HELD_LOCK:
            _HELD.discard(self)
        self._held = False
        message = f"lost the lock {self.path.absolute()}: {reason}"
        logger.error("%s", message)
        if self.on_lost is not None:
            self.on_lost(message)

    def release(self, *, join: bool = True) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours; idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if join and thread is not None and thread is not threading.current_thread():
            thread.join()
        with _HELD_LOCK:
            _HELD.discard(self)
        if not self._held:
            return
        self._held = False
        if self.owned():
            with contextlib.suppress(OSError):
                self.path.unlink()


# -- processes and clocks -----------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 first)."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    return text.rpartition(")")[2].split()


def _start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot; None without ``/proc``."""
    try:
        return int(_proc_stat(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def process_runs(pid: int, started: int | None) -> bool:
    """Whether process `pid` runs on this host, and (when known) is the one started at `started`.

    A zombie (ended, not yet reaped) does not run.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    except (OverflowError, ValueError):
        return False
    if not Path("/proc/self/stat").exists():
        return True  # no /proc: kill(pid, 0) is all there is
    try:
        fields = _proc_stat(pid)
    except OSError:
        return False  # ended between the two looks
    if len(fields) < 20 or fields[0] in {"Z", "X"}:
        return False
    return started is None or int(fields[19]) == started


def _filesystem_now(directory: Path) -> float:
    """The time by the clock that stamps files in `directory` (a network filesystem's server)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".tf-ship-clock-", dir=directory)
    except OSError:
        return time.time()
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            Path(name).unlink()


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
