"""Application restarts: where one application run ends in the log and the next begins.

A restarted TorchFort application appends to the same log, and nothing in a line marks the
restart: its steps go back (a checkpoint restore) or start again from 0. Config files being
rewritten is the best hint, but their modification times are not in the log, and a backend that
lags behind (or a shipper restarted an hour later) sees only the newest ones. So the boundary is
found from the log's bytes alone, and every backend worker, each reading the file on its own,
and every later session of the shipper split the log at the same line:

    A new segment starts at the first metric line whose step is strictly lower than the highest
    step of the same series (model and metric) seen so far in the current segment.

Within one application run a series never goes back: TorchFort's built-in metrics use the
model's training step counter, and user metrics are logged with whatever counter the user passes
for that metric. Equal steps (a re-logged step, several metrics of one step) do not split.
Series are compared one by one, not whole models, because a user metric may use its own counter
(an epoch number beside the training step) under the model's name.

The detector's state (the segment number, the highest step of each series, what the first run
left to link the others to) is saved with each backend's cursor, as of that cursor, so a resumed
shipper continues the right segment.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from tf_ship.contract import MetricEvent
from tf_ship.shipper.events import EventColumns, series_of, steps_of


def _non_decreasing(steps: Sequence[int]) -> bool:
    """True when no step is lower than the one before it (compared in C, not a Python loop)."""
    return all(map(operator.le, steps, steps[1:]))


def _last_steps(events: Sequence[MetricEvent], steps: Sequence[int]) -> dict[tuple[str, str], int]:
    """The step of each series' last event: from the events' tail when it holds every series.

    TorchFort logs every metric of every model at each step, so the last few lines name every
    series; a dict of those spares a (model, metric) pair per event of the batch.
    """
    if isinstance(events, EventColumns):
        possible = len(set(events.models)) * len(set(events.metrics))
        tail = -4 * possible
        series = zip(events.models[tail:], events.metrics[tail:], strict=True)
        last = dict(zip(series, steps[tail:], strict=True))
        if len(last) == possible or len(steps) <= 4 * possible:
            return last
    return dict(zip(series_of(events), steps, strict=True))


class OnRestart(enum.Enum):
    """What to do when the application restarted: the ``--on-restart`` policy."""

    NEW_RUN = "new-run"
    """Close the current tracker run and ship the next segment to a new run, linked to the first."""
    CONTINUE = "continue"
    """Keep one run for the whole log (curves may go back and draw over themselves)."""


@attrs.define
class Segments:
    """Which segment of the log a worker is in, and the highest step of each series in it."""

    number: int = 0
    """0 for the log's first application run, N after the N-th restart."""
    first_run: dict[str, Any] = attrs.field(factory=dict)
    """The resume state of the first segment's run, once a second segment began."""
    highest: dict[tuple[str, str], int] = attrs.field(factory=dict)
    """The highest step of each (model, metric) in the current segment, as of the cursor."""

    def boundary(self, events: Sequence[MetricEvent]) -> int | None:
        """The index of the first event that starts a new segment, or None; changes nothing.

        The usual chunk (one step counter shared by all series) takes a shortcut: when its steps
        never go down and its first is at least every series' highest, no series can go back.
        """
        if not events:
            return None
        steps = steps_of(events)
        if _non_decreasing(steps) and steps[0] >= max(self.highest.values(), default=steps[0]):
            return None
        highest = self.highest
        seen: dict[tuple[str, str], int] = {}
        for index, event in enumerate(events):
            key = (event.model, event.metric)
            top = seen.get(key)
            if top is None:
                top = highest.get(key)
            if top is None or event.step > top:
                seen[key] = event.step
            elif event.step < top:
                return index
        return None

    def observe(self, events: Sequence[MetricEvent]) -> None:
        """Take events the cursor has moved past into the current segment."""
        highest = self.highest
        steps = steps_of(events)
        if _non_decreasing(steps):  # the last step of each series is its highest
            for key, step in _last_steps(events, steps).items():
                top = highest.get(key)
                if top is None or step > top:
                    highest[key] = step
            return
        for event in events:
            key = (event.model, event.metric)
            top = highest.get(key)
            if top is None or event.step > top:
                highest[key] = event.step

    def begin_next(self, first_run: Mapping[str, Any]) -> None:
        """Start the next segment; `first_run` is the first run's resume state."""
        if self.number == 0:
            self.first_run = dict(first_run)
        self.number += 1
        self.highest = {}

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (the highest steps nested by model, then metric)."""
        nested: dict[str, dict[str, int]] = {}
        for (model, metric), step in self.highest.items():
            nested.setdefault(model, {})[metric] = step
        return {"number": self.number, "first_run": dict(self.first_run), "highest": nested}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Segments:
        """Inverse of `to_json`; an empty or missing mapping is the first segment."""
        if not data:
            return cls()
        nested = data.get("highest") or {}
        highest = {
            (str(model), str(metric)): int(step)
            for model, metrics in nested.items()
            for metric, step in metrics.items()
        }
        first_run = data.get("first_run") or {}
        return cls(int(data.get("number") or 0), dict(first_run), highest)

    def snapshot(self) -> Segments:
        """A copy that later changes do not reach."""
        return Segments(self.number, dict(self.first_run), dict(self.highest))
