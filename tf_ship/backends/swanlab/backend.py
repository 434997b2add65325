"""A backend that logs to SwanLab (online, or offline / local folders that `swanlab sync` uploads).

One row per event, ``{"<model>/<metric>": value, "<model>/step": TorchFort step}``, at SwanLab
step = the event's position in the run: SwanLab's own steps must be positive, below 2**48 and
new for each key, which TorchFort's are not. Keys SwanLab would change are renamed first
(`tf_ship.backends.swanlab.keys`). `flush` waits until SwanLab's writer thread has stored every
row and its run file has them. See docs/backends.md (SwanLab) and docs/delivery.md.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tf_ship.backends.base import plain
from tf_ship.backends.imports import import_turn
from tf_ship.backends.swanlab.files import scalars, session_dirs
from tf_ship.backends.swanlab.keys import KeyMap, metric_name, step_name
from tf_ship.contract import (
    FatalBackendError,
    FileIdentity,
    MetricEvent,
    ModelConfig,
    RunInfo,
    RunStatus,
)

logger = logging.getLogger("tf_ship")

INSTALL_HINT = "the swanlab backend needs the swanlab package: install tf-ship[swanlab]"
LOGIN_HINT = (
    "SwanLab has no API key for online mode: run `swanlab login` (or set SWANLAB_API_KEY), or "
    "ship offline with --swanlab-mode offline and upload later with `swanlab sync DIR`"
)
DEFAULT_PROJECT = "torchfort"
MODES = ("online", "offline", "local")
KEY_MAP_CONFIG = "tf_ship_key_map"
"""The run config entry that lists the names logged under another key."""
DELIVERY_TIMEOUT = 30.0
"""Seconds `flush` waits for SwanLab's writer thread to store what it was handed."""
WRITER_IDLE = 0.05
"""Seconds SwanLab's writer thread waits for more before it stores what it holds (its own
default, 0.5 s, would be the least time every flush takes)."""
EXACT_INTEGERS = 2**53
STATES = {RunStatus.FINISHED: "success", RunStatus.KILLED: "aborted", RunStatus.FAILED: "crashed"}


def _import_swanlab() -> Any:  # noqa: ANN401 - the swanlab module
    try:
        with import_turn():
            import swanlab  # noqa: PLC0415 - an optional extra, imported only when a run starts
    except ImportError as error:
        raise FatalBackendError(INSTALL_HINT) from error
    except Exception as error:
        msg = f"cannot import swanlab: {type(error).__name__}: {error}"
        raise FatalBackendError(msg) from error
    return swanlab


def _settings(swanlab: Any) -> Any:  # noqa: ANN401 - swanlab objects
    """No prompts, no capture of tf-ship's own terminal, no probing of the machine."""
    settings = swanlab.Settings
    return settings(
        interactive=False,
        terminal=settings.Terminal(proxy_type="none"),
        probe=settings.Probe(
            hardware=False,
            runtime=False,
            requirements=False,
            conda=False,
            git=False,
            swanlab=False,
            monitor=False,
        ),
    )


