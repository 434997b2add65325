r"""The MLflow backend: one MLflow run, metrics through `MlflowClient.log_batch`.

What MLflow does with TorchFort's values, and what this backend does about it:

- Keys are ``<model>/<metric>``. MLflow accepts only ``[/\w.\- :]``, at most 250 characters,
  and names that a POSIX path normalization leaves alone (no ``..``, no ``//``, no leading or
  trailing ``/``, no ``.`` segment). Anything else is replaced by ``_``; two names that end up on
  the same key get a numeric suffix (``_2``, ``_3``, ...) in order of first appearance. Every
  renamed name is reported once and recorded in the run tag ``tf_ship.key_map`` (JSON,
  ``{"original name": "key"}``; spread over ``tf_ship.key_map.1``, ... when it outgrows one tag).
  A resumed run reloads that map, so names keep their keys across restarts.
- The SQL stores keep NaN (a flag beside the value) but store +-inf as +-1.7976931348623157e308
  (the largest double): MLflow returns that number, not ``inf``, when the metric is read back.
- A metric row's identity is (key, timestamp, step, run, value): rows equal in all of these are
  merged. Each key therefore gets strictly increasing millisecond timestamps,
  ``max(base, previous + 1)`` where ``base`` is the wall clock when the batch was prepared, so
  that two log lines with the same key, step and value stay two rows. A batch that is sent again
  (after a transient error, or split by the engine to isolate a refused event) keeps the
  timestamps of its first attempt, so the store merges what already arrived instead of
  duplicating it.
- Replays after a crash get the same timestamps too. The resume state holds, as of the cursor,
  each key's last timestamp (``timestamps``), and `prepare` records before a batch is sent the
  byte range of its lines and its ``base`` (``in_flight``; the engine saves it before sending).
  A restarted shipper replays from the cursor, recomputes ``max(base, previous + 1)`` in log
  order with the recorded ``base`` for lines in a recorded range, and gets the very same
  timestamps: the store merges whatever of the batch had arrived. A range is forgotten once
  events past its end were flushed.
- Steps are int64 and may be negative; MLflow stores them as they are.
- Errors: a refused request (HTTP 4xx, e.g. ``INVALID_PARAMETER_VALUE`` for a bad key) raises
  `PermanentBackendError`, except a missing, deleted or forbidden run, which raises
  `FatalBackendError`. What no retry can fix when the run is opened (MLflow or a module it needs
  does not import, a malformed or unknown tracking URI, a refused login or permission) raises
  `FatalBackendError` with one line saying what to do (`mlflow_errors`). Connection failures,
  timeouts and 5xx answers propagate unchanged and are retried by the engine. MLflow's own HTTP
  retries (7 retries with backoff: minutes) are cut down to one immediate retry and a 10 s
  timeout unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` or
  ``MLFLOW_HTTP_REQUEST_TIMEOUT`` are set: an outage reaches the engine in seconds.
- Configs become params ``<model>.<path.to.key>`` (lists as JSON text, values cut to 6000
  characters) plus the artifact ``configs/<model>.yaml``. MLflow params cannot change; a config
  that changed (after a restart of the application) is logged whole as revision N,
  ``<model>.rev<N>.<path.to.key>``, with the artifact ``configs/<model>.rev<N>.yaml``, the
  artifact ``configs/<model>.yaml`` holding the newest config, and the tag
  ``tf_ship.config_revision.<model>`` naming the newest revision. A config equal to an earlier
  revision logs nothing new. Configs never hold metrics back: what cannot be recorded right now
  is tried again at later flushes (`mlflow_deferred`), a refused part is reported and skipped,
  and what is still missing when the run ends is reported then. Artifacts go through a
  repository built for the client's tracking URI (`mlflow_artifacts`: MLflow before 3.7 would
  send them to the global tracking URI instead).
- A SQLite store on a network filesystem (NFS, Lustre, GPFS, ...) is reported once: SQLite's
  locking is unreliable there (`tf_ship.shipper.filesystems`).
- `log_batch` is synchronous: when it returns, the store has the metrics, so `flush` only
  forgets the timestamps of delivered events and the ranges they complete.
- Throughput: the engine hands over up to 10,000 events at a time (`preferred_batch_size`),
  sent as `log_batch` calls of 1000. With an HTTP tracking server the metrics go straight to
  the server's ``runs/log-batch`` with JSON that tf-ship writes (`mlflow_rest`: MLflow's
  protobuf JSON encoding was most of the client's work), and two calls are in flight at once,
  so that the client builds the next request while the server stores the previous one.
  ``log_metrics`` returns when every call has succeeded and raises otherwise (the engine then
  sends the whole batch again, and the store merges what had arrived, see the timestamps
  above). Other tracking URIs (a local SQL or file store) get the client, one call at a time.
- After the application's N-th restart (``--on-restart new-run``) the backend is opened again
  and creates a new run in the same experiment: a child of the first run (tag
  ``mlflow.parentRunId``, so the MLflow UI nests it under the first run), named
  ``<first run's name>-restart<N>``, with the tag ``tf_ship.restart`` = N.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os
import posixpath
import re
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tf_ship.backends.base import FatalBackendError, PermanentBackendError
from tf_ship.backends.hints import program
from tf_ship.backends.mlflow_artifacts import ConfigArtifacts
from tf_ship.backends.mlflow_deferred import Deferred
from tf_ship.backends.mlflow_errors import (
    check_tracking_uri,
    fatal_error,
    first_line,
    refused_run_hint,
)
from tf_ship.backends.mlflow_rest import MetricRow, RestLogBatch, rest_log_batch
from tf_ship.redaction import redact
from tf_ship.shipper.events import MetricEvent, ModelConfig, RunInfo, RunStatus
from tf_ship.shipper.filesystems import warn_if_network_filesystem

logger = logging.getLogger("tf_ship")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "torchfort"
MAX_METRICS_PER_CALL = 1000
CALLS_IN_FLIGHT = 2
"""`log_batch` calls sent to an HTTP tracking server at once (measured in benchmarks/run.py)."""
MAX_PARAMS_PER_CALL = 100
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
KEY_MAP_TAG = "tf_ship.key_map"
REVISION_TAG = "tf_ship.config_revision"
PARENT_TAG = "mlflow.parentRunId"
RESTART_TAG = "tf_ship.restart"
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
"""MLflow's HTTP client settings, unless the environment sets them: fail within seconds."""
FATAL_ERROR_CODES = frozenset(
    {
        "RESOURCE_DOES_NOT_EXIST",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "UNAUTHORIZED",
        "CUSTOMER_UNAUTHORIZED",
    }
)
"""Refusals that concern the run itself, not one event: no event can be shipped."""
SQLITE_ADVICE = (
    "SQLite can lock up or corrupt its file there; use a tracking server "
    "(--mlflow-tracking-uri http://HOST:PORT) or a file on node-local scratch "
    "(--mlflow-tracking-uri sqlite:////tmp/mlflow.db)"
)
_MAX_PENDING = 100_000
_MAX_RANGES = 64
"""Recorded in-flight ranges kept at most (only ranges whose last event was refused linger)."""

