"""Look at a TorchFort metric log without any tracker: what ``tf-ship inspect`` shows.

The log is read once, in chunks of a few MiB, with the engine's `LineParser`, so every line is
judged exactly as the shipper judges it. Memory stays bounded whatever the log's length: each
series (a model's metric) keeps running aggregates (count, first, last, lowest and highest
step, last value, NaN and infinity counts) and a `Downsample` of a fixed number of buckets for
its sparkline and its plot; skipped lines keep a count and the first few line numbers per
reason. Only the number of distinct series grows memory.

The MLflow key of each ``<model>/<metric>`` comes from the MLflow backend's own `KeyMap`
(assigned in order of first appearance, as a fresh MLflow run would), without importing MLflow.
"""

from __future__ import annotations

import math
import operator
import os
import unicodedata
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from tf_ship.backends.mlflow.keys import KeyMap, sanitize_key
from tf_ship.errors import TfShipError
from tf_ship.shipper.configs import (
    CONFIG_GLOB,
    MAX_CONFIG_BYTES,
    ConfigCatalog,
    ConfigError,
    load_config,
)
from tf_ship.shipper.events import SkippedLine, SkipReason
from tf_ship.shipper.parse import EXCERPT_BYTES, LineParser

LOG_NAME = "torchfort.log"
CHUNK_BYTES = 2 << 20
"""Bytes read at a time."""
SAMPLE_BUCKETS = 512
"""Buckets a series' downsample holds at most (it merges down to half when full)."""
FIRST_LINES_KEPT = 5
"""Line numbers kept per skip reason."""
BLOCKS = "▁▂▃▄▅▆▇█"
TABLE_WIDTH = 100
NAME_WIDTH = 20
"""Model and metric names longer than this are shortened in the table (never in JSON)."""
FEW_POINTS = 50
"""Curves with at most this many points are drawn with markers."""
MIN_SPARK_WIDTH = 8
MAX_SPARK_WIDTH = 40
_INF = math.inf
_MODEL = operator.attrgetter("model")
_METRIC = operator.attrgetter("metric")
_STEP = operator.attrgetter("step")
_VALUE = operator.attrgetter("value")


class InspectError(TfShipError):
    """The log cannot be inspected (missing, unreadable), or a plot cannot be made."""


# -- downsampling -------------------------------------------------------------------------------


