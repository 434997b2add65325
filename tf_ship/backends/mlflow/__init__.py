"""The MLflow backend (`MlflowBackend`), split by job; docs/backends.md (MLflow) says what it does.

Importing this package does not import MLflow: the SDK is imported only when a run is opened.
`KeyMap` and `sanitize_key` (`keys`) stay importable from here, as before the split.
"""

from tf_ship.backends.mlflow.backend import MlflowBackend
from tf_ship.backends.mlflow.keys import KeyMap, sanitize_key

__all__ = ["KeyMap", "MlflowBackend", "sanitize_key"]
