"""Config artifacts, uploaded through an artifact repository built for the client's tracking URI.

MLflow before 3.7 sends a server's ``mlflow-artifacts:`` URIs to the global tracking URI, not the
client's; docs/backends.md (MLflow, Configs).
"""

from __future__ import annotations

import inspect
import json
import posixpath
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tf_ship.backends.base import PermanentBackendError
from tf_ship.backends.mlflow.errors import first_line, is_refusal_status


def artifact_repository(artifact_uri: str, tracking_uri: str) -> Any:  # noqa: ANN401
    """MLflow's artifact repository for a run's artifact URI, as the client at `tracking_uri`.

    MLflow 3.1 on takes the tracking URI (only its client did not pass it before 3.7); 3.0 gets
    the `HttpArtifactRepository` that `MlflowArtifactsRepository` would have made for it.
    """
    from mlflow.store.artifact.artifact_repository_registry import (  # noqa: PLC0415
        get_artifact_repository,
    )

    if "tracking_uri" in inspect.signature(get_artifact_repository).parameters:
        return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    if artifact_uri.startswith("mlflow-artifacts:"):
        from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository  # noqa: PLC0415
        from mlflow.store.artifact.mlflow_artifacts_repo import (  # noqa: PLC0415
            MlflowArtifactsRepository,
        )

        resolved = MlflowArtifactsRepository.resolve_uri(artifact_uri, tracking_uri)  # type: ignore[no-untyped-call]
        return HttpArtifactRepository(resolved)  # type: ignore[no-untyped-call]
    return get_artifact_repository(artifact_uri)


def yaml_text(content: Mapping[str, Any]) -> str:
    """A config as YAML, in its own key order; values YAML cannot write become their text."""
    plain = json.loads(json.dumps(content, ensure_ascii=False, default=str))
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, default_flow_style=False)


def is_final(error: BaseException) -> bool:
    """True for an upload error no retry fixes: a refusal (4xx), a missing module, no access."""
    if isinstance(error, (ImportError, PermissionError)):
        return True
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status is None:
        get_status = getattr(error, "get_http_status_code", None)
        status = get_status() if callable(get_status) else None
    return isinstance(status, int) and is_refusal_status(status)


class ConfigArtifacts:
    """Uploads YAML files into one run's artifacts; the repository is built at the first one."""

    def __init__(self, artifact_uri: str, tracking_uri: str) -> None:
        self.artifact_uri = artifact_uri
        self.tracking_uri = tracking_uri
        self._repository: Any = None

    def upload(self, path: str, content: Mapping[str, Any]) -> None:
        """Write `content` to the run's artifact `path` (``configs/<model>.yaml``).

        Raises `PermanentBackendError` when no retry would help; other errors may pass.
        """
        try:
            if self._repository is None:
                self._repository = artifact_repository(self.artifact_uri, self.tracking_uri)
            directory, name = posixpath.split(path)
            with tempfile.TemporaryDirectory(prefix="tf-ship-") as scratch:
                local = Path(scratch) / name
                local.write_text(yaml_text(content), encoding="utf-8")
                self._repository.log_artifact(str(local), directory or None)
        except Exception as error:
            if is_final(error):
                msg = f"{type(error).__name__}: {first_line(error)}"
                raise PermanentBackendError(msg) from error
            raise