class Downsample:
    """A series' points in log order, kept as at most `capacity` buckets of consecutive points.

    Every closed bucket covers `width` points; the open one, fewer. When `capacity` buckets are
    closed, neighbours merge pairwise and `width` doubles, so memory is bounded and a spike
    survives as its bucket's lowest or highest value. A bucket keeps, over its finite values:
    their number, their mean, and the lowest and highest with their steps and positions. Log
    order is step order unless the steps go backwards (a restarted application).
    """

    __slots__ = (
        "_count",
        "_high",
        "_high_at",
        "_high_step",
        "_low",
        "_low_at",
        "_low_step",
        "_mean",
        "_open",
        "_open_points",
        "capacity",
        "points",
        "width",
    )

    def __init__(self, capacity: int = SAMPLE_BUCKETS) -> None:
        if capacity < 2 or capacity % 2:
            msg = f"capacity must be an even number >= 2, not {capacity}"
            raise ValueError(msg)
        self.capacity = capacity
        self.width = 1
        self.points = 0
        self._count: array[int] = array("q")
        self._mean: array[float] = array("d")
        self._low: array[float] = array("d")
        self._low_step: array[int] = array("q")
        self._low_at: array[int] = array("q")
        self._high: array[float] = array("d")
        self._high_step: array[int] = array("q")
        self._high_at: array[int] = array("q")
        self._open: tuple[Any, ...] = _EMPTY
        """The open bucket, as `buckets` describes them."""
        self._open_points = 0

    def add(self, step: int, value: float) -> None:
        """Append one point (any value: NaN and infinities count as points, not as values)."""
        self.extend([step], [value])

    def extend(self, steps: Sequence[int], values: Sequence[float]) -> None:
        """Append points, a bucket's share at a time (built-in functions do the work)."""
        total = sum(values)
        all_finite = total - total == 0.0  # else NaN, an infinity, or an overflowing sum
        position, end = 0, len(values)
        while position < end:
            take = min(self.width - self._open_points, end - position)
            stop = position + take
            part = _stats(steps[position:stop], values[position:stop], self.points, all_finite)
            self._open = _merge(self._open, part) if self._open_points else part
            self._open_points += take
            self.points += take
            position = stop
            if self._open_points == self.width:
                self._close()

    def _close(self) -> None:
        count, mean, low, low_step, low_at, high, high_step, high_at = self._open
        self._count.append(count)
        self._mean.append(mean)
        self._low.append(low)
        self._low_step.append(low_step)
        self._low_at.append(low_at)
        self._high.append(high)
        self._high_step.append(high_step)
        self._high_at.append(high_at)
        self._open, self._open_points = _EMPTY, 0
        if len(self._count) == self.capacity:
            self._halve()

    def _halve(self) -> None:
        """Merge neighbouring buckets pairwise; each bucket now covers twice as many points."""
        pairs = zip(*[iter(self._closed())] * 2, strict=True)  # capacity is even
        merged = [_merge(a, b) for a, b in pairs]
        columns: list[array[Any]] = [
            self._count,
            self._mean,
            self._low,
            self._low_step,
            self._low_at,
            self._high,
            self._high_step,
            self._high_at,
        ]
        for index, column in enumerate(columns):
            del column[:]
            column.extend(bucket[index] for bucket in merged)
        self.width *= 2

    def _closed(self) -> Iterator[tuple[Any, ...]]:
        return zip(
            self._count,
            self._mean,
            self._low,
            self._low_step,
            self._low_at,
            self._high,
            self._high_step,
            self._high_at,
            strict=True,
        )

    def buckets(self) -> list[tuple[Any, ...]]:
        """Every bucket, the open one last when it holds points.

        Each is ``(finite count, mean, low, low step, low position, high, high step, high
        position)``; positions count the series' points from 0.
        """
        buckets = list(self._closed())
        if self._open_points:
            buckets.append(self._open)
        return buckets

    def columns(self, width: int) -> list[float]:
        """At most `width` values, each the mean of the finite values of consecutive buckets.

        NaN where the buckets hold no finite value. One value per point while the series has at
        most `width` points (and fits in the downsample).
        """
        buckets = self.buckets()
        if not buckets or width < 1:
            return []
        groups = min(width, len(buckets))
        values: list[float] = []
        for group in range(groups):
            part = buckets[group * len(buckets) // groups : (group + 1) * len(buckets) // groups]
            values.append(_mean_of(part))
        return values

    def curve(self) -> tuple[list[float], list[float]]:
        """Steps and values to draw, in log order.

        Each bucket gives its lowest and highest finite value, in the order they came. A NaN
        value breaks the line at buckets without finite values and where the steps go backwards.
        """
        steps: list[float] = []
        values: list[float] = []
        previous: int | None = None
        for count, _, low, low_step, low_at, high, high_step, high_at in self.buckets():
            if not count:
                if values and not math.isnan(values[-1]):
                    steps.append(steps[-1])
                    values.append(math.nan)
                continue
            points = [(low_at, low_step, low)]
            if high_at != low_at:
                points.append((high_at, high_step, high))
            for _, step, value in sorted(points):
                if previous is not None and step < previous and values:
                    steps.append(step)
                    values.append(math.nan)
                steps.append(step)
                values.append(value)
                previous = step
        return steps, values


_EMPTY = (0, 0.0, _INF, 0, -1, -_INF, 0, -1)


def _stats(
    steps: Sequence[int],
    values: Sequence[float],
    first: int,
    all_finite: bool,  # noqa: FBT001
) -> tuple[Any, ...]:
    """A bucket of consecutive points, the first at position `first`."""
    if all_finite:
        finite, where = values, None
    else:
        where = [i for i, value in enumerate(values) if value - value == 0.0]
        finite = [values[i] for i in where]
    if not finite:
        return _EMPTY
    low, high = min(finite), max(finite)
    low_at, high_at = finite.index(low), finite.index(high)  # the first of equal values
    if where is not None:
        low_at, high_at = where[low_at], where[high_at]
    count = len(finite)
    mean = sum(finite) / count
    if mean - mean != 0.0:  # the sum overflowed
        mean = math.fsum(value / count for value in finite)
    mean = min(max(mean, low), high)
    return (count, mean, low, steps[low_at], first + low_at, high, steps[high_at], first + high_at)


def _merge(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    count = a[0] + b[0]
    low = a[2:5] if a[2] <= b[2] else b[2:5]
    high = a[5:8] if a[5] >= b[5] else b[5:8]
    if not count:
        mean = 0.0
    else:
        mean = a[1] * (a[0] / count) + b[1] * (b[0] / count)
        mean = min(max(mean, low[0]), high[0])
    return (count, mean, *low, *high)


def _mean_of(buckets: Sequence[tuple[Any, ...]]) -> float:
    total = sum(bucket[0] for bucket in buckets)
    if not total:
        return math.nan
    mean = math.fsum(bucket[1] * (bucket[0] / total) for bucket in buckets)
    low = min(bucket[2] for bucket in buckets)
    high = max(bucket[5] for bucket in buckets)
    return float(min(max(mean, low), high))


def sparkline(values: Sequence[float]) -> str:
    """One block per value: ``▁`` for the lowest finite value to ``█`` for the highest.

    A space stands for a NaN or infinite value; ``▄`` for every value when all are equal.
    """
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return " " * len(values)
    low, high = min(finite), max(finite)
    span = high / 2 - low / 2  # halves: no overflow between -1e308 and 1e308
    top = len(BLOCKS) - 1
    blocks = []
    for value in values:
        if not math.isfinite(value):
            blocks.append(" ")
        elif span == 0:
            blocks.append(BLOCKS[top // 2])
        else:
            level = round((value / 2 - low / 2) / span * top)
            blocks.append(BLOCKS[min(max(level, 0), top)])
    return "".join(blocks)


# -- per-series aggregates ----------------------------------------------------------------------


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
        self.low = _INF
        """The lowest finite value (inf while there is none)."""
        self.high = -_INF
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
                    "first_excerpt": _text(summary.first_excerpt),
                }
                for summary in self.skipped.values()
            ],
            "incomplete_last_line": None
            if self.incomplete is None
            else {
                "line": self.incomplete.line_number,
                "offset": self.incomplete.offset,
                "excerpt": _text(self.incomplete.excerpt),
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


def json_number(value: float) -> float | str:
    """A float for JSON: NaN and infinities as the strings "nan", "inf", "-inf"."""
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


# -- reading ------------------------------------------------------------------------------------


def resolve_log(log_or_dir: Path) -> Path:
    """The log file: `log_or_dir` itself, or ``torchfort.log`` in it when it is a directory."""
    path = log_or_dir / LOG_NAME if log_or_dir.is_dir() else log_or_dir
    if not path.is_file():
        what = "no torchfort.log in" if log_or_dir.is_dir() else "no such log file:"
        msg = f"{what} {log_or_dir}"
        raise InspectError(msg)
    return path


class _Reader:
    """Feeds a log's complete lines to the parser in chunks; aggregates what it finds."""

    def __init__(self, report: LogReport, *, max_line_bytes: int, sample_buckets: int) -> None:
        self.report = report
        self.parser = LineParser(max_line_bytes=max_line_bytes)
        self.max_line_bytes = max_line_bytes
        self.sample_buckets = sample_buckets

    def skip(self, line: SkippedLine) -> None:
        summary = self.report.skipped.get(line.reason)
        if summary is None:
            summary = self.report.skipped[line.reason] = SkipSummary(line.reason)
        summary.add(line)

    def _series(self, key: tuple[str, str]) -> Series:
        series = self.report.series.get(key)
        if series is None:
            series = self.report.series[key] = Series(*key, self.sample_buckets)
        return series

    def feed(self, chunk: bytes, offset: int) -> None:
        """Parse complete lines found at byte `offset`."""
        report = self.report
        parsed = self.parser.parse(chunk, offset=offset, line_number=report.lines)
        report.lines += parsed.lines
        report.events += len(parsed.events)
        for line in parsed.skipped:
            self.skip(line)
        events = parsed.events
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

    def read(self, stream: Any, size: int, chunk_bytes: int) -> None:  # noqa: ANN401 - a binary file
        """Read `size` bytes; a line without its newline at the end is the incomplete line."""
        report = self.report
        carry = b""
        offset = 0  # file offset of `carry`
        discarding = False  # inside a line longer than max_line_bytes, already reported
        while report.bytes_read < size:
            data = stream.read(min(chunk_bytes, size - report.bytes_read))
            if not data:
                break  # the file shrank while being read
            report.bytes_read += len(data)
            if discarding:
                newline = data.find(b"\n")
                if newline < 0:
                    offset += len(data)
                    continue
                discarding = False
                offset += newline + 1
                report.lines += 1
                data = data[newline + 1 :]
            buffer = carry + data if carry else data
            last = buffer.rfind(b"\n")
            if last < 0:
                carry = buffer
                if len(buffer) > self.max_line_bytes:
                    self.skip(_too_long(buffer, offset, report.lines))
                    offset += len(buffer)
                    carry, discarding = b"", True
                continue
            self.feed(buffer[: last + 1], offset)
            offset += last + 1
            carry = buffer[last + 1 :]
        if carry:
            report.incomplete = SkippedLine(
                SkipReason.INCOMPLETE, offset, report.lines + 1, carry[:EXCERPT_BYTES]
            )
            self.skip(report.incomplete)


def _too_long(data: bytes, offset: int, lines: int) -> SkippedLine:
    return SkippedLine(SkipReason.TOO_LONG, offset, lines + 1, data[:EXCERPT_BYTES])


def inspect_log(
    log_or_dir: Path,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    max_line_bytes: int = 1 << 20,
    sample_buckets: int = SAMPLE_BUCKETS,
) -> LogReport:
    """Read a log (a ``torchfort.log`` file or its directory) once and report what it holds.

    Reads what the file holds when opened (a live log is not followed); the configs are looked
    for in the log's directory.
    """
    path = resolve_log(log_or_dir)
    report = LogReport(path)
    reader = _Reader(report, max_line_bytes=max_line_bytes, sample_buckets=sample_buckets)
    try:
        with path.open("rb", buffering=0) as stream:
            reader.read(stream, os.fstat(stream.fileno()).st_size, chunk_bytes)
    except OSError as error:
        msg = f"cannot read {path}: {error.strerror or error}"
        raise InspectError(msg) from error
    # reasons in the order of their first line
    ordered = sorted(report.skipped.values(), key=lambda summary: summary.first_lines[0])
    report.skipped = {summary.reason: summary for summary in ordered}
    _assign_mlflow_keys(report)
    _find_configs(report)
    return report


def _assign_mlflow_keys(report: LogReport) -> None:
    """Each name's MLflow key, as a fresh run assigns them, and who collides with whom."""
    keys = KeyMap(quiet=True)
    owner: dict[str, str] = {}
    for series in report.series.values():
        name = series.name
        key = keys.key(name)
        report.mlflow_keys[name] = key
        owner[key] = name
    for name, key in report.mlflow_keys.items():
        base = sanitize_key(name)
        holder = owner.get(base)
        if key != base and holder is not None and holder != name:
            report.collisions.setdefault(name, []).append(holder)
            report.collisions.setdefault(holder, []).append(name)


def _find_configs(report: LogReport) -> None:
    logdir = report.path.parent
    configs = ConfigCatalog(logdir).configs(force=True)
    report.configs = {
        model: config.path for model, config in configs.items() if config.path is not None
    }
    used = {path: model for model, path in report.configs.items()}
    try:
        paths = sorted(logdir.glob(CONFIG_GLOB))
    except OSError:  # pragma: no cover - the directory vanished
        return
    for path in paths:
        if path in used:
            continue
        try:
            with path.open("rb") as stream:
                identifier, _ = load_config(stream.read(MAX_CONFIG_BYTES + 1))
        except (ConfigError, OSError) as error:
            report.config_problems.append(ConfigProblem(path, " ".join(str(error).split())))
            continue
        other = report.configs.get(identifier)
        where = f" in {other.name}" if other is not None else ""
        problem = f"identifier {identifier!r} is also{where}"
        report.config_problems.append(ConfigProblem(path, problem))


# -- the table ----------------------------------------------------------------------------------


def display_width(text: str) -> int:
    """Terminal columns `text` takes: wide East Asian characters 2, combining marks 0."""
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
        for char in text
    )


def printable(text: str) -> str:
    r"""`text` with control and other unprintable characters escaped (``\x85``)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` columns, with an ellipsis when cut."""
    if display_width(text) <= width:
        return text
    out = ""
    for char in text:
        if display_width(out + char) > width - 1:
            break
        out += char
    return out.rstrip() + "…"


def _pad(text: str, width: int, *, right: bool = False) -> str:
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def format_value(value: float) -> str:
    """A value as TorchFort prints it: 6 significant digits, ``nan``, ``inf``, ``-inf``."""
    if math.isnan(value):
        return "nan"
    return f"{value:.6g}"


_HEADERS = ("model", "metric", "count", "steps", "last", "NaN", "inf")
_RIGHT = (False, False, True, False, True, True, True)
_GAP = "  "


def format_table(report: LogReport, width: int | None = None) -> str:  # noqa: C901, PLR0912, PLR0915 - one section after the other
    """The report as plain text: the series table, configs, skipped lines.

    `width` is the sparkline's; None fits the table into 100 columns where names allow.
    """
    lines = [
        (
            f"{report.path}: {report.lines} lines, {report.events} metric lines, "
            f"{report.skipped_count} skipped, {len(report.series)} series in "
            f"{len(report.models())} models"
        )
    ]
    ordered = report.ordered_series()
    rows = []
    for series in ordered:
        steps = f"{series.first_step}"
        if series.last_step != series.first_step or series.count > 1:
            steps += f"..{series.last_step}"
        rows.append(
            (
                shorten(printable(series.model), NAME_WIDTH),
                shorten(printable(series.metric), NAME_WIDTH),
                str(series.count),
                steps,
                format_value(series.last_value),
                str(series.nan_count),
                str(series.inf_count),
            )
        )
    widths = [
        max([display_width(header), *(display_width(row[i]) for row in rows)])
        for i, header in enumerate(_HEADERS)
    ]
    if width is None:
        free = TABLE_WIDTH - sum(widths) - len(_GAP) * len(widths)
        width = max(MIN_SPARK_WIDTH, min(MAX_SPARK_WIDTH, free))
    if rows:
        lines.append("")
        header = [_pad(h, w, right=r) for h, w, r in zip(_HEADERS, widths, _RIGHT, strict=True)]
        lines.append(_GAP.join([*header, "curve"]).rstrip())
    indent = " " * 4
    for series, row in zip(ordered, rows, strict=True):
        cells = [_pad(c, w, right=r) for c, w, r in zip(row, widths, _RIGHT, strict=True)]
        curve = sparkline(series.sample.columns(width))
        lines.append(_GAP.join([*cells, curve]).rstrip())
        if series.backwards:
            times = "once" if series.backwards == 1 else f"{series.backwards} times"
            lines.append(
                f"{indent}steps go backwards ({times}; a restart?): "
                f"min {series.min_step}, max {series.max_step}"
            )
        key = report.mlflow_keys[series.name]
        others = report.collisions.get(series.name)
        if key != series.name or others:
            shown = printable(key) if key != series.name else "unchanged"
            note = f"{indent}MLflow key: {shown}"
            if others:
                note += "  COLLISION with " + ", ".join(repr(printable(o)) for o in others)
            lines.append(note)
    if not rows:
        lines.extend(["", "no metric lines"])
    lines.extend(["", "configs:" if report.configs else "configs: none"])
    lines.extend(
        f"{indent}{printable(model)} -> {path.name}" for model, path in report.configs.items()
    )
    missing = report.models_without_config()
    if missing:
        lines.append("models without config: " + ", ".join(printable(m) for m in missing))
    if report.config_problems:
        lines.append("config files not used:")
        lines.extend(
            shorten(f"{indent}{problem.path.name}: {problem.error}", TABLE_WIDTH)
            for problem in report.config_problems
        )
    lines.extend(["", "skipped lines:" if report.skipped else "skipped lines: none"])
    reason_width = max((len(s.reason.value) for s in report.skipped.values()), default=0)
    count_width = max((len(str(s.count)) for s in report.skipped.values()), default=0)
    for summary in report.skipped.values():
        numbers = ", ".join(str(n) for n in summary.first_lines)
        more = ", ..." if summary.count > len(summary.first_lines) else ""
        label = "line" if summary.count == 1 else "lines"
        lines.append(
            f"{indent}{summary.reason.value:<{reason_width}}  {summary.count:>{count_width}}"
            f"  {label} {numbers}{more}"
        )
        if summary.first_excerpt.strip():
            excerpt = shorten(printable(_text(summary.first_excerpt)), 80)
            lines.append(f"{indent}{indent}first: {excerpt}")
    return "\n".join(lines) + "\n"


# -- the plot -----------------------------------------------------------------------------------


PLOT_COLUMNS = 3
"""Panels side by side; one row of them per three series."""
PANEL_INCHES = (4.0, 2.6)
MAX_FIGURE_INCHES = 600.0
"""Agg draws at most 2**16 pixels a side: very many series get flatter panels."""


def plot_figure(report: LogReport) -> Any:  # noqa: ANN401 - a matplotlib Figure
    """Every series in a panel of its own, against its step (integer ticks), model by model.

    One panel per metric, so that a learning rate near 1e-4 is not a flat line under a loss near
    1. Needs matplotlib (``pip install "tf-ship[plot]"``); draws with the Agg canvas, so it
    needs no display and leaves matplotlib's global backend alone.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
        from matplotlib.ticker import MaxNLocator  # noqa: PLC0415
    except ImportError as error:
        msg = 'plotting needs matplotlib: pip install "tf-ship[plot]"'
        raise InspectError(msg) from error
    series_list = report.ordered_series()
    columns = max(1, min(PLOT_COLUMNS, len(series_list)))
    rows = max(1, -(-len(series_list) // columns))
    width, height = PANEL_INCHES
    figure = Figure(
        figsize=(width * columns, min(height * rows, MAX_FIGURE_INCHES)), layout="constrained"
    )
    FigureCanvasAgg(figure)
    if not series_list:
        figure.text(0.5, 0.5, f"{report.path.name}: no metric lines", ha="center")
        return figure
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for axis, series in zip(axes, series_list, strict=False):
        _draw_series(axis, series)
        axis.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10], integer=True))
    for axis in axes[len(series_list) :]:
        axis.set_visible(False)
    return figure


def _draw_series(axis: Any, series: Series) -> None:  # noqa: ANN401 - a matplotlib Axes
    steps, values = series.sample.curve()
    few = len(steps) <= FEW_POINTS  # markers, or lone points would not show
    axis.plot(steps, values, linewidth=1, marker="o" if few else None, markersize=3)
    finite = [v for v in values if not math.isnan(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
        axis.set_yscale("log")
    if not finite:
        note = f"no finite value ({series.nan_count} NaN, {series.inf_count} inf)"
        axis.text(0.5, 0.5, note, ha="center", va="center", transform=axis.transAxes)
    axis.set_title(shorten(printable(series.name), 60), loc="left", fontsize="medium")
    axis.set_xlabel("step")
    axis.grid(visible=True, alpha=0.3)


def write_plot(report: LogReport, path: Path) -> None:
    """Write `plot_figure` to a PNG file."""
    figure = plot_figure(report)
    try:
        figure.savefig(path, format="png", dpi=100)
    except OSError as error:
        msg = f"cannot write {path}: {error.strerror or error}"
        raise InspectError(msg) from error