def _delivery_counter(swanlab: Any) -> Any:  # noqa: ANN401 - a swanlab Callback
    """A SwanLab callback that counts the scalar records its writer thread has stored."""

    class Delivered(swanlab.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.count = 0
            self.changed = threading.Condition()

        @property
        def name(self) -> str:
            return "tf-ship"

        def on_scalar_flush(self, scalar_records: Sequence[Any], *_: Any, **__: Any) -> None:  # noqa: ANN401
            with self.changed:
                self.count += len(scalar_records)
                self.changed.notify_all()

    return Delivered()


def _messages_to_stderr() -> None:
    """Print SwanLab's messages on standard error: standard output may carry data (jsonl)."""
    try:
        from swanlab.sdk.internal.pkg import console  # noqa: PLC0415 - SwanLab 0.10's printer
    except ImportError:
        return
    printer = getattr(console, "c", None)
    if printer is not None and hasattr(printer, "stderr"):
        printer.stderr = True


def _write_sooner(run: Any) -> None:  # noqa: ANN401 - SwanLab internals
    """Let SwanLab 0.10's writer thread store its batch after WRITER_IDLE instead of 0.5 s."""
    consumer: Any = getattr(getattr(run, "_components", None), "consumer", None)
    if isinstance(getattr(consumer, "_flush_timeout", None), (int, float)):
        consumer._flush_timeout = WRITER_IDLE  # noqa: SLF001 - no public setting for it


def _file_writer(run: Any) -> Any:  # noqa: ANN401 - SwanLab internals
    """The writer of the run's file (SwanLab 0.10 keeps it in its core), or None."""
    store = getattr(getattr(run, "_core", None), "_store", None)
    return store if callable(getattr(store, "ensure_flushed", None)) else None


def _same(stored: float, value: float) -> bool:
    return (math.isnan(stored) and math.isnan(value)) or stored == value


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class SwanLabBackend:
    """Logs to one SwanLab run in `project`.

    `mode` defaults to ``$SWANLAB_MODE``, else SwanLab's own default (online, which needs a
    login). `logdir` is the folder of SwanLab's run folders (SwanLab's default: ``./swanlog``).
    """

    preferred_batch_size = 10_000
    """Each flush waits for SwanLab's writer thread (WRITER_IDLE at least): large batches."""

    def __init__(
        self,
        *,
        project: str | None = None,
        mode: str | None = None,
        logdir: str | os.PathLike[str] | None = None,
        group: str | None = None,
        workspace: str | None = None,
    ) -> None:
        self.project = project or DEFAULT_PROJECT
        self.mode = mode or None
        self.logdir = None if logdir in (None, "") else str(logdir)
        self.group = group or None
        self.workspace = workspace or None
        self._run: Any = None
        self._delivered: Any = None
        self._writer: Any = None
        self._resume: dict[str, Any] = {}
        self._reset({})
        self._sessions: list[str] = []
        self._group: str | None = None
        self._tags: list[str] = []
        self._url: str | None = None
        self._online = False
        self._local = False
        self._closed = False

    # -- the run ------------------------------------------------------------------------------

    def open(self, run: RunInfo) -> None:
        """Start the run, or continue the one the saved state names (a new session of it)."""
        if self._run is not None:
            return
        swanlab = _import_swanlab()
        mode = self._mode()
        if swanlab.has_run():
            msg = "another SwanLab run is active in this process (SwanLab keeps one per process)"
            raise FatalBackendError(msg)
        _messages_to_stderr()
        try:
            settings = _settings(swanlab)
            self._delivered = _delivery_counter(swanlab)
        except (AttributeError, TypeError, ValueError) as error:  # another SDK layout
            msg = f"this SwanLab is not supported ({error}): install tf-ship[swanlab]"
            raise FatalBackendError(msg) from error
        if mode == "online" and not settings.api_key:
            raise FatalBackendError(LOGIN_HINT)
        saved_id = _text(run.state.get("run_id"))
        self._reset(run.state if saved_id else {})
        log_dir = self.logdir or _text(run.state.get("dir")) or _text(run.first_run.get("dir"))
        name, group, tags = self._naming(run, saved_id)
        try:
            self._run = swanlab.init(
                project=self.project,
                workspace=self.workspace,
                mode=mode,
                log_dir=log_dir,
                name=name,
                group=group,
                tags=tags or None,
                id=saved_id,
                resume="allow" if saved_id else None,
                settings=settings,
                callbacks=[self._delivered],
            )
        except ImportError as error:  # local mode without SwanLab's dashboard package
            msg = f"SwanLab cannot start the run: {error}"
            raise FatalBackendError(msg) from error
        except ValueError as error:  # a name or setting SwanLab refuses (pydantic's errors)
            msg = f"SwanLab refused to start the run: {error}"
            raise FatalBackendError(msg) from error
        self._started(mode)
        if saved_id and mode != "online":
            self._restore(Path(self._run.dir), saved_id)

    def _mode(self) -> str:
        mode = (self.mode or os.environ.get("SWANLAB_MODE") or "online").strip().lower()
        if mode not in MODES:
            msg = f"unknown SwanLab mode {mode!r} (use one of {', '.join(MODES)})"
            raise FatalBackendError(msg)
        return mode

    def _started(self, mode: str) -> None:
        """Note what the started run is: its id, folder, writer and address."""
        run = self._run
        self._closed = False
        _write_sooner(run)
        self._writer = _file_writer(run)
        if self._writer is None:
            logger.warning(
                "SwanLab: this version keeps its run file elsewhere: a flush cannot wait for "
                "the file, so what SwanLab buffered at a crash is lost (at-least-once fails)"
            )
        folder = Path(run.dir)
        self._sessions.append(str(folder))
        self._resume = {
            "run_id": str(run.id),
            "name": str(run.name),
            "dir": str(folder.parent.absolute()),
        }
        self._online = mode == "online"
        self._local = mode == "local"
        self._url = None
        if self._online:
            try:
                self._url = str(run.url)
            except ValueError:  # SwanLab has no address for this run
                self._url = None

    def _reset(self, state: Mapping[str, Any]) -> None:
        """Start from the saved state, or from nothing (a new run, or the next segment's)."""
        keys = state.get("keys")
        self._keys = KeyMap(
            {str(k): str(v) for k, v in keys.items()} if isinstance(keys, Mapping) else None
        )
        self._saved_renames = len(self._keys.renamed())
        events = state.get("events")
        self._next = events if isinstance(events, int) and events >= 0 else 0
        """The position of the next event in the run (the SwanLab step of its row)."""
        self._flushed = self._next
        self._scalars = 0
        """Scalars handed to SwanLab in this session (what its writer thread must store)."""
        self._handed_over: set[tuple[FileIdentity | None, int]] = set()
        self._held: dict[int, dict[str, float]] = {}
        """Scalars earlier sessions stored past the saved position, by SwanLab step."""
        self._rounded = 0

    def _naming(
        self, run: RunInfo, saved_id: str | None
    ) -> tuple[str | None, str | None, list[str]]:
        """Name, group and tags: a restart's are derived from the first run's."""
        if saved_id:
            self._group = _text(run.state.get("group"))
            self._tags = [str(tag) for tag in run.state.get("tags") or ()]
            return _text(run.state.get("name")), self._group, self._tags
        first_name = _text(run.first_run.get("name"))
        if run.segment and first_name:
            self._group, self._tags = self.group or first_name, ["restart"]
            return f"{first_name}-restart{run.segment}", self._group, self._tags
        self._group, self._tags = self.group, []
        return run.run_name or Path(run.logdir).absolute().name or None, self.group, []

    def _restore(self, folder: Path, run_id: str) -> None:
        """Read what earlier sessions stored past the saved position, and their config."""
        earlier = [d for d in session_dirs(folder.parent, run_id) if d != folder]
        for session in earlier:
            for key, step, value in scalars(session):
                if step >= self._flushed:
                    self._held.setdefault(step, {})[key] = value
        if self._held:
            logger.info(
                "SwanLab: %d rows after the last saved position are in the run already; "
                "they are not sent again",
                len(self._held),
            )
        config = earlier[-1] / "files" / "config.yaml" if earlier else None
        if config is not None and config.is_file():
            self._restore_config(config)

    def _restore_config(self, path: Path) -> None:
        import yaml  # noqa: PLC0415 - only a resumed run needs it

        try:
            content = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            logger.warning("SwanLab: cannot read the earlier config %s (%s)", path, error)
            return
        if isinstance(content, Mapping):
            values = {
                str(key): entry["value"]
                for key, entry in content.items()
                if isinstance(entry, Mapping) and "value" in entry
            }
            if values:
                self._require_run().config.update(values)

    def _require_run(self) -> Any:  # noqa: ANN401 - a swanlab Run
        if self._run is None:
            msg = "the swanlab backend is not open"
            raise FatalBackendError(msg)
        return self._run

    def resume_state(self) -> dict[str, Any]:
        """The run (id, name, group, tags, folder), its keys, the events held at the last flush."""
        return {
            **self._resume,
            "group": self._group,
            "tags": list(self._tags),
            "events": self._flushed,
            "keys": dict(self._keys.keys),
        }

    # -- logging ------------------------------------------------------------------------------

    def log_config(self, config: ModelConfig) -> None:
        """Store the model's config as ``config[<model>]`` (written to the run's config file)."""
        self._require_run().config.update({config.model: plain(config.config)})

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Log one row per event; events already handed over are not sent again."""
        run = self._require_run()
        keys = self._keys
        for event in batch:
            if event.offset >= 0:
                where = (event.file, event.offset)
                if where in self._handed_over:
                    continue
                self._handed_over.add(where)
            position = self._next
            self._next += 1
            step = float(event.step)
            if abs(event.step) > EXACT_INTEGERS and int(step) != event.step:
                self._count_rounded(event)
            row = {
                keys.key(metric_name(event.model, event.metric)): event.value,
                keys.key(step_name(event.model)): step,
            }
            if self._held:
                row = self._not_held(position, row, event)
            if row:
                run.log(row, step=position)
                self._scalars += len(row)

    def _count_rounded(self, event: MetricEvent) -> None:
        self._rounded += 1
        if self._rounded == 1:
            logger.warning(
                "SwanLab holds numbers as doubles: step %d of %s is stored as %.17g (steps "
                "beyond 2**53 are rounded; the count is in the final summary)",
                event.step,
                event.key,
                float(event.step),
            )

    def _not_held(
        self, position: int, row: dict[str, float], event: MetricEvent
    ) -> dict[str, float]:
        """The scalars of a row that no earlier session stored (a replay after a crash)."""
        held = self._held.pop(position, None)
        if held is None:
            return row
        missing = {}
        for key, value in row.items():
            if key not in held:
                missing[key] = value
            elif not _same(held[key], value):
                logger.warning(
                    "SwanLab: the run holds %r = %r at step %d where %s at step %d (byte %d of "
                    "the log) should be; logging it anyway",
                    key,
                    held[key],
                    position,
                    event.key,
                    event.step,
                    event.offset,
                )
                missing[key] = value
        return missing

    def flush(self) -> None:
        """Wait until SwanLab's writer thread stored every row, then push its file to the OS."""
        run = self._run
        if run is None:
            return
        delivered = self._delivered
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        with delivered.changed:
            while delivered.count < self._scalars:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    msg = (
                        f"SwanLab's writer stored {delivered.count} of {self._scalars} values "
                        f"after {DELIVERY_TIMEOUT:g} s"
                    )
                    raise TimeoutError(msg)
                delivered.changed.wait(remaining)
        if self._writer is not None:
            self._writer.ensure_flushed()
        self._flushed = self._next
        self._handed_over.clear()
        renamed = self._keys.renamed()
        if len(renamed) != self._saved_renames:
            run.config.update({KEY_MAP_CONFIG: renamed})
            self._saved_renames = len(renamed)

    def close(self, status: RunStatus) -> None:
        """Finish the run with SwanLab's state for `status`; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        run, self._run = self._run, None
        self._writer = None
        if run is None:
            return
        if self._rounded:
            logger.warning(
                "SwanLab: %d steps beyond 2**53 are stored rounded to the nearest double",
                self._rounded,
            )
        state = STATES[status]
        run.finish(state=state, error="tf-ship: shipping failed" if state == "crashed" else None)

    def view_hint(self) -> str | None:
        """`swanlab sync <folders>` offline, `swanlab watch <folder>` local, else the address."""
        if not self._sessions:
            return None
        if self._online:
            return self._url
        if self._local:
            return f"swanlab watch {shlex.quote(self._resume['dir'])}"
        return "swanlab sync " + " ".join(shlex.quote(folder) for folder in self._sessions)


__all__ = ["DEFAULT_PROJECT", "INSTALL_HINT", "LOGIN_HINT", "SwanLabBackend", "plain"]