_BAD_CHARACTER = re.compile(r"[^/\w.\- :]")
_DOUBLE_DOT = re.compile(r"\.(?=\.)")


def sanitize_key(name: str, limit: int = MAX_KEY_LENGTH) -> str:
    """Turn any name into one MLflow accepts as a metric or param key (maybe the same name)."""
    key = _DOUBLE_DOT.sub("_", _BAD_CHARACTER.sub("_", name))
    key = "/".join(part if part not in {"", "."} else "_" for part in key.split("/"))[:limit]
    if key.endswith(("/", "/.")) or key == ".":
        key = key[:-1] + "_"
    return key


def is_valid_key(key: str) -> bool:
    """The checks MLflow makes on a metric or param key."""
    return (
        0 < len(key) <= MAX_KEY_LENGTH
        and not _BAD_CHARACTER.search(key)
        and ".." not in key
        and posixpath.normpath(key) == key
        and not key.startswith("/")
    )


class KeyMap:
    """Assigns each name a valid, unique MLflow key; remembers the names it had to rename."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self._keys: dict[str, str] = {}
        self._taken: set[str] = set()
        self.renamed: dict[str, str] = {}
        """Names whose key differs from the name, in order of appearance."""

    def reserve(self, name: str, key: str) -> None:
        """Record a name's key from an earlier session."""
        self._keys[name] = key
        self._taken.add(key)
        if key != name:
            self.renamed[name] = key

    def key(self, name: str) -> str:
        """The key of a name; a new name gets a sanitized key, suffixed when already taken."""
        key = self._keys.get(name)
        if key is not None:
            return key
        base = sanitize_key(name)
        key, number = base, 1
        while key in self._taken:
            number += 1
            suffix = f"_{number}"
            key = sanitize_key(base[: MAX_KEY_LENGTH - len(suffix)] + suffix)
        self._keys[name] = key
        self._taken.add(key)
        if key != name:
            self.renamed[name] = key
            if not self.quiet:
                logger.warning("MLflow: %r is logged as %r (not a valid or free key)", name, key)
        return key


