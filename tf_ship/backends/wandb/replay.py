"""What a resumed wandb run holds already, and which replayed events to leave out.

A crashed session may have persisted rows past its last saved cursor: the replay's first events
are then in the run already. How that is recognised: docs/delivery.md#what-a-crash-costs.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from tf_ship.backends.wandb.rows import events_in_row, metric_items, metric_key, step_key
from tf_ship.backends.wandb.transaction_log import history_rows
from tf_ship.contract import MetricEvent

logger = logging.getLogger("tf_ship")

RELEASE_TIMEOUT = 30.0
"""Seconds `open` waits for a crashed session's wandb-core to let go of its transaction log."""


def _session_order(folder: str, run_id: str) -> tuple[str, int] | None:
    """(start second, suffix) of a session folder of the run, or None for another folder."""
    pattern = rf"(?:offline-)?run-(\d{{8}}_\d{{6}})-{re.escape(run_id)}(?:-(\d+))?"
    match = re.fullmatch(pattern, folder)
    return None if match is None else (match[1], int(match[2] or 0))


def session_logs(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """The transaction logs of every session of a run under a ``wandb`` folder, oldest first.

    Online (``run-...``) and offline (``offline-run-...``) sessions, with the ``-1``, ``-2``
    suffixes wandb adds to a session started in the same second as another.
    """
    try:
        folders = list(Path(wandb_dir).iterdir())
    except OSError:
        return []
    found = []
    for folder in folders:
        order = _session_order(folder.name, run_id)
        path = folder / f"run-{run_id}.wandb"
        if order is not None and path.is_file():
            found.append((order, path))
    return [path for _, path in sorted(found)]


def _open_elsewhere(targets: set[str]) -> bool:
    """True when another process has one of the files open (Linux ``/proc``; else False)."""
    me = str(os.getpid())
    try:
        processes = [e.name for e in os.scandir("/proc") if e.name.isdigit() and e.name != me]
    except OSError:
        return False
    for pid in processes:
        try:
            descriptors = list(os.scandir(f"/proc/{pid}/fd"))
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                if str(Path(descriptor.path).readlink()) in targets:
                    return True
            except OSError:
                continue
    return False


def wait_until_released(paths: Sequence[Path], timeout: float = RELEASE_TIMEOUT) -> bool:
    """Wait until no other process holds the files open; False when the timeout passed."""
    targets = {os.path.realpath(path) for path in paths}
    deadline = time.monotonic() + timeout
    interval = 0.02
    while _open_elsewhere(targets):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 2, 0.5)
    return True


def earlier_rows(current: Path, saved_root: str | None) -> list[dict[str, Any]]:
    """The history rows of the run's sessions before the one writing `current`, in order.

    Sessions are looked for in the current ``wandb`` folder and in the one under the directory
    the saved state names (when the run moved to another directory). Each session's log is
    read once its wandb-core let go of it.
    """
    run_id = current.stem.removeprefix("run-")
    folders = [current.parent.parent]
    if saved_root and (Path(saved_root) / "wandb").resolve() != folders[0].resolve():
        folders.append(Path(saved_root) / "wandb")
    found = [path for folder in folders for path in session_logs(folder, run_id)]
    logs = sorted(
        (p for p in found if p.parent != current.parent),
        key=lambda p: _session_order(p.parent.name, run_id) or ("", 0),
    )
    if logs and not wait_until_released(logs):
        logger.warning("wandb: an earlier session still writes %s; counting anyway", logs)
    rows: list[dict[str, Any]] = []
    for path in logs:
        try:
            rows.extend(history_rows(path, strict=False))
        except (OSError, ValueError) as error:
            logger.warning("wandb: cannot read %s (%s); its rows are not counted", path, error)
    return rows


def same_value(stored: Any, value: float) -> bool:  # noqa: ANN401 - a decoded JSON value
    """True when a value read back from the log is the value logged (NaN equals NaN)."""
    if not isinstance(stored, (int, float)) or isinstance(stored, bool):
        return False
    if isinstance(value, int):
        return stored == value
    if math.isnan(value):
        return math.isnan(stored)
    return float(stored) == value and math.copysign(1, float(stored)) == math.copysign(1, value)


@attrs.define
class Replay:
    """What the run's earlier sessions hold, and the replayed events they hold already."""

    held: int = 0
    """Events the run held when this session started (all earlier sessions' rows)."""
    skip: int = 0
    """Replayed events still to leave out: an earlier session persisted them after its cursor."""
    expected: collections.deque[dict[str, Any]] = attrs.field(factory=collections.deque)
    """The rows (metric items) those events stand for, to check each one against."""

    @classmethod
    def of(cls, rows: Sequence[Mapping[str, Any]], saved: int | None) -> Replay:
        """Count what `rows` hold; past the `saved` count, the replay's first events are there.

        `saved` is the count the state recorded at the last flush (None: not this run's state,
        nothing to skip).
        """
        held = 0
        tail: list[dict[str, Any]] = []
        for row in rows:
            count = events_in_row(row)
            if saved is not None and held >= saved:
                tail.append(metric_items(row))
            elif saved is not None and held + count > saved:
                tail = []  # a row across the saved count: no rows to check against
            held += count
        if saved is None or held <= saved:
            return cls(held)
        replay = cls(held, held - saved, collections.deque(tail))
        logger.info(
            "wandb: %d events after the last saved cursor are in the run already; "
            "they are not sent again",
            replay.skip,
        )
        return replay

    def without_persisted(self, batch: Sequence[MetricEvent]) -> Sequence[MetricEvent]:
        """Leave out the events an earlier session persisted after its last saved cursor.

        At the first event that is not the next one the run holds, skipping stops for good (a
        warning says so) and that event and the rest are sent.
        """
        index = 0
        while self.skip and index < len(batch):
            if not self._matches(batch[index]):
                event = batch[index]
                logger.warning(
                    "wandb: %s at step %d (byte %d of the log) is not the row the run holds; "
                    "sending it and the %d events after it that seemed persisted",
                    event.key,
                    event.step,
                    event.offset,
                    self.skip - 1,
                )
                self.skip = 0
                self.expected.clear()
                break
            self.skip -= 1
            index += 1
        return batch[index:]

    def _matches(self, event: MetricEvent) -> bool:
        """True when the event is the next value of the persisted rows (any order in a row)."""
        if not self.expected:
            return True  # counted, but no rows to check against
        row = self.expected[0]
        key = metric_key(event.model, event.metric)
        if key not in row or row.get(step_key(event.model)) != event.step:
            return False
        if not same_value(row.pop(key), event.value):
            return False
        if not events_in_row(row):
            self.expected.popleft()
        return True


__all__ = ["Replay", "earlier_rows", "same_value", "session_logs", "wait_until_released"]
