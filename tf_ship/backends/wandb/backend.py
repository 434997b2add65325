"""The wandb backend: one wandb run, one x-axis per model.

Rows are packed by `rows`, a resumed run's replay is checked by `replay`, and `flush` waits on
the run's own transaction log (`transaction_log`). What the run looks like, and why:
docs/backends.md (wandb); what a crash costs and why wandb 0.31 is needed: docs/delivery.md.
wandb is imported in `open`, never at import time; the API key is wandb's business (`login`).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import operator
import os
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tf_ship.backends.base import FatalBackendError, plain
from tf_ship.backends.hints import program
from tf_ship.backends.imports import import_turn
from tf_ship.backends.wandb.login import (
    OFFLINE_MODES,
    base_url,
    credentials_found,
    effective_mode,
    no_credentials_message,
    stdin_not_a_terminal,
)
from tf_ship.backends.wandb.replay import Replay, earlier_rows
from tf_ship.backends.wandb.rows import rows, step_key
from tf_ship.backends.wandb.transaction_log import TransactionLogTail
from tf_ship.contract import FileIdentity, MetricEvent, ModelConfig, RunInfo, RunStatus

logger = logging.getLogger("tf_ship")

INSTALL_HINT = "the wandb backend needs the wandb package: install tf-ship[wandb]"
DEFAULT_PROJECT = "torchfort"
"""The project of runs without ``--wandb-project`` or ``$WANDB_PROJECT``."""
LOG_FLUSH_INTERVAL = 0.05
"""Seconds between two writes of wandb-core's partial block to the transaction log."""
DURABLE_TIMEOUT = 30.0
"""Seconds `flush` waits for the transaction log to hold every row (then it fails, to retry)."""


_FILE = operator.attrgetter("file")
_OFFSET = operator.attrgetter("offset")


def _import_wandb() -> Any:  # noqa: ANN401 - the wandb module
    try:
        with import_turn():
            import wandb  # noqa: PLC0415 - an optional extra, imported only when a run starts
    except ImportError as error:
        raise FatalBackendError(INSTALL_HINT) from error
    return wandb


