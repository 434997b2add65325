"""A series' points in bounded memory: buckets that keep the mean, the extremes and their steps.

What the sparklines and the plot of ``tf-ship inspect`` are drawn from, whatever the log's length.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Sequence
from typing import Any

SAMPLE_BUCKETS = 512
"""Buckets a series' downsample holds at most (it merges down to half when full)."""
_INF = math.inf


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
        for index, column in enumerate(self._columns()):
            del column[:]
            column.extend(bucket[index] for bucket in merged)
        self.width *= 2

    def _columns(self) -> list[array[Any]]:
        """The closed buckets' columns, in the order of a bucket's fields."""
        return [
            self._count,
            self._mean,
            self._low,
            self._low_step,
            self._low_at,
            self._high,
            self._high_step,
            self._high_at,
        ]

    def _closed(self) -> Iterator[tuple[Any, ...]]:
        return zip(*self._columns(), strict=True)

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
