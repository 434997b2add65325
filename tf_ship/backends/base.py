"""Helpers for backends; the contract itself is `tf_ship.contract` (re-exported here).

Old imports (``from tf_ship.backends.base import Backend``) keep working.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

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
]


def group_by_model_step(
    batch: Sequence[MetricEvent],
) -> Iterator[tuple[str, int, list[MetricEvent]]]:
    """Yield runs of consecutive events that share model and step, in log order.

    TorchFort writes all metrics of one (model, step) next to each other, so grouping runs of
    neighbours gives one tracker row per (model, step) without reordering anything.
    """
    for (model, step), events in itertools.groupby(batch, key=lambda e: (e.model, e.step)):
        yield model, step, list(events)
