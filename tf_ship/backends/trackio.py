"""A backend that writes to trackio's local store: one SQLite file per project.

One row per event, ``{"<model>/<metric>": value, "<model>/step": TorchFort step}``, at trackio
step = the event's position in the run, with a log id derived from it: trackio's store ignores
a row whose log id it holds, so a replay after a crash adds nothing (exactly-once). Rows and
configs are written synchronously through trackio's `SQLiteStorage` (the call trackio's own
writer thread makes), so `flush` returns once SQLite committed them. See docs/backends.md
(trackio) and docs/delivery.md.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import re
import shlex
import sqlite3
import struct
import sys
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tf_ship.backends.imports import import_turn
from tf_ship.contract import (
    FatalBackendError,
    FileIdentity,
    MetricEvent,
    ModelConfig,
    RunInfo,
    RunStatus,
)

logger = logging.getLogger("tf_ship")

INSTALL_HINT = "the trackio backend needs the trackio package: install tf-ship[trackio]"
DEFAULT_PROJECT = "torchfort"
STEP = "step"
_STEP_LIKE = re.compile(r"(?:.*/)?step(?: \(metric\))*", re.DOTALL)
NEEDED = frozenset({"project", "run", "run_id", "metrics_list", "steps", "timestamps", "log_ids"})
"""The keywords of trackio's `SQLiteStorage.bulk_log` that the backend passes."""
REMOTE_VARIABLES = ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL")
"""trackio's own settings for logging elsewhere, which this backend does not follow."""


def step_key(model: str) -> str:
    """The key of a model's x-axis: ``<model>/step``."""
    return f"{model}/{STEP}"


def metric_key(model: str, metric: str) -> str:
    """``<model>/<metric>``, never an x-axis key.

    ``step`` becomes ``step (metric)``, ``a/step`` ``a/step (metric)``, and a name that already
    looks like that gets one more `` (metric)``, so that different metrics never share a key.
    """
    if _STEP_LIKE.fullmatch(metric):
        metric += " (metric)"
    return f"{model}/{metric}"


