"""A backend that writes TensorBoard event files: one run directory per model, ``DIR/<model>``.

Tags are the metric names as logged, one event per (model, step) row, written synchronously and
fsynced by `flush`; configs are text summaries and hyperparameter session starts. Layout, value
limits and why tensorboardX's usual calls are not used: docs/backends.md (TensorBoard); how a
crash is cut back to the last saved state: docs/delivery.md.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import shlex
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tf_ship.backends.base import group_by_model_step
from tf_ship.backends.hints import program
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

INSTALL_HINT = "the tensorboard backend needs tensorboardX: install tf-ship[tensorboard]"
CONFIG_TAG = "config"
MAX_FOLDER_BYTES = 200
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]|[\ud800-\udfff]")
_RESTART_FOLDER = re.compile(r"restart[0-9]+")
_WRITER_NUMBERS = itertools.count()


def folder_name(model: str) -> str:
    r"""A single, safe path component for a model name.

    Names that are safe already (no ``/``, ``\``, control characters, leading dot, at most
    MAX_FOLDER_BYTES bytes) are kept as they are. Any other name has the offending characters
    replaced by ``_`` and gets ``~`` plus a hash of the original name appended, so that ``a/b``
    and ``a_b`` never share a folder and the mapping does not depend on the order models appear.
    """
    safe = _UNSAFE.sub("_", model)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if safe == model and len(safe.encode()) <= MAX_FOLDER_BYTES and safe:
        return safe
    return _hashed_folder(model, safe)


def _hashed_folder(model: str, safe: str) -> str:
    """`safe`, cut to fit, then ``~`` and a hash of the model's name."""
    digest = hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    while len(safe.encode()) > MAX_FOLDER_BYTES - 9:
        safe = safe[:-1]
    return f"{safe}~{digest}"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | float | str]:
    """Flatten nested mappings into ``a.b.c`` keys holding a bool, number or string.

    Lists become their JSON text; None is left out.
    """
    flat: dict[str, bool | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif value is None:
            continue
        elif isinstance(value, (bool, str)):
            flat[name] = value
        elif isinstance(value, (int, float)):
            try:
                flat[name] = float(value)
            except OverflowError:
                flat[name] = str(value)
        else:
            flat[name] = json.dumps(value, default=str, ensure_ascii=False)
    return flat


def config_markdown(config: Mapping[str, Any]) -> str:
    """The config as a fenced YAML code block (markdown, as TensorBoard's text plugin renders)."""
    import yaml  # noqa: PLC0415 - only configs need it

    try:
        text = yaml.safe_dump(
            dict(config), sort_keys=False, default_flow_style=None, allow_unicode=True
        )
    except yaml.YAMLError:
        text = json.dumps(config, indent=2, default=str, ensure_ascii=False) + "\n"
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}yaml\n{text}{fence}\n"


