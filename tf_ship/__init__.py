"""tf-ship: ship TorchFort's metric log to experiment trackers (wandb, MLflow, TensorBoard).

The public API::

    import tf_ship
    from tf_ship.backends.jsonl import JsonlBackend

    report = tf_ship.ship("/path/to/logdir", {"out": JsonlBackend("metrics.jsonl")})

and the `Backend` protocol for writing backends of your own (see docs/writing-a-backend.md).
"""

from tf_ship.backends.base import (
    Backend,
    BackendError,
    FatalBackendError,
    PermanentBackendError,
    ResumableBackend,
    group_by_model_step,
)
from tf_ship.backends.registry import available_backends, create_backend
from tf_ship.shipper.events import (
    FileIdentity,
    MetricEvent,
    ModelConfig,
    RunInfo,
    RunStatus,
    SkippedLine,
    SkipReason,
)
from tf_ship.shipper.parse import LineParser
from tf_ship.shipper.ship import LogNotFoundError, ShipOptions, Shipper, ShipReport, ship

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "FatalBackendError",
    "FileIdentity",
    "LineParser",
    "LogNotFoundError",
    "MetricEvent",
    "ModelConfig",
    "PermanentBackendError",
    "ResumableBackend",
    "RunInfo",
    "RunStatus",
    "ShipOptions",
    "ShipReport",
    "Shipper",
    "SkipReason",
    "SkippedLine",
    "__version__",
    "available_backends",
    "create_backend",
    "group_by_model_step",
    "ship",
]
