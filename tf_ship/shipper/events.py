"""The engine's own value types (skipped lines) and the parser's fast event builder.

The values that reach the backends (events, configs, run info, statuses) are part of the
backend contract and live in `tf_ship.contract`; they are re-exported here for old imports.
"""

from __future__ import annotations

import collections
import enum
import itertools
from collections.abc import Iterable

import attrs

from tf_ship.contract import FileIdentity, MetricEvent, ModelConfig, RunInfo, RunStatus

__all__ = [
    "FileIdentity",
    "MetricEvent",
    "ModelConfig",
    "RunInfo",
    "RunStatus",
    "SkipReason",
    "SkippedLine",
    "metric_events",
]


_EVENT_SLOTS = tuple(getattr(MetricEvent, field.name) for field in attrs.fields(MetricEvent))
if any(f.validator or f.converter for f in attrs.fields(MetricEvent)) or hasattr(
    MetricEvent, "__attrs_post_init__"
):  # pragma: no cover - a guard for whoever changes MetricEvent
    msg = "metric_events() sets slots directly: MetricEvent must stay a plain frozen record"
    raise TypeError(msg)


def metric_events(  # noqa: PLR0913 - one iterable per field
    models: Iterable[str],
    metrics: Iterable[str],
    steps: Iterable[int],
    values: Iterable[float],
    *,
    files: Iterable[FileIdentity | None],
    offsets: Iterable[int],
    count: int,
) -> list[MetricEvent]:
    """Build `count` events column by column, without a Python call per event.

    The parser's fast path: the same objects as ``MetricEvent(...)`` makes (equal, same hash),
    about three times cheaper, because each slot of all events is filled by one C-level loop
    instead of running the generated ``__init__`` once per event. Each iterable must yield at
    least `count` items.
    """
    events: list[MetricEvent] = list(map(object.__new__, itertools.repeat(MetricEvent, count)))
    columns = (models, metrics, steps, values, files, offsets)
    for slot, column in zip(_EVENT_SLOTS, columns, strict=True):
        collections.deque(map(slot.__set__, events, column), maxlen=0)
    return events


class SkipReason(enum.Enum):
    """Why a line of the log was not shipped."""

    NOT_A_METRIC_LINE = "not a metric line"
    BAD_VALUE = "value is not a number"
    BAD_STEP = "step is not a 64-bit integer"
    NUL_BYTES = "NUL bytes"
    TOO_LONG = "line longer than --max-line-bytes"
    INCOMPLETE = "incomplete last line"
    EMPTY = "empty line"


@attrs.frozen
class SkippedLine:
    """A line that was counted and reported instead of shipped."""

    reason: SkipReason
    offset: int
    line_number: int
    excerpt: bytes