def _digest(config: Mapping[str, Any]) -> str:
    """A short fingerprint of a config, to recognise it after a restart."""
    text = json.dumps(config, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _truncate(path: Path, size: int) -> None:
    """Cut an event file back to `size` bytes (and sync it); report a file that lost bytes."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        logger.warning("TensorBoard: event file %s of the saved state is gone", path)
        return
    try:
        actual = os.fstat(fd).st_size
        if actual > size:
            logger.info(
                "TensorBoard: cutting %s back to %d bytes (%d written after the last save)",
                path,
                size,
                actual - size,
            )
            os.ftruncate(fd, size)
            os.fsync(fd)
        elif actual < size:
            logger.warning(
                "TensorBoard: %s has %d bytes, fewer than the %d saved", path, actual, size
            )
    finally:
        os.close(fd)


def _default_directory(run_name: str | None) -> Path:
    name = run_name or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    return Path("runs") / folder_name(name)


class _ModelWriter:
    """One model's event file: tensorboardX's synchronous `EventsWriter`."""

    def __init__(self, tbx: Any, directory: Path, token: str) -> None:  # noqa: ANN401
        directory.mkdir(parents=True, exist_ok=True)
        suffix = f".{os.getpid()}.{next(_WRITER_NUMBERS)}.{token}"
        self._tbx = tbx
        self._writer = tbx.EventsWriter(str(directory / "events"), suffix)
        name = getattr(self._writer, "_file_name", None)
        found = [Path(name)] if name else sorted(directory.glob(f"events.out.tfevents.*{suffix}"))
        self.path: Path | None = found[0] if len(found) == 1 else None

    def size(self) -> int | None:
        """The file's size on disk (after `flush`: everything written so far)."""
        if self.path is None:
            return None
        try:
            return self.path.stat().st_size
        except OSError:
            return None

    def write(self, step: int, values: Sequence[Any]) -> None:
        """Write one event holding `values` (Summary.Value messages) at `step`."""
        summary = self._tbx.Summary(value=values)
        self._writer.write_event(self._tbx.Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        """Write the buffered events to the file and fsync it."""
        self._writer.flush()
        if self.path is not None and not self.path.exists():
            msg = f"the event file {self.path} was removed while being written"
            raise FatalBackendError(msg)

    def close(self) -> None:
        """Flush and close the file; the file is closed even when flushing fails."""
        try:
            self._writer.flush()
        finally:
            # EventsWriter.close() flushes first and leaves the file open when that raises.
            records = getattr(self._writer, "_py_recordio_writer", None)
            if records is not None:
                records.close()
            else:
                self._writer.close()


class _TensorBoardX:
    """The few tensorboardX names the backend uses, imported on first use."""

    def __init__(self) -> None:
        try:
            with import_turn():
                from tensorboardX import summary  # noqa: PLC0415 - lazy: the SDK is optional
                from tensorboardX.event_file_writer import EventsWriter  # noqa: PLC0415
                from tensorboardX.proto.event_pb2 import Event  # noqa: PLC0415
                from tensorboardX.proto.summary_pb2 import Summary  # noqa: PLC0415
        except ImportError as error:
            raise FatalBackendError(INSTALL_HINT) from error
        self.EventsWriter = EventsWriter
        self.Event = Event
        self.Summary = Summary
        self.summary = summary


class TensorBoardBackend:
    """Writes TensorBoard event files, one run directory per model under `directory`.

    `directory` defaults to ``./runs/<run name or UTC timestamp>``; a resumed run reuses the
    directory recorded in its state.
    """

    replay_safe = True
    """A replay from any saved state is cut back first (`tf_ship.contract.ReplaySafe`)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory: Path | None = Path(directory) if directory else None
        self._requested = self.directory
        self._root: Path | None = None
        """The folder holding the first run and the restarts: what the view hint shows."""
        self._segment = 0
        self._tbx: _TensorBoardX | None = None
        self._reset()

    # -- the run ------------------------------------------------------------------------------

    def open(self, run: RunInfo) -> None:
        """Import tensorboardX and choose the directory; writers are created on first use.

        After the application's N-th restart (`run.segment` N), a new run's directory is
        ``restart<N>`` in the first run's.
        """
        self._tbx = _TensorBoardX()
        if self._closed:  # the next segment's run: nothing of the previous one is kept
            self._reset()
        self._segment = run.segment
        recorded = run.state.get("directory")
        if run.segment:
            first = run.first_run.get("directory") or self._requested
            root = Path(first or _default_directory(run.run_name)).absolute()
            self.directory = Path(recorded or root / f"restart{run.segment}").absolute()
        else:
            self.directory = Path(
                recorded or self._requested or _default_directory(run.run_name)
            ).absolute()
            root = self.directory
        # a run of the layout before (a sibling DIR-restart<N>) is shown with its siblings
        inside = self.directory == root or root in self.directory.parents
        self._root = root if inside else self.directory.parent
        self.directory.mkdir(parents=True, exist_ok=True)
        if recorded and Path(recorded).absolute() == self.directory:
            self._cut_back(self.directory, run.state)

    def _reset(self) -> None:
        """Start with nothing of an earlier run (the first open, or the next segment's run)."""
        self._writers: dict[str, _ModelWriter] = {}
        self._folders: dict[str, str] = {}
        self._configs: dict[str, str] = {}
        """Digest of the config written last, per model."""
        self._token = secrets.token_hex(4)
        self._durable_sizes: dict[str, int] = {}
        """Size of each event file of this session at the last flush (relative paths)."""
        self._durable_configs: dict[str, str] = {}
        self._written: set[tuple[FileIdentity, int]] = set()
        """Lines written since the last flush: a batch retried after a failed flush skips them."""
        self._closed = False

    def _cut_back(self, directory: Path, state: Mapping[str, Any]) -> None:
        """Undo what a crashed session wrote after its last saved state (see the module doc)."""
        files = state.get("files")
        files = dict(files) if isinstance(files, Mapping) else {}
        for relative, size in files.items():
            _truncate(directory / str(relative), int(size))
        token = state.get("session")
        if isinstance(token, str) and re.fullmatch(r"[0-9a-f]+", token):
            for path in sorted(directory.glob(f"*/events.out.tfevents.*.{token}")):
                if path.relative_to(directory).as_posix() not in files:
                    logger.info("TensorBoard: removing %s (written after the last save)", path)
                    path.unlink(missing_ok=True)
        folders = state.get("folders")
        if isinstance(folders, Mapping):
            self._folders = {str(k): str(v) for k, v in folders.items()}
        configs = state.get("configs")
        if isinstance(configs, Mapping):
            self._configs = {str(k): str(v) for k, v in configs.items()}
            self._durable_configs = dict(self._configs)

    def resume_state(self) -> dict[str, Any]:
        """What a restart needs: the directory, and what to cut back (see the module doc).

        The directory, so that a restarted shipper writes into the same runs; and, as of the
        last flush, the size of this session's files and the configs written.
        """
        return {
            "directory": str(self.directory) if self.directory else None,
            "session": self._token,
            "folders": dict(self._folders),
            "files": dict(self._durable_sizes),
            "configs": dict(self._durable_configs),
        }

    def prepare(self, batch: Sequence[MetricEvent]) -> bool:
        """Create the event files of the batch's new models; True when there were any.

        The engine then saves `resume_state()`, which lists the new files, before the batch
        is written: every file that can hold a metric is known to the saved state.
        """
        new = False
        for model in dict.fromkeys(event.model for event in batch):
            if model not in self._writers:
                self._writer(model)
                new = True
        return new

    def _require_open(self) -> tuple[_TensorBoardX, Path]:
        if self._tbx is None or self.directory is None or self._closed:
            msg = "the tensorboard backend is not open"
            raise RuntimeError(msg)
        return self._tbx, self.directory

    def _writer(self, model: str) -> _ModelWriter:
        writer = self._writers.get(model)
        if writer is not None:
            return writer
        tbx, directory = self._require_open()
        folder = self._folders.get(model) or self._new_folder(model)
        taken = {f for m, f in self._folders.items() if m != model}
        if folder in taken:  # only a hash collision gets here; numbered in order of appearance
            folder = next(
                f"{folder}~{n}" for n in itertools.count(2) if f"{folder}~{n}" not in taken
            )
        writer = _ModelWriter(tbx, directory / folder, self._token)
        writer.flush()  # the header is on disk: the file's size is where its events start
        self._folders[model] = folder
        self._writers[model] = writer
        self._remember_size(writer)
        return writer

    def _new_folder(self, model: str) -> str:
        """`folder_name`, but never a restart folder's name in the first run's directory."""
        folder = folder_name(model)
        if self._segment == 0 and _RESTART_FOLDER.fullmatch(folder):
            return _hashed_folder(model, folder)
        return folder

    def _remember_size(self, writer: _ModelWriter) -> None:
        size = writer.size()
        if writer.path is not None and size is not None and self.directory is not None:
            self._durable_sizes[writer.path.relative_to(self.directory).as_posix()] = size

    def folder_of(self, model: str) -> Path | None:
        """The run directory of a model, once something was written for it."""
        folder = self._folders.get(model)
        return None if folder is None or self.directory is None else self.directory / folder

    # -- data ---------------------------------------------------------------------------------

    def log_config(self, config: ModelConfig) -> None:
        """Write the config as text and as hyperparameters, unless it is unchanged.

        The file is flushed at once: the config counts as written from then on.
        """
        digest = _digest(config.config)
        if self._configs.get(config.model) == digest:
            return
        writer = self._writer(config.model)
        tbx, _ = self._require_open()
        text = tbx.summary.text(CONFIG_TAG, config_markdown(config.config))
        _, session_start, _ = tbx.summary.hparams(flatten(config.config), {})
        writer.write(config.version, [*text.value, *session_start.value])
        writer.flush()
        self._configs[config.model] = digest
        self._durable_configs[config.model] = digest
        self._remember_size(writer)

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Write one event per run of consecutive lines with the same model and step."""
        value_type = self._require_open()[0].Summary.Value
        written = self._written
        if written:
            batch = [e for e in batch if e.file is None or (e.file, e.offset) not in written]
        for model, step, events in group_by_model_step(batch):
            values = [value_type(tag=e.metric, simple_value=e.value) for e in events]
            self._writer(model).write(step, values)
            written.update((e.file, e.offset) for e in events if e.file is not None)

    def flush(self) -> None:
        """Write every model's events to its file and fsync it; remember the sizes."""
        for writer in self._writers.values():
            writer.flush()
        for writer in self._writers.values():
            self._remember_size(writer)
        self._durable_configs = dict(self._configs)
        self._written.clear()

    def close(self, status: RunStatus) -> None:  # noqa: ARG002 - event files have no run status
        """Flush and close every writer, even when one fails; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        writers, self._writers = list(self._writers.values()), {}
        first_error: BaseException | None = None
        for writer in writers:
            try:
                writer.close()
            except Exception as error:  # noqa: BLE001 - close the others, then raise the first
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    def view_hint(self) -> str | None:
        """The command that shows these curves and those of the other application runs."""
        shown = self._root or self.directory
        return None if shown is None else tensorboard_command(shown)


def tensorboard_command(logdir: Path) -> str:
    """``tensorboard --logdir LOGDIR``, spelt so that it runs as printed here (`hints.program`).

    tensorboardX writes the files without TensorBoard itself (``tf-ship[all]`` does not install
    it).
    """
    return f"{program('tensorboard')} --logdir {shlex.quote(str(logdir))}"


def local_outputs(options: Mapping[str, Any]) -> dict[str, str]:
    """What the start-up check must find writable (`tf_ship.shipper.places`), by option keyword."""
    return {"directory": str(options.get("directory") or "runs")}


__all__ = ["TensorBoardBackend", "config_markdown", "flatten", "folder_name"]
