"""The MLflow backend (`MlflowBackend`), split by job; docs/backends.md (MLflow) says what it does.

Importing this package does not import MLflow: the SDK is imported only when a run is opened.
"""

from tf_ship.backends.mlflow.backend import MlflowBackend

__all__ = ["MlflowBackend"]
