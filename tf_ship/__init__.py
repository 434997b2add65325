"""tf-ship: ship TorchFort's metric log to experiment trackers (wandb, MLflow, TensorBoard).

The public API::

    import tf_ship
    from tf_ship.backends.jsonl import JsonlBackend

    report = tf_ship.ship("/path/to/logdir", {"out": JsonlBackend("metrics.jsonl")})

and the `Backend` protocol for writing backends of your own (see docs/writing-a-backend.md).
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

__version__ = "0.1.0"

if _TYPE_CHECKING:
    from tf_ship.backends.base import group_by_model_step
    from tf_ship.backends.registry import (
        available_backends,
        create_backend,
    )
    from tf_ship.contract import (
        Backend,
        BackendError,
        FatalBackendError,
        FileIdentity,
        MetricEvent,
        ModelConfig,
        PermanentBackendError,
        ResumableBackend,
        RunInfo,
        RunStatus,
    )
    from tf_ship.errors import TfShipError
    from tf_ship.shipper.events import (
        SkippedLine,
        SkipReason,
    )
    from tf_ship.shipper.parse import (
        LineParser,
    )
    from tf_ship.shipper.ship import (
        LogNotFoundError,
        ShipOptions,
        Shipper,
        ShipReport,
        ship,
    )

_EXPORTS = {
    "Backend": "tf_ship.contract",
    "BackendError": "tf_ship.contract",
    "FatalBackendError": "tf_ship.contract",
    "PermanentBackendError": "tf_ship.contract",
    "ResumableBackend": "tf_ship.contract",
    "group_by_model_step": "tf_ship.backends.base",
    "available_backends": "tf_ship.backends.registry",
    "create_backend": "tf_ship.backends.registry",
    "FileIdentity": "tf_ship.contract",
    "MetricEvent": "tf_ship.contract",
    "ModelConfig": "tf_ship.contract",
    "RunInfo": "tf_ship.contract",
    "RunStatus": "tf_ship.contract",
    "SkippedLine": "tf_ship.shipper.events",
    "SkipReason": "tf_ship.shipper.events",
    "TfShipError": "tf_ship.errors",
    "LineParser": "tf_ship.shipper.parse",
    "LogNotFoundError": "tf_ship.shipper.ship",
    "ShipOptions": "tf_ship.shipper.ship",
    "ShipReport": "tf_ship.shipper.ship",
    "Shipper": "tf_ship.shipper.ship",
    "ship": "tf_ship.shipper.ship",
}
"""Public name -> the module that defines it; imported on first use, so that importing the
command line (and `tf-ship --help`) does not load the engine."""


def __getattr__(name: str) -> _Any:  # noqa: ANN401 - whatever the name is
    module = _EXPORTS.get(name)
    if module is None:
        msg = f"module 'tf_ship' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


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
    "TfShipError",
    "__version__",
    "available_backends",
    "create_backend",
    "group_by_model_step",
    "ship",
]
