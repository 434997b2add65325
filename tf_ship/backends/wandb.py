"""A backend that logs to Weights & Biases: one wandb run, one x-axis per model.

Each model gets its own x-axis, the TorchFort step: the first time a model appears the backend
defines ``<model>/step`` and ``<model>/*`` with ``step_metric="<model>/step"``, then logs one
row per (model, step) of consecutive lines::

    run.log({"<model>/<metric>": value, ..., "<model>/step": step})

``step=`` is never passed, so wandb's own ``_step`` just counts rows and nothing is dropped when
TorchFort steps go backwards, repeat or differ between models. A model's config goes to
``run.config[<model>]``, replaced (``allow_val_change=True``) when the file changes.

What wandb 0.31 does with the values (checked in its transaction log, see `wandb_records`):

- NaN (and ``-nan``), ``inf``, ``-inf`` arrive as such (JSON ``NaN``, ``Infinity``,
  ``-Infinity``); ``-0`` arrives as ``-0`` (sign kept); ``1e+300`` and ``4.94066e-324`` keep
  their double value.
- steps are sent as Python ints and arrive as exact JSON integers: negative ones, steps that go
  backwards, and steps beyond 2**53 (up to the int64 limits) are all kept, digit for digit.
  What the wandb web page does with integers beyond 2**53 was not checked (offline only); a
  JavaScript chart holds them as doubles.
- ``define_metric`` is called with ``step_sync=False``: every row carries its step anyway, and
  wandb-core's step sync splits the step metric's name at dots, so for a model such as
  ``v1.2`` it would add a bogus ``v1`` -> ``2/step`` = 0 item to every row, which a reader that
  joins nested keys with dots (wandb's convention) takes for ``v1.2/step`` and loses the step.
- wandb-core matches ``<model>/*`` globs in a random order when several match, and skips keys
  that start with ``_``: when a key of one model also matches another model's glob (models ``a``
  and ``a/b``) or starts with ``_``, that key is also defined by name, which takes precedence.
  Names with ``*`` cannot be defined (wandb allows ``*`` only as a final glob): such a model's
  rows still carry ``<model>/step`` but get no x-axis definition.
- a metric literally named ``step`` would collide with the x-axis key: it is logged as
  ``<model>/step (metric)`` (and ``step (metric)`` as ``step (metric) (metric)``, and so on, so
  that no two names collide). A metric that repeats within one (model, step) starts a new row,
  so that no value overwrites another.

Flushing: wandb 0.31 has no flush. ``run.log`` hands the row to wandb-core (a separate process)
without waiting; `flush` waits for a round trip through wandb-core's record handler (it reads
``run.step``), which returns only after the handler has taken every row logged before and
queued it, in order, for its writer. That is as far as wandb lets a client wait: the writer
keeps the transaction log's current 32 KiB block in memory until the block is full or the run
is closed, and an online run uploads in the background. A row already handed over is not sent
again when the engine retries a batch after a failed `flush`. A (model, step) whose lines fall
into two batches becomes two rows: rows cannot be completed later.

Closing: ``run.finish(exit_code=0)`` for FINISHED and KILLED, ``exit_code=1`` for FAILED; a
second `close` does nothing, and the run is let go of even when ``finish`` raises. ``finish``
waits for wandb-core to process the exit (online: until the upload is done), but tells the
service that the run is over with a one-way message, so an offline run's transaction log may
still lack its last block when ``finish`` returns: the file is complete once the service has
closed the run, at the latest when the service exits (``wandb.teardown()``, which wandb runs at
interpreter exit). The backend does not tear the service down: other runs of the process may
use it.

Resuming: `resume_state` gives the run id and directory, and `open` resumes that run
(``resume="allow"``). Online, wandb continues the same run. Offline, each session writes a new
``offline-run-<start second>-<id>`` folder that ``wandb sync`` joins into the same run; two
sessions of one run started within the same second would share (and overwrite) one folder.

wandb is imported in `open`, never at import time; without it `open` raises
`FatalBackendError`. The API key is wandb's business: nothing here reads, asks for or prints it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tf_ship.backends.base import FatalBackendError, group_by_model_step
from tf_ship.shipper.events import FileIdentity, MetricEvent, ModelConfig, RunInfo, RunStatus

INSTALL_HINT = "the wandb backend needs the wandb package: install tf-ship[wandb]"
STEP = "step"
_STEP_LIKE = re.compile(r"step(?: \(metric\))*")


def step_key(model: str) -> str:
    """The key of a model's x-axis: ``<model>/step``."""
    return f"{model}/{STEP}"


