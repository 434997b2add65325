"""Helpers for backends; the contract itself is `tf_ship.contract` (re-exported here).

Old imports (``from tf_ship.backends.base import Backend``) keep working.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tf_ship.contract import (
    Backend,
    BackendError,
    FatalBackendError,
    MetricEvent,
    PermanentBackendError,
    ResumableBackend,
)

__all__ = [
    "Backend",
    "BackendError",
    "FatalBackendError",
    "PermanentBackendError",
    "ResumableBackend",
    "group_by_model_step",
    "plain",
]


def group_by_model_step(
    batch: Sequence[MetricEvent],
) -> Iterator[tuple[str, int, list[MetricEvent]]]:
    """Yield runs of consecutive events that share model and step, in log order.

    TorchFort writes all metrics of one (model, step) next to each other, so grouping runs of
    neighbours gives one tracker row per (model, step) without reordering anything.
    """
    for (model, step), events in itertools.groupby(batch, key=_MODEL_AND_STEP):
        yield model, step, list(events)


_MODEL_AND_STEP = operator.attrgetter("model", "step")


def plain(value: Any) -> Any:  # noqa: ANN401 - any YAML value
    """A YAML value as plain JSON-like Python (str keys, lists, scalars, text), for SDK configs."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
