"""The MLflow backend: one MLflow run, metrics through ``runs/log-batch``.

It ties together the key map (`keys`), the timestamps that make a re-send merge (`timestamps`),
config params (`params`) and artifacts (`artifacts`), calls that must not hold metrics back
(`deferred`), the direct REST call (`rest`) and the errors (`errors`). What it does with
TorchFort's values: docs/backends.md (MLflow); how it delivers: docs/delivery.md.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from tf_ship.backends.hints import program
from tf_ship.backends.imports import import_turn
from tf_ship.backends.mlflow.artifacts import ConfigArtifacts
from tf_ship.backends.mlflow.deferred import Deferred
from tf_ship.backends.mlflow.errors import (
    check_tracking_uri,
    fatal_error,
    first_line,
    http_status,
    is_fatal_refusal,
    is_refusal,
    refused_run_hint,
)
from tf_ship.backends.mlflow.keys import KeyMap, artifact_name, key_map_tags, resumed_key_map
from tf_ship.backends.mlflow.params import ConfigParams, revision_tag
from tf_ship.backends.mlflow.rest import MetricRow, RestLogBatch, rest_log_batch
from tf_ship.backends.mlflow.store import (
    absolute_store,
    is_served,
    warn_if_sqlite_on_network_filesystem,
)
from tf_ship.backends.mlflow.timestamps import Timestamps
from tf_ship.contract import (
    FatalBackendError,
    MetricEvent,
    ModelConfig,
    PermanentBackendError,
    RunInfo,
    RunStatus,
)
from tf_ship.redaction import redact

logger = logging.getLogger("tf_ship")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "torchfort"
MAX_METRICS_PER_CALL = 1000
MAX_PARAMS_PER_CALL = 100
"""Params (or tags) per `log_batch` call at most."""
CALLS_IN_FLIGHT = 2
"""`log_batch` calls sent to an HTTP tracking server at once (measured in benchmarks/run.py)."""
PARENT_TAG = "mlflow.parentRunId"
RESTART_TAG = "tf_ship.restart"
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
"""MLflow's HTTP client settings, unless the environment sets them: fail within seconds."""


class MlflowBackend:
    """Logs to one MLflow run through `MlflowClient`.

    `tracking_uri` defaults to ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the
    working directory (whose new experiments keep their artifacts in ``./mlruns``, or at
    `artifact_location` when given). `experiment` (default ``torchfort``) is created when
    missing. `run_id` resumes that run; otherwise the run recorded in the state is resumed, or
    a new run is created.
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
        self._client: Any = None
        self._senders: concurrent.futures.ThreadPoolExecutor | None = None
        self._rest: RestLogBatch | None = None
        self._reset()

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
            with import_turn():
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
        return is_served(self.tracking_uri)

    def _same_store(self, recorded: object) -> bool:
        """Whether a tracking URI from the state (saved with credentials masked) is this one."""
        return recorded is None or redact(str(recorded)) == redact(self.tracking_uri)

    def _reset(self) -> None:
        """Nothing of a run yet: at the start, and to open another after a close."""
        self._run_name: str | None = None
        self._keys = KeyMap()
        self._key_map_saved = 0
        self._timestamps = Timestamps()
        self._params = ConfigParams()
        self._closed = False
        self._artifacts: ConfigArtifacts | None = None
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
        self._keys = resumed_key_map(found.data.tags, found.data.metrics)
        self._key_map_saved = self._keys.renamed_count()
        self._params = ConfigParams(found.data.params)
        self._run_name = found.info.run_name
        self._artifacts = ConfigArtifacts(found.info.artifact_uri, self.tracking_uri)
        if run_id == run.state.get("run_id"):
            self._timestamps.restore(run.state)
        if found.info.status != "RUNNING":
            self._client.update_run(run_id, status="RUNNING")
        return str(run_id)

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
            **self._timestamps.state(),
        }

    def prepare(self, batch: Sequence[MetricEvent]) -> bool:
        """Fix the timestamps of the batch's new events; True when a new range was recorded.

        The engine saves `resume_state()` before sending when this returns True, so that a
        replay of the batch after a crash gets the same timestamps.
        """
        return self._timestamps.prepare(batch, self.metric_key)

    # -- logging ------------------------------------------------------------------------------

    def _require_client(self) -> Any:  # noqa: ANN401 - an MlflowClient
        if self._client is None:
            msg = "the MLflow backend is not open"
            raise RuntimeError(msg)
        return self._client

    def _logged(self, what: str, **entities: Any) -> None:  # noqa: ANN401
        """Call log_batch; turn refusals into the engine's error types.

        Metrics alone go straight to the server's REST API when it has one (`rest`).
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
        ids, timestamps = self._timestamps.stamp(batch, self.metric_key)
        metrics = [
            MetricRow(self.metric_key(event), event.value, timestamp, event.step)
            for event, timestamp in zip(batch, timestamps, strict=True)
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
        self._timestamps.delivered(ids)

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
        if self._keys.renamed_count() == self._key_map_saved:
            return
        from mlflow.entities import RunTag  # noqa: PLC0415

        tags = [RunTag(k, v) for k, v in key_map_tags(self._keys.renamed()).items()]
        for start in range(0, len(tags), MAX_PARAMS_PER_CALL):
            self._logged("the key map", tags=tags[start : start + MAX_PARAMS_PER_CALL])
        self._key_map_saved = self._keys.renamed_count()

    def log_config(self, config: ModelConfig) -> None:
        """Log the config as params (a new revision when it changed) and as a YAML artifact.

        The calls never hold metrics back: they are queued (`Deferred`) and made now, and what
        fails for now is tried again at later flushes; a refused part is reported and skipped.
        """
        from mlflow.entities import Param, RunTag  # noqa: PLC0415

        self._require_client()
        revision, new = self._params.new(config)
        model = config.model
        for start in range(0, len(new), MAX_PARAMS_PER_CALL):
            chunk = dict(new[start : start + MAX_PARAMS_PER_CALL])
            self._params.hold(chunk)
            self._deferred.add(
                f"{len(chunk)} params of {model!r}",
                functools.partial(
                    self._logged, "config params", params=[Param(k, v) for k, v in chunk.items()]
                ),
                functools.partial(self._params.forget, chunk),
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
            tag = RunTag(revision_tag(model), str(revision))
            self._deferred.add(
                f"the tag {tag.key}",
                functools.partial(self._logged, "the config revision tag", tags=[tag]),
            )
            if new:
                logger.warning(
                    "MLflow: the config of %r changed; logged as revision %d", model, revision
                )
        self._deferred.run(now=True)

    def _upload(self, path: str, content: Mapping[str, Any]) -> None:
        if self._artifacts is None:
            msg = "the MLflow backend is not open"
            raise RuntimeError(msg)
        self._artifacts.upload(path, content)

    # -- ending -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Nothing to send: `log_batch` returned only once the store had the metrics.

        Forgets the timestamps of the events delivered since the last flush, and the in-flight
        ranges that end at or before the last of them; the last timestamps become durable.
        """
        self._timestamps.flushed()
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


def local_outputs(options: Mapping[str, Any]) -> dict[str, str]:
    """What the start-up check must find writable (`tf_ship.shipper.places`), by option keyword.

    Only the default store does: ``sqlite:///mlflow.db`` and its ``./mlruns`` artifacts.
    """
    if options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI"):
        return {}
    return {"tracking_uri": os.curdir}