def key_map_tags(renamed: Mapping[str, str]) -> dict[str, str]:
    """The renamed names as JSON tag values of at most 8000 characters each."""
    tags: dict[str, str] = {}
    part: dict[str, str] = {}
    for name, key in renamed.items():
        trial = {**part, name: key}
        if part and len(json.dumps(trial, ensure_ascii=False)) > MAX_TAG_VALUE_LENGTH:
            tags[_key_map_tag(len(tags))] = json.dumps(part, ensure_ascii=False)
            trial = {name: key}
        part = trial
    if part:
        tags[_key_map_tag(len(tags))] = json.dumps(part, ensure_ascii=False)
    return tags


def _key_map_tag(index: int) -> str:
    return KEY_MAP_TAG if index == 0 else f"{KEY_MAP_TAG}.{index}"


def flatten_config(prefix: str, config: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Yield ``(prefix.path.to.key, text)`` for every leaf; lists become their JSON text."""
    for name, value in config.items():
        path = f"{prefix}.{name}"
        if isinstance(value, Mapping) and value:
            yield from flatten_config(path, value)
        elif isinstance(value, str):
            yield path, value
        else:
            yield path, json.dumps(value, ensure_ascii=False, default=str)


def sqlite_file(uri: str) -> str | None:
    """The database file of a ``sqlite:///`` URI (relative to the working directory), or None."""
    scheme, separator, rest = uri.partition("://")
    if not separator or scheme.partition("+")[0] != "sqlite" or not rest.startswith("/"):
        return None
    file = rest[1:].partition("?")[0]
    return None if file in {"", ":memory:"} else file


def absolute_store(uri: str) -> str:
    """The URI with a relative SQLite file made absolute, so it works from any folder."""
    file = sqlite_file(uri)
    if file is None:
        return uri
    scheme = uri.partition("://")[0]
    query = uri.partition("?")[2]
    return f"{scheme}:///{Path(file).absolute()}" + (f"?{query}" if query else "")


def warn_if_sqlite_on_network_filesystem(uri: str) -> None:
    """Say once when a SQLite store tf-ship writes lives on NFS, Lustre, GPFS and the like."""
    file = sqlite_file(uri)
    if file is not None:
        warn_if_network_filesystem(os.path.abspath(file), "MLflow's SQLite store", SQLITE_ADVICE)  # noqa: PTH100


def artifact_name(model: str) -> str:
    """A file name for a model's config artifact."""
    return _DOUBLE_DOT.sub("_", re.sub(r"[^\w.\-]", "_", model)).lstrip(".") or "_"


def http_status(error: Exception) -> int:
    """The HTTP status an MlflowException stands for (500 when it names none)."""
    get_status = getattr(error, "get_http_status_code", None)
    try:
        return int(get_status()) if get_status is not None else 500
    except (TypeError, ValueError):
        return 500


def is_refusal(error: Exception) -> bool:
    """True for an answer that will not change on retry: a 4xx other than 408 and 429."""
    status = http_status(error)
    return 400 <= status < 500 and status not in {408, 429}


def is_fatal_refusal(error: Exception) -> bool:
    """True when the refusal concerns the run as a whole (gone, deleted, forbidden)."""
    code = getattr(error, "error_code", None)
    return code in FATAL_ERROR_CODES or "must be in the 'active' state" in str(error)


class MlflowBackend:
    """Logs to one MLflow run through `MlflowClient`.

    `tracking_uri` defaults to ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the
    working directory (whose new experiments keep their artifacts in ``./mlruns``, or at
    `artifact_location` when given). `experiment` (default ``torchfort``) is created when
    missing. `run_id`
    resumes that run; otherwise the run recorded in the state is resumed, or a new run is
    created. See the module docstring for how MLflow's limits are met.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_id: str | None = None,
        artifact_location: str | None = None,
    ) -> None:
        environment_uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.tracking_uri = tracking_uri or environment_uri or DEFAULT_TRACKING_URI
        self.experiment = experiment or DEFAULT_EXPERIMENT
        self.run_id = run_id or None
        self.artifact_location = artifact_location or None
        self._requested_run_id = self.run_id
        self._run_name: str | None = None
        self._client: Any = None
        self._keys = KeyMap()
        self._key_map_saved = 0
        self._last_timestamp: dict[str, int] = {}
        self._durable_timestamps: dict[str, int] = {}
        self._ranges: list[dict[str, int]] = []
        self._pending: dict[tuple[MetricEvent, int], int] = {}
        self._delivered: list[tuple[MetricEvent, int]] = []
        self._params: dict[str, str] = {}
        self._reported: set[str] = set()
        self._closed = False
        self._senders: concurrent.futures.ThreadPoolExecutor | None = None
        self._rest: RestLogBatch | None = None
        self._artifacts: ConfigArtifacts | None = None
        self._deferred = Deferred("MLflow")

    preferred_batch_size = 10_000
    """Events per `log_metrics`: ten `log_batch` calls, two of them in flight at a time."""

    # -- opening ------------------------------------------------------------------------------

    def open(self, run: RunInfo) -> None:
        """Resume the given or recorded run, or create one in the experiment."""
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        check_tracking_uri(self.tracking_uri)
        warn_if_sqlite_on_network_filesystem(self.tracking_uri)
        if self._closed:  # the next segment's run: nothing of the previous one is kept
            self._reset()
        self.run_id = self._requested_run_id if run.segment == 0 else None
        try:
            from mlflow import MlflowClient  # noqa: PLC0415 - imported only when MLflow is used

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            self.run_id = self._resume(run) or self._create(run)
        except Exception as error:
            self._client = None  # nothing to close
            line = fatal_error(error, http_status(error), self.tracking_uri, self.experiment)
            if line is not None:
                raise FatalBackendError(line) from error
            raise
        logger.info("MLflow: logging to run %s at %s", self.run_id, self.tracking_uri)
        if self._served:
            self._rest = rest_log_batch(self._client)
            if self._senders is None:
                self._senders = concurrent.futures.ThreadPoolExecutor(
                    CALLS_IN_FLIGHT, thread_name_prefix="tf-ship-mlflow"
                )

    @property
    def _served(self) -> bool:
        """True for a tracking server over HTTP (not a local store)."""
        return self.tracking_uri.startswith(("http://", "https://"))

    def _same_store(self, recorded: object) -> bool:
        """Whether a tracking URI from the state (saved with credentials masked) is this one."""
        return recorded is None or redact(str(recorded)) == redact(self.tracking_uri)

    def _reset(self) -> None:
        """Forget the closed run, to open another."""
        self._run_name = None
        self._keys = KeyMap()
        self._key_map_saved = 0
        self._last_timestamp = {}
        self._durable_timestamps = {}
        self._ranges = []
        self._pending = {}
        self._delivered = []
        self._params = {}
        self._reported = set()
        self._closed = False
        self._artifacts = None
        self._deferred = Deferred("MLflow")

    def _resume(self, run: RunInfo) -> str | None:
        run_id = self.run_id
        explicit = run_id is not None
        if run_id is None and self._same_store(run.state.get("tracking_uri")):
            run_id = run.state.get("run_id")
        if not run_id:
            return None
        try:
            found = self._client.get_run(run_id)
        except Exception as error:
            if explicit or getattr(error, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise
            logger.warning("MLflow: run %s of the state is gone; starting a new run", run_id)
            return None
        if found.info.lifecycle_stage != "active":
            if explicit:
                msg = f"MLflow run {run_id} is {found.info.lifecycle_stage}"
                raise FatalBackendError(msg)
            logger.warning("MLflow: run %s of the state is deleted; starting a new run", run_id)
            return None
        self._restore(found)
        self._run_name = found.info.run_name
        self._artifacts = ConfigArtifacts(found.info.artifact_uri, self.tracking_uri)
        if run_id == run.state.get("run_id"):
            self._restore_replay_state(run.state)
        if found.info.status != "RUNNING":
            self._client.update_run(run_id, status="RUNNING")
        return str(run_id)

    def _restore(self, found: Any) -> None:  # noqa: ANN401 - an mlflow Run
        """Reload the key map, the keys in use and the params of a resumed run."""
        tags: Mapping[str, str] = found.data.tags
        for tag in sorted(t for t in tags if t == KEY_MAP_TAG or t.startswith(KEY_MAP_TAG + ".")):
            try:
                part = json.loads(tags[tag])
            except ValueError:
                logger.warning("MLflow: tag %s is not JSON; ignored", tag)
                continue
            for name, key in part.items():
                self._keys.reserve(str(name), str(key))
        self._key_map_saved = len(self._keys.renamed)
        renamed_keys = set(self._keys.renamed.values())
        for key in found.data.metrics:
            if key not in renamed_keys:
                self._keys.reserve(key, key)
        self._params = dict(found.data.params)

    def _restore_replay_state(self, state: Mapping[str, Any]) -> None:
        """Reload the last timestamps and in-flight ranges, to replay with the same timestamps."""
        timestamps = state.get("timestamps")
        if isinstance(timestamps, Mapping):
            self._last_timestamp = {str(k): int(v) for k, v in timestamps.items()}
            self._durable_timestamps = dict(self._last_timestamp)
        ranges = state.get("in_flight")
        if isinstance(ranges, list):
            fields = ("device", "inode", "first", "last", "base")
            self._ranges = [
                {name: int(item[name]) for name in fields}
                for item in ranges
                if isinstance(item, Mapping) and all(name in item for name in fields)
            ]

    def _create(self, run: RunInfo) -> str:
        client = self._client
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(
                    self.experiment, artifact_location=self.artifact_location
                )
            except Exception as error:
                if getattr(error, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment_id = client.get_experiment_by_name(self.experiment).experiment_id
        elif experiment.lifecycle_stage != "active":
            msg = f"MLflow experiment {self.experiment!r} is deleted: restore it or choose another"
            raise FatalBackendError(msg)
        else:
            experiment_id = experiment.experiment_id
        tags = {"tf_ship.log_file": str(run.log_file)}
        name = run.run_name
        if run.segment:
            first_id = run.first_run.get("run_id")
            same_store = self._same_store(run.first_run.get("tracking_uri"))
            if first_id and same_store:
                tags[PARENT_TAG] = str(first_id)
            tags[RESTART_TAG] = str(run.segment)
            first_name = run.first_run.get("run_name") or name or first_id
            name = f"{first_name}-restart{run.segment}" if first_name else None
        created = client.create_run(experiment_id, run_name=name, tags=tags)
        self._run_name = created.info.run_name
        self._artifacts = ConfigArtifacts(created.info.artifact_uri, self.tracking_uri)
        return str(created.info.run_id)

    def resume_state(self) -> dict[str, Any]:
        """What a restart needs: the run to reopen, and how to replay with the same timestamps.

        The run id and tracking URI; each key's last timestamp as of the last flush; the
        in-flight ranges recorded by `prepare`.
        """
        return {
            "run_id": self.run_id,
            "run_name": self._run_name,
            "tracking_uri": self.tracking_uri,
            "timestamps": dict(self._durable_timestamps),
            "in_flight": [dict(item) for item in self._ranges],
        }

    def prepare(self, batch: Sequence[MetricEvent]) -> bool:
        """Fix the timestamps of the batch's new events; True when a new range was recorded.

        The engine saves `resume_state()` before sending when this returns True, so that a
        replay of the batch after a crash gets the same timestamps.
        """
        base = time.time_ns() // 1_000_000
        fresh: dict[tuple[int, int], list[int]] = {}
        for event_id in _event_ids(batch):
            if event_id in self._pending:
                continue
            event = event_id[0]
            recorded = self._recorded_base(event)
            if recorded is None and event.file is not None and event.offset >= 0:
                fresh.setdefault((event.file.device, event.file.inode), []).append(event.offset)
            key = self.metric_key(event)
            timestamp = max(
                base if recorded is None else recorded, self._last_timestamp.get(key, -1) + 1
            )
            self._last_timestamp[key] = timestamp
            if len(self._pending) >= _MAX_PENDING:  # only refused events linger
                self._pending.clear()
            self._pending[event_id] = timestamp
        for (device, inode), offsets in fresh.items():
            self._ranges.append(
                {
                    "device": device,
                    "inode": inode,
                    "first": min(offsets),
                    "last": max(offsets),
                    "base": base,
                }
            )
        del self._ranges[:-_MAX_RANGES]
        return bool(fresh)

    def _recorded_base(self, event: MetricEvent) -> int | None:
        """The base timestamp recorded for the range holding the event's line, if any."""
        if event.file is None or event.offset < 0:
            return None
        for item in self._ranges:
            if (
                item["device"] == event.file.device
                and item["inode"] == event.file.inode
                and item["first"] <= event.offset <= item["last"]
            ):
                return item["base"]
        return None

    # -- logging ------------------------------------------------------------------------------

    def _require_client(self) -> Any:  # noqa: ANN401 - an MlflowClient
        if self._client is None:
            msg = "the MLflow backend is not open"
            raise RuntimeError(msg)
        return self._client

    def _logged(self, what: str, **entities: Any) -> None:  # noqa: ANN401
        """Call log_batch; turn refusals into the engine's error types.

        Metrics alone go straight to the server's REST API when it has one (`mlflow_rest`).
        """
        client = self._require_client()
        try:
            self._log_batch(client, entities)
        except Exception as error:
            if not is_refusal(error):
                raise
            if is_fatal_refusal(error):
                hint = refused_run_hint(http_status(error))
                msg = f"MLflow refused {what} for run {self.run_id}: {first_line(error)}{hint}"
                raise FatalBackendError(msg) from error
            msg = f"MLflow refused {what}: {error}"
            raise PermanentBackendError(msg) from error

    def _log_batch(self, client: Any, entities: dict[str, Any]) -> None:  # noqa: ANN401
        metrics: list[MetricRow] = entities.get("metrics") or []
        rest = self._rest
        if rest is not None and metrics and set(entities) == {"metrics"}:
            try:
                rest(str(self.run_id), metrics)
            except (TypeError, AttributeError) as error:  # MLflow's internals moved
                logger.warning("MLflow: sending through the client from now on (%s)", error)
                self._rest = None
            else:
                return
        if metrics:
            from mlflow.entities import Metric  # noqa: PLC0415

            entities = {**entities, "metrics": [Metric(*row) for row in metrics]}
        client.log_batch(self.run_id, **entities)

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Log the batch in calls of at most 1000 metrics, after any new key map entries."""
        ids = _event_ids(batch)
        self.prepare(batch)  # a no-op when the engine prepared the batch already
        metrics = [
            MetricRow(self.metric_key(event), event.value, self._pending[event_id], event.step)
            for event, event_id in zip(batch, ids, strict=True)
        ]
        self._save_key_map()
        chunks = [
            metrics[start : start + MAX_METRICS_PER_CALL]
            for start in range(0, len(metrics), MAX_METRICS_PER_CALL)
        ]
        if self._senders is None or len(chunks) == 1:
            for chunk in chunks:
                self._logged(f"{len(chunk)} metrics", metrics=chunk)
        else:
            self._log_in_parallel(self._senders, chunks)
        self._delivered.extend(ids)

    def _log_in_parallel(
        self, senders: concurrent.futures.ThreadPoolExecutor, chunks: Sequence[list[MetricRow]]
    ) -> None:
        """Send every chunk, CALLS_IN_FLIGHT at a time; raise the gravest error, if any.

        A fatal refusal wins over a transient error (the engine retries the batch), which wins
        over a refused event (the engine splits the batch to find it).
        """
        calls = [
            senders.submit(self._logged, f"{len(chunk)} metrics", metrics=chunk) for chunk in chunks
        ]
        errors = [error for call in calls if (error := call.exception()) is not None]
        if not errors:
            return
        for kind in (FatalBackendError, Exception):
            for error in errors:
                if isinstance(error, kind) and not isinstance(error, PermanentBackendError):
                    raise error
        raise errors[0]

    def metric_key(self, event: MetricEvent) -> str:
        """The MLflow key of an event: ``<model>/<metric>``, made valid and unique."""
        return self._keys.key(event.key)

    def _save_key_map(self) -> None:
        if len(self._keys.renamed) == self._key_map_saved:
            return
        from mlflow.entities import RunTag  # noqa: PLC0415

        tags = [RunTag(k, v) for k, v in key_map_tags(self._keys.renamed).items()]
        for start in range(0, len(tags), MAX_PARAMS_PER_CALL):
            self._logged("the key map", tags=tags[start : start + MAX_PARAMS_PER_CALL])
        self._key_map_saved = len(self._keys.renamed)

    def log_config(self, config: ModelConfig) -> None:
        """Log the config as params (a new revision when it changed) and as a YAML artifact.

        The calls never hold metrics back: they are queued (`Deferred`) and made now, and what
        fails for now is tried again at later flushes; a refused part is reported and skipped.
        """
        from mlflow.entities import Param, RunTag  # noqa: PLC0415

        self._require_client()
        revision, params = self._config_revision(config)
        new = [(k, v) for k, v in params.items() if self._params.get(k) != v]
        model = config.model
        for start in range(0, len(new), MAX_PARAMS_PER_CALL):
            chunk = dict(new[start : start + MAX_PARAMS_PER_CALL])
            self._params.update(chunk)  # a later config is compared with these from now on
            self._deferred.add(
                f"{len(chunk)} params of {model!r}",
                functools.partial(
                    self._logged, "config params", params=[Param(k, v) for k, v in chunk.items()]
                ),
                functools.partial(self._forget_params, chunk),
            )
        name = artifact_name(model)
        content = dict(config.config)
        paths = [f"configs/{name}.yaml"]
        if revision > 1:
            paths.append(f"configs/{name}.rev{revision}.yaml")
        for path in paths:
            upload = functools.partial(self._upload, path, content)
            self._deferred.add(f"the artifact {path}", upload)
        if revision > 1:
            tag = RunTag(sanitize_key(f"{REVISION_TAG}.{model}"), str(revision))
            self._deferred.add(
                f"the tag {tag.key}",
                functools.partial(self._logged, "the config revision tag", tags=[tag]),
            )
            if new:
                logger.warning(
                    "MLflow: the config of %r changed; logged as revision %d", model, revision
                )
        self._deferred.run(now=True)

    def _forget_params(self, refused: Mapping[str, str]) -> None:
        """Params the store refused are not the run's: a later config may log them again."""
        for key, value in refused.items():
            if self._params.get(key) == value:
                del self._params[key]

    def _upload(self, path: str, content: Mapping[str, Any]) -> None:
        if self._artifacts is None:
            msg = "the MLflow backend is not open"
            raise RuntimeError(msg)
        self._artifacts.upload(path, content)

    def _config_revision(self, config: ModelConfig) -> tuple[int, dict[str, str]]:
        """The first revision whose params agree with this config, and its params."""
        revision = 1
        while True:
            prefix = config.model if revision == 1 else f"{config.model}.rev{revision}"
            params = self._params_of(prefix, config)
            if all(self._params.get(k, v) == v for k, v in params.items()):
                return revision, params
            revision += 1

    def _params_of(self, prefix: str, config: ModelConfig) -> dict[str, str]:
        """A config's params under a prefix: keys made valid and unique, values cut to size."""
        keys = KeyMap(quiet=True)
        params: dict[str, str] = {}
        for name, text in flatten_config(prefix, config.config):
            key = keys.key(name)
            if key != name and name not in self._reported:
                self._reported.add(name)
                logger.warning("MLflow: param %r is logged as %r", name, key)
            value = text
            if len(value) > MAX_PARAM_VALUE_LENGTH and name not in self._reported:
                self._reported.add(name)
                logger.warning(
                    "MLflow: param %r has %d characters; cut to %d",
                    name,
                    len(value),
                    MAX_PARAM_VALUE_LENGTH,
                )
            params[key] = value[:MAX_PARAM_VALUE_LENGTH]
        return params

    # -- ending -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Nothing to send: `log_batch` returned only once the store had the metrics.

        Forgets the timestamps of the events delivered since the last flush, and the in-flight
        ranges that end at or before the last of them; the last timestamps become durable.
        """
        reached: dict[tuple[int, int], int] = {}
        for event_id in self._delivered:
            self._pending.pop(event_id, None)
            event = event_id[0]
            if event.file is not None:
                where = (event.file.device, event.file.inode)
                reached[where] = max(reached.get(where, -1), event.offset)
        self._delivered.clear()
        self._ranges = [
            item
            for item in self._ranges
            if item["last"] > reached.get((item["device"], item["inode"]), -1)
        ]
        self._durable_timestamps = dict(self._last_timestamp)
        self._deferred.run()  # configs not recorded yet, once their delay has passed

    def close(self, status: RunStatus) -> None:
        """Mark the run FINISHED, FAILED or KILLED; a second call does nothing.

        A finished run gets one more try at recording what is still queued; whatever is left
        is reported.
        """
        if self._closed:
            return
        self._closed = True
        if status is RunStatus.FINISHED and self._client is not None:
            try:
                self._deferred.run(now=True)
            except FatalBackendError as error:
                logger.warning("%s", error)
        self._deferred.abandon()
        client, self._client = self._client, None
        senders, self._senders = self._senders, None
        if senders is not None:
            senders.shutdown(wait=False, cancel_futures=True)  # idle unless a call hangs
        if client is None or self.run_id is None:
            return
        client.set_terminated(self.run_id, status=status.value)

    def view_hint(self) -> str | None:
        """The command (or address) that shows this run."""
        if self._served:
            return f"{self.tracking_uri.rstrip('/')} (run {self.run_id})"
        store = shlex.quote(absolute_store(self.tracking_uri))
        return f"{program('mlflow')} ui --backend-store-uri {store}"

    def describe(self) -> dict[str, Any]:
        """Where the metrics went, for the final summary."""
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id}


def _event_ids(batch: Sequence[MetricEvent]) -> list[tuple[MetricEvent, int]]:
    """Identify events by value and occurrence, so equal events in one batch stay distinct."""
    seen: dict[MetricEvent, int] = {}
    ids = []
    for event in batch:
        count = seen.get(event, 0)
        seen[event] = count + 1
        ids.append((event, count))
    return ids


def local_outputs(options: Mapping[str, Any]) -> dict[str, str]:
    """What the start-up check must find writable (`tf_ship.shipper.places`), by option keyword.

    Only the default store does: ``sqlite:///mlflow.db`` and its ``./mlruns`` artifacts.
    """
    if options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI"):
        return {}
    return {"tracking_uri": os.curdir}
