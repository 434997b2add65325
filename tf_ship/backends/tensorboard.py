"""A backend that writes TensorBoard event files: one run directory per model.

Layout::

    DIR/                      --tensorboard-dir, default ./runs/<run name or UTC timestamp>
        <model>/              one TensorBoard run per model (purging and steps are per run)
            events.out.tfevents.<time>.<host>.<pid>.<n>.<random>

Each metric is a scalar whose tag is the metric name, exactly as logged (tensorboardX's
`add_scalar` would rewrite ``l2 error (rel.)`` as ``l2_error__rel._`` and could make two
metrics collide), at the TorchFort step. Each (model, step) row of consecutive lines becomes one
event holding all its values: TensorBoard reads that back exactly like one event per value, and
writing it is several times faster.

What TensorBoard makes of the values and steps:

- values are stored as float32 (``simple_value``): about 7 significant digits; ``1e+300``
  becomes ``inf`` and ``4.94066e-324`` becomes ``0``; NaN, ``-nan``, ``inf``, ``-inf`` and ``-0``
  arrive as such.
- steps are int64 in the event file and read back exactly, negative ones and those beyond 2**31
  or 2**53 included. TensorBoard's web page holds steps as JavaScript numbers, so it shows steps
  beyond 2**53 rounded. Steps that go backwards are kept (files with ``brain.Event:2`` are
  purged only by an explicit restart marker), so a restarted application draws over its own
  earlier points.

Events go through tensorboardX's synchronous `EventsWriter`, not a `SummaryWriter`: a
SummaryWriter hands events to a background thread through a queue, and its `flush()` flushes the
file without waiting for that queue, so up to `max_queue` events written before `flush()` are
not in the file when it returns. `flush` here is a real barrier (written and fsynced).

A model's config becomes a text summary (what ``add_text("config", ...)`` writes, tag
``config/text_summary``: a YAML code block) when it appears or changes, at step = the config's
version, plus a hyperparameter session start in the model's own run (flattened keys such as
``optimizer.parameters.learning_rate``), so that the HPARAMS dashboard lists each model with
its config. tensorboardX's `add_hparams` is not used: it writes into a new sub-run named after
the current time and copies the metrics there, which shows up as extra, confusing runs.
No experiment summary is written either: TensorBoard uses the first one it finds for all runs,
while without one it builds the table from every run's session start. TensorBoard keeps the
first session start of a run, so a changed config shows in the text, not in the table.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tf_ship.backends.base import FatalBackendError, group_by_model_step
from tf_ship.shipper.events import MetricEvent, ModelConfig, RunInfo, RunStatus

INSTALL_HINT = "the tensorboard backend needs tensorboardX: install tf-ship[tensorboard]"
CONFIG_TAG = "config"
MAX_FOLDER_BYTES = 200
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]|[\ud800-\udfff]")
_WRITER_NUMBERS = itertools.count()
_PROCESS_TOKEN = secrets.token_hex(3)


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


def _default_directory(run_name: str | None) -> Path:
    name = run_name or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    return Path("runs") / folder_name(name)


class _ModelWriter:
    """One model's event file: tensorboardX's synchronous `EventsWriter`."""

    def __init__(self, tbx: Any, directory: Path) -> None:  # noqa: ANN401 - untyped module
        directory.mkdir(parents=True, exist_ok=True)
        suffix = f".{os.getpid()}.{next(_WRITER_NUMBERS)}.{_PROCESS_TOKEN}"
        self._tbx = tbx
        self._writer = tbx.EventsWriter(str(directory / "events"), suffix)
        found = sorted(directory.glob(f"events.out.tfevents.*{suffix}"))
        self.path: Path | None = found[0] if len(found) == 1 else None

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

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory: Path | None = Path(directory) if directory else None
        self._tbx: _TensorBoardX | None = None
        self._writers: dict[str, _ModelWriter] = {}
        self._folders: dict[str, str] = {}
        self._configs: dict[str, Mapping[str, Any]] = {}
        self._closed = False

    # -- the run ------------------------------------------------------------------------------

    def open(self, run: RunInfo) -> None:
        """Import tensorboardX and choose the directory; writers are created on first use."""
        self._tbx = _TensorBoardX()
        recorded = run.state.get("directory")
        if recorded:
            self.directory = Path(recorded)
        elif self.directory is None:
            self.directory = _default_directory(run.run_name)
        self.directory = Path(self.directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)

    def resume_state(self) -> dict[str, Any]:
        """The directory, so that a restarted shipper writes into the same runs."""
        return {"directory": str(self.directory) if self.directory else None}

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
        folder = folder_name(model)
        taken = set(self._folders.values())
        if folder in taken:  # only a hash collision gets here; numbered in order of appearance
            folder = next(
                f"{folder}~{n}" for n in itertools.count(2) if f"{folder}~{n}" not in taken
            )
        writer = _ModelWriter(tbx, directory / folder)
        self._folders[model] = folder
        self._writers[model] = writer
        return writer

    def folder_of(self, model: str) -> Path | None:
        """The run directory of a model, once something was written for it."""
        folder = self._folders.get(model)
        return None if folder is None or self.directory is None else self.directory / folder

    # -- data ---------------------------------------------------------------------------------

    def log_config(self, config: ModelConfig) -> None:
        """Write the config as text and as hyperparameters, unless it is unchanged."""
        if self._configs.get(config.model) == config.config:
            return
        writer = self._writer(config.model)
        tbx, _ = self._require_open()
        text = tbx.summary.text(CONFIG_TAG, config_markdown(config.config))
        _, session_start, _ = tbx.summary.hparams(flatten(config.config), {})
        writer.write(config.version, [*text.value, *session_start.value])
        self._configs[config.model] = config.config

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Write one event per run of consecutive lines with the same model and step."""
        value_type = self._require_open()[0].Summary.Value
        for model, step, events in group_by_model_step(batch):
            values = [value_type(tag=e.metric, simple_value=e.value) for e in events]
            self._writer(model).write(step, values)

    def flush(self) -> None:
        """Write every model's events to its file and fsync it."""
        for writer in self._writers.values():
            writer.flush()

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
        """The command that shows these curves."""
        return None if self.directory is None else f"tensorboard --logdir {self.directory}"

    def describe(self) -> dict[str, Any]:
        """Where the runs went, for the final summary."""
        return {"directory": str(self.directory), "models": dict(self._folders)}


__all__ = ["TensorBoardBackend", "config_markdown", "flatten", "folder_name"]
