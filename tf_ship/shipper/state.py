"""The durable state file: per backend its cursor and what it needs to reopen its run.

Written atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves either
the old or the new state, never a torn one; the previous state is kept as ``<name>.prev`` and
used when the current file is missing (a crash between the two renames of a save) or unreadable
(a filesystem that lost the rename). Temporary files left by a crash in the middle of a save are
removed by the next `load`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from tf_ship.errors import TfShipError
from tf_ship.shipper.tail import Cursor

logger = logging.getLogger("tf_ship")

STATE_VERSION = 1
TEMP_SUFFIX = ".tmp"

before_replace: Callable[[Path], None] | None = None
"""Called with the temporary file once it is written and synced, before it replaces the state.

For fault-injection tests only (a test kills the process here); None in normal use.
"""


@attrs.frozen
class BackendState:
    """What one backend left behind: where it stood, and how to reopen its run."""

    cursor: Cursor = attrs.field(factory=Cursor)
    resume: Mapping[str, Any] = attrs.field(factory=dict)
    segments: Mapping[str, Any] = attrs.field(factory=dict)
    """Which application run of the log the cursor is in (`Segments.to_json`); empty: the first."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        data = {"cursor": self.cursor.to_json(), "resume": dict(self.resume)}
        if self.segments:
            data["segments"] = dict(self.segments)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BackendState:
        """Inverse of `to_json`."""
        return cls(
            Cursor.from_json(data.get("cursor") or {}),
            dict(data.get("resume") or {}),
            dict(data.get("segments") or {}),
        )


class StateError(ValueError, TfShipError):
    """A state file that cannot be read or is of an unknown version."""


@attrs.define
class StateStore:
    """Loads and saves the state of every backend, atomically."""

    path: Path
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _last_written: str | None = attrs.field(default=None, init=False)
    saves: int = attrs.field(default=0, init=False)
    """How many times the file was written by this store."""
    seconds: float = attrs.field(default=0.0, init=False)
    """Time spent writing it, fsyncs included."""

    @property
    def previous(self) -> Path:
        """Where the state before the last save is kept."""
        return self.path.with_name(self.path.name + ".prev")

    def load(self) -> dict[str, BackendState]:
        """The saved state, falling back to the previous copy when the file is damaged."""
        self._remove_stale_temporaries()
        for candidate in (self.path, self.previous):
            try:
                return self._read(candidate)
            except FileNotFoundError:
                continue
            except StateError as error:
                logger.warning("state file %s is unusable (%s)", candidate, error)
        return {}

    def _remove_stale_temporaries(self) -> None:
        """Remove the temporary files of saves that a crash interrupted."""
        with contextlib.suppress(OSError):
            for temp in self.path.parent.glob(f"{self.path.name}*{TEMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    temp.unlink()

    def _read(self, path: Path) -> dict[str, BackendState]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise StateError(str(error)) from error
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            msg = (
                f"unknown state version {data.get('version') if isinstance(data, dict) else data!r}"
            )
            raise StateError(msg)
        backends = data.get("backends")
        if not isinstance(backends, dict):
            msg = "no backends"
            raise StateError(msg)
        try:
            return {str(k): BackendState.from_json(v) for k, v in backends.items()}
        except (TypeError, ValueError, AttributeError) as error:
            raise StateError(str(error)) from error

    def save(self, backends: Mapping[str, BackendState]) -> None:
        """Write the state atomically; a save identical to the last one writes nothing."""
        document = {
            "version": STATE_VERSION,
            "written": time.time(),
            "backends": {name: state.to_json() for name, state in sorted(backends.items())},
        }
        comparable = json.dumps(document["backends"], sort_keys=True)
        with self._lock:
            if comparable == self._last_written:
                return
            started = time.perf_counter()
            text = json.dumps(document, indent=1, sort_keys=True)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(
                prefix=self.path.name, suffix=TEMP_SUFFIX, dir=self.path.parent
            )
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as stream:
                    stream.write(text)
                    stream.flush()
                    os.fsync(stream.fileno())
                if before_replace is not None:
                    before_replace(Path(temp))
                if self.path.exists():
                    self.path.replace(self.previous)
                Path(temp).replace(self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    Path(temp).unlink()
                raise
            _fsync_directory(self.path.parent)
            self._last_written = comparable
            self.saves += 1
            self.seconds += time.perf_counter() - started


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX needs the directory synced too)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
