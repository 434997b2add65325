"""Each metric row's timestamp, chosen so that a re-sent or replayed batch gets the same ones.

MLflow merges rows equal in key, timestamp, step and value, so equal timestamps make a re-send
or a replay after a crash merge instead of doubling: docs/delivery.md (What a crash costs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tf_ship.contract import MetricEvent

EventId = tuple[MetricEvent, int]
"""An event and how many equal events came before it in its batch."""
MAX_PENDING = 100_000
"""Timestamps of unflushed events kept at most (only refused events linger)."""
MAX_RANGES = 64
"""Recorded in-flight ranges kept at most (only ranges whose last event was refused linger)."""
_RANGE_FIELDS = ("device", "inode", "first", "last", "base")


def event_ids(batch: Sequence[MetricEvent]) -> list[EventId]:
    """Identify events by value and occurrence, so equal events in one batch stay distinct."""
    seen: dict[MetricEvent, int] = {}
    ids = []
    for event in batch:
        count = seen.get(event, 0)
        seen[event] = count + 1
        ids.append((event, count))
    return ids


class Timestamps:
    """Per key strictly increasing milliseconds, ``max(base, previous + 1)``, kept until flushed.

    ``base`` is the wall clock when a batch is prepared. Before a batch is sent, `prepare`
    records the byte range of its lines with its ``base``; a replay in log order, from the last
    timestamps saved with the cursor, then recomputes the very same timestamps.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._durable: dict[str, int] = {}
        self._ranges: list[dict[str, int]] = []
        self._pending: dict[EventId, int] = {}
        self._delivered: list[EventId] = []

    def prepare(self, batch: Sequence[MetricEvent], key_of: Callable[[MetricEvent], str]) -> bool:
        """Fix the timestamps of the batch's new events; True when a new range was recorded."""
        return self._prepare(event_ids(batch), key_of)

    def stamp(
        self, batch: Sequence[MetricEvent], key_of: Callable[[MetricEvent], str]
    ) -> tuple[list[EventId], list[int]]:
        """The batch's event ids and timestamps (those of its first attempt, if re-sent)."""
        ids = event_ids(batch)
        self._prepare(ids, key_of)
        return ids, [self._pending[event_id] for event_id in ids]

    def _prepare(self, ids: Sequence[EventId], key_of: Callable[[MetricEvent], str]) -> bool:
        base = time.time_ns() // 1_000_000
        fresh: dict[tuple[int, int], list[int]] = {}
        for event_id in ids:
            if event_id in self._pending:
                continue
            event = event_id[0]
            recorded = self._recorded_base(event)
            if recorded is None and event.file is not None and event.offset >= 0:
                fresh.setdefault((event.file.device, event.file.inode), []).append(event.offset)
            key = key_of(event)
            timestamp = max(base if recorded is None else recorded, self._last.get(key, -1) + 1)
            self._last[key] = timestamp
            if len(self._pending) >= MAX_PENDING:
                self._pending.clear()
            self._pending[event_id] = timestamp
        for (device, inode), offsets in fresh.items():
            self._ranges.append(
                {
                    "device": device,
                    "inode": inode,
                    "first": min(offsets),
                    "last": max(offsets),
                    "base": base,
                }
            )
        del self._ranges[:-MAX_RANGES]
        return bool(fresh)

    def _recorded_base(self, event: MetricEvent) -> int | None:
        """The base timestamp recorded for the range holding the event's line, if any."""
        if event.file is None or event.offset < 0:
            return None
        for item in self._ranges:
            if (
                item["device"] == event.file.device
                and item["inode"] == event.file.inode
                and item["first"] <= event.offset <= item["last"]
            ):
                return item["base"]
        return None

    def delivered(self, ids: Sequence[EventId]) -> None:
        """The store holds these events now (their timestamps are forgotten at the next flush)."""
        self._delivered.extend(ids)

    def flushed(self) -> None:
        """Forget the delivered events and the ranges they complete; the last timestamps last."""
        reached: dict[tuple[int, int], int] = {}
        for event_id in self._delivered:
            self._pending.pop(event_id, None)
            event = event_id[0]
            if event.file is not None:
                where = (event.file.device, event.file.inode)
                reached[where] = max(reached.get(where, -1), event.offset)
        self._delivered.clear()
        self._ranges = [
            item
            for item in self._ranges
            if item["last"] > reached.get((item["device"], item["inode"]), -1)
        ]
        self._durable = dict(self._last)

    def state(self) -> dict[str, Any]:
        """For the resume state: each key's last timestamp as of the last flush, the ranges."""
        return {
            "timestamps": dict(self._durable),
            "in_flight": [dict(item) for item in self._ranges],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Reload what `state` returned, to replay with the same timestamps."""
        timestamps = state.get("timestamps")
        if isinstance(timestamps, Mapping):
            self._last = {str(k): int(v) for k, v in timestamps.items()}
            self._durable = dict(self._last)
        ranges = state.get("in_flight")
        if isinstance(ranges, list):
            self._ranges = [
                {name: int(item[name]) for name in _RANGE_FIELDS}
                for item in ranges
                if isinstance(item, Mapping) and all(name in item for name in _RANGE_FIELDS)
            ]
