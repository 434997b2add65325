"""Rows wandb was handed but had not written yet: kept in tf-ship's state, sent again if lost.

wandb-core writes a run's transaction log in 32 KiB blocks and keeps the current block in
memory; wandb before 0.31 cannot be asked to write it sooner, and when the process that logged
dies, wandb-core exits without writing it. So on those versions `WandbBackend.flush` cannot wait
until wandb holds every row. Instead it records the rows its transaction log does not show yet
(at most about one block) in the resume state, which tf-ship saves atomically and fsyncs with
the cursor. After a crash, the run's logs hold the rows before those and a prefix of them:
`lost_rows` finds that prefix and returns the rest, which the next session sends first.

The rows are stored as one compact JSON text (a list of rows, each a list of ``[model, metric,
step, value]`` with the value as Python's ``repr`` of the float, exact for NaN, infinities and
-0), so that the state file stays small.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tf_ship.backends.wandb.replay import same_value
from tf_ship.shipper.events import MetricEvent

PendingRow = list[MetricEvent]
"""The events of one ``run.log`` call."""


def encode(pending: Iterable[PendingRow]) -> str:
    """The rows as one compact JSON text for the resume state ("" for none)."""
    data = [[[e.model, e.metric, e.step, repr(e.value)] for e in row] for row in pending]
    return json.dumps(data, separators=(",", ":")) if data else ""


def decode(text: object) -> list[PendingRow] | None:
    """The rows `encode` wrote; [] for none, None when the text is not such rows."""
    if text in (None, ""):
        return []
    try:
        data = json.loads(str(text))
        return [
            [MetricEvent(str(m), str(k), int(s), float(v)) for m, k, s, v in row] for row in data
        ]
    except (TypeError, ValueError):
        return None


def lost_rows(
    earlier: Sequence[Mapping[str, Any]],
    held: int,
    saved: int,
    pending: Sequence[PendingRow],
    expected_values: Any,  # noqa: ANN401 - a function of a row's events to its logged values
) -> list[PendingRow] | None:
    """The pending rows the run's logs lack, or None when the logs do not fit the state.

    `earlier` are the metric items of every history row the run's sessions wrote (`held`
    events); the state said `saved` events were acknowledged, the last of them in `pending`.
    The logs must end with a prefix of `pending` (checked value by value) preceded by the
    ``saved - len(pending events)`` events written before them.
    """
    before = saved - sum(len(row) for row in pending)
    count = before
    for index, row in enumerate(pending):
        if count == held:
            written = pending[:index]
            tail = earlier[len(earlier) - index :] if index else []
            if len(tail) != index or not all(
                same_row(stored, expected_values(row_events))
                for stored, row_events in zip(tail, written, strict=True)
            ):
                return None
            return list(pending[index:])
        count += len(row)
    return None


def same_row(stored: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    """True when a history row (without wandb's own keys) holds exactly these values."""
    return stored.keys() == values.keys() and all(
        same_value(stored[key], value) for key, value in values.items()
    )


__all__ = ["PendingRow", "decode", "encode", "lost_rows", "same_row"]