def metric_key(model: str, metric: str) -> str:
    """The key a metric is logged under: ``<model>/<metric>``, never the x-axis key.

    ``step`` becomes ``step (metric)``; a name that already looks like that gets one more
    `` (metric)``, so that different metrics never share a key.
    """
    if _STEP_LIKE.fullmatch(metric):
        metric += " (metric)"
    return f"{model}/{metric}"


def rows(batch: Sequence[MetricEvent]) -> Iterator[tuple[str, dict[str, Any], list[MetricEvent]]]:
    """Yield (model, row, events) with one row per (model, step) of consecutive events.

    A metric that comes again within one (model, step) starts a new row.
    """
    for model, step, events in group_by_model_step(batch):
        row: dict[str, Any] = {}
        taken: list[MetricEvent] = []
        for event in events:
            key = metric_key(model, event.metric)
            if key in row:
                row[step_key(model)] = step
                yield model, row, taken
                row, taken = {}, []
            row[key] = event.value
            taken.append(event)
        row[step_key(model)] = step
        yield model, row, taken


def plain(value: Any) -> Any:  # noqa: ANN401 - any YAML value
    """A YAML value as plain JSON-like Python: dicts with str keys, lists, scalars, text."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _import_wandb() -> Any:  # noqa: ANN401 - the wandb module
    try:
        import wandb  # noqa: PLC0415 - an optional extra, imported only when a run starts
    except ImportError as error:
        raise FatalBackendError(INSTALL_HINT) from error
    return wandb


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class WandbBackend:
    """Logs to one wandb run; the keywords are ``wandb.init``'s (see `tf_ship.backends.options`).

    `mode` defaults to ``$WANDB_MODE``, else wandb's own default (online). `run_id` resumes
    that run; without it, the id saved by `resume_state` is used, else wandb makes one.
    """

    def __init__(  # noqa: PLR0913 - one keyword per wandb.init argument
        self,
        *,
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        mode: str | None = None,
        tags: Sequence[str] | None = None,
        run_id: str | None = None,
        job_type: str | None = "train",
    ) -> None:
        self.project = project
        self.entity = entity
        self.group = group
        self.directory = None if directory in (None, "") else str(directory)
        self.mode = mode
        self.tags = list(tags or ())
        self.run_id = run_id
        self.job_type = job_type or "train"
        self._run: Any = None
        self._closed = False
        self._resume: dict[str, str | None] = {"run_id": run_id, "dir": self.directory}
        self._models: set[str] = set()
        self._keys: set[str] = set()
        self._handed_over: set[tuple[FileIdentity | None, int]] = set()
        self._rows = 0
        self._acknowledged_step: int | None = None
        self._view: str | None = None

    # -- the run ------------------------------------------------------------------------------

    def open(self, run: RunInfo) -> None:
        """Start the wandb run, or resume the one named by `run_id` or the saved state."""
        if self._run is not None:
            return
        wandb = _import_wandb()
        run_id = self.run_id or _text(run.state.get("run_id"))
        directory = self.directory or _text(run.state.get("dir"))
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        try:
            self._run = wandb.init(
                project=self.project,
                entity=self.entity,
                group=self.group,
                tags=self.tags or None,
                job_type=self.job_type,
                name=run.run_name,
                id=run_id,
                resume="allow" if run_id else None,
                dir=directory,
                mode=self.mode or os.environ.get("WANDB_MODE") or None,
                config=None,
                reinit="create_new",
                settings=wandb.Settings(console="off"),
            )
        except (wandb.errors.AuthenticationError, wandb.errors.UsageError) as error:
            msg = f"wandb refused to start the run: {error}"
            raise FatalBackendError(msg) from error
        self._closed = False
        self._resume = {"run_id": str(self._run.id), "dir": self._root_dir(directory)}
        settings = getattr(self._run, "settings", None)
        offline = getattr(settings, "mode", None) == "offline"
        sync_dir = getattr(settings, "sync_dir", None)
        url = getattr(self._run, "url", None)
        self._view = f"wandb sync {sync_dir}" if offline and sync_dir else (url or None)

    def _root_dir(self, directory: str | None) -> str | None:
        root = getattr(getattr(self._run, "settings", None), "root_dir", None)
        return str(root) if root else directory

    def _require_run(self) -> Any:  # noqa: ANN401 - a wandb Run
        if self._run is None:
            msg = "the wandb backend is not open"
            raise FatalBackendError(msg)
        return self._run

    def resume_state(self) -> dict[str, str | None]:
        """The run id and wandb directory, for `open` to resume the same run next time."""
        return dict(self._resume)

    # -- logging ------------------------------------------------------------------------------

    def log_config(self, config: ModelConfig) -> None:
        """Store the model's config as ``run.config[<model>]``, replacing an older one."""
        run = self._require_run()
        run.config.update({config.model: plain(config.config)}, allow_val_change=True)

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Log one row per (model, step); events already handed over are not sent again."""
        run = self._require_run()
        handed_over = self._handed_over
        if handed_over:
            batch = [e for e in batch if e.offset < 0 or (e.file, e.offset) not in handed_over]
        for model, row, events in rows(batch):
            self._define(run, model, row)
            run.log(row)
            self._rows += 1
            handed_over.update((e.file, e.offset) for e in events if e.offset >= 0)

    def _define(self, run: Any, model: str, row: Mapping[str, Any]) -> None:  # noqa: ANN401
        """Give a new model its x-axis, and new keys that a glob would miss their own."""
        x_axis = step_key(model)
        if "*" in model:
            return  # wandb refuses "*" in metric names; the rows still carry the step
        if model not in self._models:
            self._models.add(model)
            run.define_metric(x_axis)
            run.define_metric(f"{model}/*", step_metric=x_axis, step_sync=False)
        for key in row:
            if key in self._keys or key == x_axis:
                continue
            self._keys.add(key)
            if "*" not in key and self._glob_may_miss(model, key):
                run.define_metric(key, step_metric=x_axis, step_sync=False)

    def _glob_may_miss(self, model: str, key: str) -> bool:
        """True when wandb-core might not apply ``<model>/*`` to `key`."""
        if key.startswith("_"):
            return True
        return any(other != model and key.startswith(f"{other}/") for other in self._models)

    def flush(self) -> None:
        """Wait until wandb-core's handler has taken every row so far (wandb has no flush)."""
        run = self._run
        if run is None:
            return
        if not run.disabled and run.settings.mode != "shared":
            self._acknowledged_step = run.step  # a round trip through wandb-core
        self._handed_over.clear()

    def close(self, status: RunStatus) -> None:
        """Finish the run: exit code 1 for FAILED, else 0; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        run, self._run = self._run, None
        self._handed_over.clear()
        if run is None:
            return
        run.finish(exit_code=1 if status is RunStatus.FAILED else 0)

    def view_hint(self) -> str | None:
        """`wandb sync ...` for an offline run, the run's address for an online one."""
        return self._view

    def describe(self) -> dict[str, Any]:
        """The run id, directory and rows logged, for the final summary."""
        return {**self._resume, "rows": self._rows}


__all__ = ["INSTALL_HINT", "WandbBackend", "metric_key", "plain", "rows", "step_key"]