def _settings(wandb: Any) -> Any:  # noqa: ANN401 - the wandb module, a wandb.Settings
    """The run's settings: wandb-core writes its log every LOG_FLUSH_INTERVAL (wandb 0.31 on).

    An older wandb has no such setting, so that `flush` could not wait until rows are written:
    it is refused (docs/delivery.md#what-a-crash-costs).
    """
    try:
        return wandb.Settings(console="off", x_transaction_log_flush_interval=LOG_FLUSH_INTERVAL)
    except (TypeError, ValueError) as error:
        version = getattr(wandb, "__version__", "?")
        msg = (
            f"wandb {version} is too old: tf-ship needs wandb 0.31 or later (older ones can "
            "lose rows in a crash); install tf-ship[wandb]"
        )
        raise FatalBackendError(msg) from error


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class WandbBackend:
    """Logs to one wandb run; the keywords are ``wandb.init``'s (see `backends.specs.wandb`).

    `mode` defaults to ``$WANDB_MODE``, else wandb's own default (online). `run_id` resumes
    that run; without it, the id saved by `resume_state` is used, else wandb makes one.
    """

    preferred_batch_size = 10_000
    """Each `flush` waits for wandb-core's next transaction-log write (LOG_FLUSH_INTERVAL):
    fewer, larger batches keep that wait off the throughput (measured in benchmarks/run.py)."""

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
        self._reset()

    def _reset(self) -> None:
        """Start with nothing of an earlier run (the first open, or the next segment's run)."""
        self._models: set[str] = set()
        self._keys: set[str] = set()
        self._handed_over: dict[FileIdentity | None, set[int]] = {}
        """The offsets of the events handed over since the last flush, by file."""
        self._view: str | None = None
        self._replay = Replay()
        """What earlier sessions of the run hold, and the replayed events to leave out."""
        self._sent = 0
        """Events this session handed over (not counting skipped ones)."""
        self._flushed_events = 0
        """Events the run holds up to the cursor as of the last flush: what the resume state
        records."""
        self._unseen: collections.deque[list[MetricEvent]] = collections.deque()
        """Rows handed over that this session's transaction log does not show yet."""
        self._tail: TransactionLogTail | None = None
        self._closed = False

    # -- the run ------------------------------------------------------------------------------

    def open(self, run: RunInfo) -> None:
        """Start the wandb run, or resume the one named by `run_id` or the saved state."""
        if self._run is not None:
            return
        wandb = _import_wandb()
        start_settings = _settings(wandb)
        if self._closed:  # the next segment's run: nothing of the previous one is kept
            self._reset()
        saved_id = _text(run.state.get("run_id"))
        run_id = (self.run_id if run.segment == 0 else None) or saved_id
        directory = self.directory or _text(run.state.get("dir")) or _text(run.first_run.get("dir"))
        mode = self.mode or os.environ.get("WANDB_MODE") or None
        online = effective_mode(wandb, mode) not in OFFLINE_MODES
        if online and not credentials_found(wandb):
            raise FatalBackendError(no_credentials_message(base_url(wandb)))
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        self._run = self._init(
            wandb, run, start_settings, run_id=run_id, directory=directory, mode=mode
        )
        self._closed = False
        self._resume = {"run_id": str(self._run.id), "dir": self._root_dir(directory)}
        settings = getattr(self._run, "settings", None)
        offline = getattr(settings, "mode", None) == "offline"
        sync_dir = getattr(settings, "sync_dir", None)
        url = getattr(self._run, "url", None)
        if offline and sync_dir:
            self._view = f"{program('wandb')} sync {shlex.quote(str(Path(sync_dir).absolute()))}"
        else:
            self._view = url or None
        if sync_dir:
            current = Path(sync_dir) / f"run-{self._run.id}.wandb"
            self._tail = TransactionLogTail(current)
            if run_id:
                self._resume_sessions(run, current, own=run_id == saved_id)
        self._flushed_events = self._held_up_to_cursor()

    def _init(  # noqa: PLR0913 - the run, its settings and three wandb.init arguments
        self,
        wandb: Any,  # noqa: ANN401 - the wandb module
        run: RunInfo,
        settings: Any,  # noqa: ANN401 - a wandb.Settings
        *,
        run_id: str | None,
        directory: str | None,
        mode: str | None,
    ) -> Any:  # noqa: ANN401 - a wandb Run
        """``wandb.init``, which never prompts: wandb's refusals are fatal."""
        group, name, tags = self._naming(run)
        online = effective_mode(wandb, mode) not in OFFLINE_MODES
        try:
            with stdin_not_a_terminal() if online else contextlib.nullcontext():
                return wandb.init(
                    project=self.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                    entity=self.entity,
                    group=group,
                    tags=tags or None,
                    job_type=self.job_type,
                    name=name,
                    id=run_id,
                    resume="allow" if run_id else None,
                    dir=directory,
                    mode=mode,
                    config=None,
                    reinit="create_new",
                    settings=settings,
                )
        except (wandb.errors.AuthenticationError, wandb.errors.UsageError) as error:
            msg = f"wandb refused to start the run: {error}"
            if online and "api key" in str(error).lower().replace("_", " "):
                msg = no_credentials_message(base_url(wandb))
            raise FatalBackendError(msg) from error

    def _resume_sessions(self, run: RunInfo, current: Path, *, own: bool) -> None:
        """Count what the sessions before `current` wrote, against the state when it is own."""
        saved = run.state.get("events") if own else None
        saved = saved if isinstance(saved, int) else None
        saved_root = _text(run.state.get("dir")) if own else None
        self._replay = Replay.of(earlier_rows(current, saved_root), saved)
        held = self._replay.held
        if saved is not None and held < saved:
            logger.warning(
                "wandb: the run holds %d events, %d fewer than acknowledged before the crash "
                "(wandb lost them); they are not sent again",
                held,
                saved - held,
            )

    def _naming(self, run: RunInfo) -> tuple[str | None, str | None, list[str]]:
        """Group, name and tags of the run: a restart's are derived from the first run's."""
        if not run.segment:
            return self.group, run.run_name, list(self.tags)
        first_id = _text(run.first_run.get("run_id"))
        first_name = run.run_name or first_id
        name = f"{first_name}-restart{run.segment}" if first_name else None
        tags = [*self.tags, "restart"] if "restart" not in self.tags else list(self.tags)
        return self.group or first_id, name, tags

    def _root_dir(self, directory: str | None) -> str | None:
        root = getattr(getattr(self._run, "settings", None), "root_dir", None)
        return str(root) if root else directory

    def _require_run(self) -> Any:  # noqa: ANN401 - a wandb Run
        if self._run is None:
            msg = "the wandb backend is not open"
            raise FatalBackendError(msg)
        return self._run

    def resume_state(self) -> dict[str, Any]:
        """The run id and wandb directory, for `open` to resume the same run next time.

        Also how many events the run holds before the cursor (as of the last flush), to
        recognise a replay's rows.
        """
        return {**self._resume, "events": self._flushed_events}

    # -- logging ------------------------------------------------------------------------------

    def log_config(self, config: ModelConfig) -> None:
        """Store the model's config as ``run.config[<model>]``, replacing an older one."""
        run = self._require_run()
        run.config.update({config.model: plain(config.config)}, allow_val_change=True)

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Log one row per (model, step); events already handed over are not sent again."""
        run = self._require_run()
        if self._replay.skip:
            batch = self._replay.without_persisted(batch)
        handed_over = self._handed_over
        if handed_over:
            batch = [
                e for e in batch if e.offset < 0 or e.offset not in handed_over.get(e.file, ())
            ]
        self._hand_over(run, batch)

    def _hand_over(self, run: Any, batch: Sequence[MetricEvent]) -> None:  # noqa: ANN401
        """Log the events as rows, remembering each until the transaction log shows it."""
        handed = 0  # the events of the rows run.log took: a prefix of the batch
        try:
            for row in rows(batch):
                for model, keys in row.keys_by_model.items():
                    if model not in self._models or not self._keys.issuperset(keys):
                        self._define(run, model, keys)
                run.log(row.values)
                handed += len(row.events)
                if self._tail is not None:
                    self._unseen.append(row.events)
        finally:
            self._sent += handed
            # events without an offset (< 0) are never taken for handed over, see log_metrics
            for file, events in itertools.groupby(batch[:handed], key=_FILE):
                self._handed_over.setdefault(file, set()).update(map(_OFFSET, events))

    def _define(self, run: Any, model: str, keys: Iterable[str]) -> None:  # noqa: ANN401
        """Give a new model its x-axis, and new keys of it that a glob would miss their own."""
        x_axis = step_key(model)
        if "*" in model:
            return  # wandb refuses "*" in metric names; the rows still carry the step
        if model not in self._models:
            self._models.add(model)
            run.define_metric(x_axis, hidden=True)  # an x-axis, not a chart of its own
            run.define_metric(f"{model}/*", step_metric=x_axis, step_sync=False)
        for key in keys:
            if key in self._keys:
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
        """Make every row so far survive a crash of tf-ship (wandb has no flush).

        A round trip through wandb-core (its handler has then taken every row), then polling of
        the transaction log, which wandb-core writes every LOG_FLUSH_INTERVAL, until it shows
        every row.
        """
        run = self._run
        if run is None:
            return
        if not run.disabled and run.settings.mode != "shared" and self._tail is not None:
            _ = run.step  # a round trip through wandb-core
            self._wait_until_logged(self._tail)
        self._flushed_events = self._held_up_to_cursor()
        self._handed_over.clear()

    def _held_up_to_cursor(self) -> int:
        """The events the run holds before the cursor: not the replayed ones still to skip.

        Those lie past the cursor; counted in the state, a crash before they were skipped made
        the next session skip that many too few, and send them again.
        """
        return self._replay.held - self._replay.skip + self._sent

    def _take_logged(self, tail: TransactionLogTail) -> None:
        """Forget the rows the transaction log now shows."""
        for _ in range(min(tail.new_history_count(), len(self._unseen))):
            self._unseen.popleft()

    def _wait_until_logged(self, tail: TransactionLogTail) -> None:
        deadline = time.monotonic() + DURABLE_TIMEOUT
        interval = 0.005
        while True:
            self._take_logged(tail)
            if not self._unseen:
                return
            if time.monotonic() >= deadline:
                msg = (
                    f"wandb's transaction log {tail.path} lacks {len(self._unseen)} of the rows "
                    f"handed over after {DURABLE_TIMEOUT:g} s"
                )
                raise TimeoutError(msg)
            time.sleep(interval)
            interval = min(interval * 2, LOG_FLUSH_INTERVAL)

    def close(self, status: RunStatus) -> None:
        """Finish the run: exit code 1 for FAILED, else 0; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        run, self._run = self._run, None
        self._handed_over.clear()
        self._unseen.clear()
        if run is None:
            return
        run.finish(exit_code=1 if status is RunStatus.FAILED else 0)

    def view_hint(self) -> str | None:
        """`wandb sync ...` for an offline run, the run's address for an online one."""
        return self._view


def local_outputs(options: Mapping[str, Any]) -> dict[str, str]:
    """What the start-up check must find writable (`tf_ship.shipper.places`), by option keyword.

    The folder holding ``wandb/``: ``--wandb-dir``, else ``$WANDB_DIR``, else the current one.
    """
    return {"directory": str(options.get("directory") or os.environ.get("WANDB_DIR") or os.curdir)}


__all__ = ["DEFAULT_PROJECT", "INSTALL_HINT", "WandbBackend", "local_outputs"]
