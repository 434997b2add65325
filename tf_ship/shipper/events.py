"""The value types that flow from the log to the backends.

Every event remembers where it came from (file identity and byte offset), so that any event can
be traced back to its line and replayed from there.
"""

from __future__ import annotations

import collections
import enum
import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class FileIdentity:
    """Which file a byte offset belongs to: device and inode, as `os.stat` reports them."""

    device: int
    inode: int

    def __str__(self) -> str:
        return f"{self.device}:{self.inode}"


@attrs.frozen(slots=True)
class MetricEvent:
    """One metric line of the log: a value of `metric` for `model` at TorchFort step `step`."""

    model: str
    metric: str
    step: int
    value: float
    file: FileIdentity | None = None
    offset: int = -1

    @property
    def key(self) -> str:
        """The name most trackers show: ``<model>/<metric>``."""
        return f"{self.model}/{self.metric}"


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


@attrs.frozen
class ModelConfig:
    """A model's YAML config, as TorchFort wrote it beside the log, with `identifier` removed."""

    model: str
    config: Mapping[str, Any]
    path: Path | None = None
    version: int = 0
    written_ns: int = 0


@attrs.frozen
class RunInfo:
    """What a backend needs to open (or reopen) its run."""

    logdir: Path
    log_file: Path
    run_name: str | None = None
    state: Mapping[str, Any] = attrs.field(factory=dict)
    segment: int = 0
    """Which application run of the log this tracker run is for: 0 for the first, N for the
    run after the N-th restart of the application (``--on-restart new-run``)."""
    first_run: Mapping[str, Any] = attrs.field(factory=dict)
    """For a segment after the first: what the first segment's run left in its resume state (its
    run id, name, directory), so that the new run can be linked to it; empty otherwise."""


class RunStatus(enum.Enum):
    """How a run ended; trackers that know run states record it."""

    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


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