def json_safe(value: Any) -> Any:  # noqa: ANN401 - any YAML value
    """A config value as JSON: str keys, lists, and trackio's spelling of NaN and infinities."""
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def log_id(run_id: str, index: int, event: MetricEvent) -> str:
    """The row's log id: the run, the event's position in it, and a digest of the event.

    A replay gives the same event the same position (the position counts as of the saved
    cursor), hence the same id; the digest keeps a different event at that position apart.
    """
    digest = hashlib.blake2b(digest_size=6)
    digest.update(event.model.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(event.metric.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(struct.pack("<qd", event.step, event.value))
    return f"tf-ship:{run_id}:{index}:{digest.hexdigest()}"


class _Trackio:
    """The trackio names the backend uses, imported on first use, with its store directory."""

    def __init__(self, directory: str | None) -> None:
        wanted = Path(directory).expanduser().absolute() if directory else None
        self.from_environment = os.environ.get("TRACKIO_DIR")
        """The store the user's own environment names (trackio's default when None)."""
        if wanted is not None and "trackio" not in sys.modules:
            os.environ["TRACKIO_DIR"] = str(wanted)  # trackio reads it once, at import
        try:
            with import_turn():
                from trackio import utils  # noqa: PLC0415 - an optional extra
                from trackio.sqlite_storage import SQLiteStorage  # noqa: PLC0415
        except ImportError as error:
            raise FatalBackendError(INSTALL_HINT) from error
        except Exception as error:
            msg = f"cannot import trackio: {type(error).__name__}: {error}"
            raise FatalBackendError(msg) from error
        self.storage = SQLiteStorage
        self.directory = Path(getattr(utils, "TRACKIO_DIR", "")).absolute()
        if wanted is not None and self.directory != wanted:
            msg = (
                f"trackio was imported already with its store in {self.directory}; this "
                f"process cannot write to {wanted} (run tf-ship once per trackio directory)"
            )
            raise FatalBackendError(msg)
        if not _takes(SQLiteStorage, "bulk_log", NEEDED) or not hasattr(SQLiteStorage, "init_db"):
            msg = "this trackio is too old for tf-ship: install tf-ship[trackio]"
            raise FatalBackendError(msg)


def _takes(owner: object, name: str, keywords: frozenset[str]) -> bool:
    """True when ``owner.name`` is a callable that accepts all of `keywords`."""
    function = getattr(owner, name, None)
    if not callable(function):
        return False
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return keywords <= set(parameters)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class TrackioBackend:
    """Writes one trackio run in `project`, in trackio's local store.

    `directory` is the store (``$TRACKIO_DIR``, else trackio's default under ``$HF_HOME``).
    `group` becomes the run's group; after an application restart the new run is grouped with
    the first under `group`, else under the first run's name.
    """

    preferred_batch_size = 10_000
    """Each flush is one SQLite transaction (plus trackio's schema check): large ones are cheap."""

    def __init__(
        self,
        *,
        project: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        group: str | None = None,
    ) -> None:
        self.project = project or DEFAULT_PROJECT
        self.directory = None if directory in (None, "") else str(directory)
        self.group = group or None
        self._trackio: _Trackio | None = None
        self._run_id: str | None = None
        self._name = ""
        self._run_group: str | None = None
        self._config: dict[str, Any] = {}
        self._flushed = 0
        """Events the run holds as of the last flush: the next event's position."""
        self._pending: dict[tuple[FileIdentity | None, int], tuple[int, MetricEvent]] = {}
        self._loose: list[tuple[int, MetricEvent]] = []
        """Handed-over events without a place in the log (no file): not recognised if re-sent."""
        self._closed = False

    # -- the run ------------------------------------------------------------------------------

    def open(self, run: RunInfo) -> None:
        """Resume the run the saved state names, or start a new one (a new segment's, linked)."""
        trackio = self._trackio = _Trackio(self.directory)
        self._closed = False
        self._pending.clear()
        self._loose.clear()
        validate = getattr(trackio.storage, "validate_project_name", None)
        if callable(validate):
            try:
                validate(self.project)
            except ValueError as error:
                raise FatalBackendError(str(error)) from error
        for variable in REMOTE_VARIABLES:
            if os.environ.get(variable):
                logger.warning(
                    "trackio: %s is set, but tf-ship writes to the local store %s (upload it "
                    "with `trackio sync`)",
                    variable,
                    trackio.directory,
                )
        saved_id = _text(run.state.get("run_id"))
        if saved_id is not None:
            self._resume(trackio, run.state, saved_id)
        else:
            self._start(run)

    def _resume(self, trackio: _Trackio, state: Mapping[str, Any], run_id: str) -> None:
        saved_dir = _text(state.get("dir"))
        if saved_dir is not None and Path(saved_dir) != trackio.directory:
            logger.warning(
                "trackio: the run was written to %s, now the store is %s: the run continues "
                "there, without what the other store holds",
                saved_dir,
                trackio.directory,
            )
        self._run_id = run_id
        self._name = _text(state.get("run_name")) or run_id
        self._run_group = _text(state.get("group"))
        events = state.get("events")
        self._flushed = events if isinstance(events, int) and events >= 0 else 0
        stored = trackio.storage.get_run_config(self.project, run_id=run_id)
        self._config = dict(json_safe(stored)) if isinstance(stored, Mapping) else {}
        self._config.setdefault("_Created", _now())
        self._config.setdefault("_Group", self._run_group)

    def _start(self, run: RunInfo) -> None:
        self._run_id = uuid.uuid4().hex
        self._flushed = 0
        first_name = _text(run.first_run.get("run_name"))
        if run.segment and first_name:
            self._name = f"{first_name}-restart{run.segment}"
            self._run_group = self.group or first_name
        else:
            self._name = run.run_name or Path(run.logdir).absolute().name or DEFAULT_PROJECT
            self._run_group = self.group
        self._config = {"_Created": _now(), "_Group": self._run_group}

    def _require(self) -> _Trackio:
        if self._trackio is None or self._run_id is None or self._closed:
            msg = "the trackio backend is not open"
            raise FatalBackendError(msg)
        return self._trackio

    def resume_state(self) -> dict[str, Any]:
        """The run, its store, and how many events it holds as of the last flush."""
        return {
            "project": self.project,
            "run_id": self._run_id,
            "run_name": self._name,
            "group": self._run_group,
            "dir": str(self._trackio.directory) if self._trackio else None,
            "events": self._flushed,
        }

    # -- logging ------------------------------------------------------------------------------

    def log_config(self, config: ModelConfig) -> None:
        """Store the run's config, ``{<model>: config, ...}``, replacing the model's older one.

        Written at once, in its own transaction (trackio keeps one config row per run).
        """
        trackio = self._require()
        self._config[config.model] = json_safe(config.config)
        path = trackio.storage.init_db(self.project)
        text = json.dumps(self._config, ensure_ascii=False, allow_nan=False)
        connection = sqlite3.connect(str(path), timeout=30.0)
        try:
            with connection:
                connection.execute(
                    "INSERT OR REPLACE INTO configs (run_id, run_name, config, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (self._run_id, self._name, text, _now()),
                )
        finally:
            connection.close()

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Take the events; each gets its position in the run (kept when a batch is re-sent)."""
        self._require()
        position = self._flushed + len(self._pending) + len(self._loose)
        pending = self._pending
        for event in batch:
            if event.offset < 0:
                self._loose.append((position, event))
                position += 1
                continue
            where = (event.file, event.offset)
            if where not in pending:
                pending[where] = (position, event)
                position += 1

    def flush(self) -> None:
        """Write the taken events in one transaction; return once SQLite committed it."""
        if self._closed or self._trackio is None or self._run_id is None:
            return
        taken = sorted([*self._pending.values(), *self._loose], key=lambda item: item[0])
        if taken:
            run_id = self._run_id
            self._trackio.storage.bulk_log(
                project=self.project,
                run=self._name,
                run_id=run_id,
                metrics_list=[
                    {metric_key(e.model, e.metric): e.value, step_key(e.model): e.step}
                    for _, e in taken
                ],
                steps=[position for position, _ in taken],
                timestamps=[_now()] * len(taken),
                log_ids=[log_id(run_id, position, e) for position, e in taken],
            )
        self._flushed += len(taken)
        self._pending.clear()
        self._loose.clear()

    def close(self, status: RunStatus) -> None:  # noqa: ARG002 - trackio has no run status
        """Let go of the run; a second call does nothing. What was not flushed is dropped."""
        self._closed = True
        self._pending.clear()
        self._loose.clear()

    def view_hint(self) -> str | None:
        """The command that opens trackio's dashboard on this project."""
        if self._trackio is None:
            return None
        command = f"trackio show --project {shlex.quote(self.project)}"
        environment = self._trackio.from_environment
        if self.directory is None or (
            environment and Path(environment).expanduser().absolute() == self._trackio.directory
        ):
            return command
        return f"TRACKIO_DIR={shlex.quote(str(self._trackio.directory))} {command}"


__all__ = ["DEFAULT_PROJECT", "INSTALL_HINT", "TrackioBackend", "log_id", "metric_key", "step_key"]
