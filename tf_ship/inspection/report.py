"""What ``tf-ship inspect`` found in a log: its series, its skipped lines, the configs beside it.

Memory stays bounded whatever the log's length: each series (a model's metric) keeps running
aggregates (count, first, last, lowest and highest step, last value, NaN and infinity counts) and
a `Downsample` of a fixed number of buckets for its sparkline and its plot; skipped lines keep a
count and the first few line numbers per reason. Only the number of distinct series grows memory.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from tf_ship.backends.json_numbers import json_number
from tf_ship.contract import MetricEvent
from tf_ship.errors import TfShipError
from tf_ship.inspection.downsample import SAMPLE_BUCKETS, Downsample
from tf_ship.inspection.text import decoded, sparkline
from tf_ship.shipper.events import SkippedLine, SkipReason

FIRST_LINES_KEPT = 5
"""Line numbers kept per skip reason."""
_MODEL = operator.attrgetter("model")
_METRIC = operator.attrgetter("metric")
_STEP = operator.attrgetter("step")
_VALUE = operator.attrgetter("value")


class InspectError(TfShipError):
    """The log cannot be inspected (missing, unreadable), or a plot cannot be made."""


class Series:
    """Running aggregates of one metric of one model, in bounded memory."""

    __slots__ = (
        "backwards",
        "count",
        "first_step",
        "high",
        "inf_count",
        "last_step",
        "last_value",
        "low",
        "max_step",
        "metric",
        "min_step",
        "model",
        "nan_count",
        "sample",
    )

    def __init__(self, model: str, metric: str, sample_buckets: int = SAMPLE_BUCKETS) -> None:
        self.model = model
        self.metric = metric
        self.count = 0
        self.first_step = self.last_step = self.min_step = self.max_step = 0
        self.backwards = 0
        """How many times the step went down from one line of this series to its next."""
        self.last_value = math.nan
        self.nan_count = 0
        self.inf_count = 0
        self.low = math.inf
        """The lowest finite value (inf while there is none)."""
        self.high = -math.inf
        """The highest finite value (-inf while there is none)."""
        self.sample = Downsample(sample_buckets)

    @property
    def name(self) -> str:
        """``<model>/<metric>``, the name trackers show."""
        return f"{self.model}/{self.metric}"

    def add(self, step: int, value: float) -> None:
        """Account for one line of this series."""
        self.extend([step], [value])

    def extend(self, steps: Sequence[int], values: Sequence[float]) -> None:
        """Account for lines of this series, in log order (built-in functions do the work)."""
        if not steps:
            return
        if not self.count:
            self.first_step = self.min_step = self.max_step = self.last_step = steps[0]
        self.backwards += sum(map(operator.lt, steps, [self.last_step, *steps[:-1]]))
        self.min_step = min(self.min_step, *steps)
        self.max_step = max(self.max_step, *steps)
        self.count += len(steps)
        self.last_step = steps[-1]
        self.last_value = values[-1]
        nan_count = sum(map(math.isnan, values))
        inf_count = sum(map(math.isinf, values))
        self.nan_count += nan_count
        self.inf_count += inf_count
        finite = [v for v in values if v - v == 0.0] if nan_count or inf_count else values
        if finite:
            self.low = min(self.low, *finite)
            self.high = max(self.high, *finite)
        self.sample.extend(steps, values)


@attrs.define
class SkipSummary:
    """The lines skipped for one reason: how many, where the first few are, what the first held."""

    reason: SkipReason
    count: int = 0
    first_lines: list[int] = attrs.field(factory=list)
    first_excerpt: bytes = b""

    def add(self, line: SkippedLine) -> None:
        """Count one more skipped line."""
        if not self.count:
            self.first_excerpt = line.excerpt
        self.count += 1
        if len(self.first_lines) < FIRST_LINES_KEPT:
            self.first_lines.append(line.line_number)


@attrs.define
class ConfigProblem:
    """A config file that matched no model: unreadable, or its identifier is in another file."""

    path: Path
    error: str


@attrs.define
class LogReport:
    """What a log holds: its series, its skipped lines, the configs beside it."""

    path: Path
    bytes_read: int = 0
    lines: int = 0
    """Complete lines read (the incomplete last line is not one)."""
    events: int = 0
    series: dict[tuple[str, str], Series] = attrs.field(factory=dict)
    """By (model, metric), in order of first appearance."""
    skipped: dict[SkipReason, SkipSummary] = attrs.field(factory=dict)
    incomplete: SkippedLine | None = None
    configs: dict[str, Path] = attrs.field(factory=dict)
    """Model (the config's identifier) -> its config file."""
    config_problems: list[ConfigProblem] = attrs.field(factory=list)
    mlflow_keys: dict[str, str] = attrs.field(factory=dict)
    """``<model>/<metric>`` -> the MLflow key it becomes."""
    collisions: dict[str, list[str]] = attrs.field(factory=dict)
    """``<model>/<metric>`` -> the names whose sanitized key is the same as its own."""
    sample_buckets: int = attrs.field(default=SAMPLE_BUCKETS, kw_only=True)
    """Buckets of each series' downsample."""

    def add_skipped(self, line: SkippedLine) -> None:
        """Count a line that is not shipped."""
        summary = self.skipped.get(line.reason)
        if summary is None:
            summary = self.skipped[line.reason] = SkipSummary(line.reason)
        summary.add(line)

    def add_events(self, events: Sequence[MetricEvent]) -> None:
        """Account for metric events, in log order, a series at a time."""
        self.events += len(events)
        keys = list(zip(map(_MODEL, events), map(_METRIC, events), strict=True))
        steps = list(map(_STEP, events))
        values = list(map(_VALUE, events))
        distinct = list(dict.fromkeys(keys))  # in order of first appearance
        if len(distinct) == 1:
            self._series(distinct[0]).extend(steps, values)
            return
        groups: dict[tuple[str, str], list[int]] = {key: [] for key in distinct}
        for index, key in enumerate(keys):
            groups[key].append(index)
        for key, indexes in groups.items():
            self._series(key).extend([steps[i] for i in indexes], [values[i] for i in indexes])

    def _series(self, key: tuple[str, str]) -> Series:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series(*key, self.sample_buckets)
        return series

    @property
    def skipped_count(self) -> int:
        """Lines not shipped, the incomplete last line included."""
        return sum(summary.count for summary in self.skipped.values())

    def models(self) -> dict[str, list[Series]]:
        """Each model's series, models and metrics in order of first appearance."""
        models: dict[str, list[Series]] = {}
        for series in self.series.values():
            models.setdefault(series.model, []).append(series)
        return models

    def ordered_series(self) -> list[Series]:
        """Every series, grouped by model: models and metrics in order of first appearance."""
        return [series for group in self.models().values() for series in group]

    def models_without_config(self) -> list[str]:
        """Models of the log that no config file names."""
        return [model for model in self.models() if model not in self.configs]

    def to_json(self, width: int = 24) -> dict[str, Any]:
        """The whole report as JSON data; non-finite numbers as "nan", "inf", "-inf"."""
        return {
            "log": str(self.path),
            "bytes": self.bytes_read,
            "lines": self.lines,
            "metric_lines": self.events,
            "skipped_lines": self.skipped_count,
            "series": [self._series_json(series, width) for series in self.ordered_series()],
            "configs": {model: path.name for model, path in self.configs.items()},
            "models_without_config": self.models_without_config(),
            "config_problems": [
                {"file": problem.path.name, "error": problem.error}
                for problem in self.config_problems
            ],
            "skipped": [
                {
                    "reason": summary.reason.value,
                    "count": summary.count,
                    "first_lines": list(summary.first_lines),
                    "first_excerpt": decoded(summary.first_excerpt),
                }
                for summary in self.skipped.values()
            ],
            "incomplete_last_line": None
            if self.incomplete is None
            else {
                "line": self.incomplete.line_number,
                "offset": self.incomplete.offset,
                "excerpt": decoded(self.incomplete.excerpt),
            },
        }

    def _series_json(self, series: Series, width: int) -> dict[str, Any]:
        finite = series.count > series.nan_count + series.inf_count
        return {
            "model": series.model,
            "metric": series.metric,
            "count": series.count,
            "first_step": series.first_step,
            "last_step": series.last_step,
            "min_step": series.min_step,
            "max_step": series.max_step,
            "steps_go_backwards": series.backwards > 0,
            "backward_jumps": series.backwards,
            "last_value": json_number(series.last_value),
            "min_value": json_number(series.low) if finite else None,
            "max_value": json_number(series.high) if finite else None,
            "nan_count": series.nan_count,
            "inf_count": series.inf_count,
            "sparkline": sparkline(series.sample.columns(width)),
            "mlflow_key": self.mlflow_keys[series.name],
            "mlflow_collides_with": self.collisions.get(series.name, []),
        }
