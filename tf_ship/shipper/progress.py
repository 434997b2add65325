"""What a person sees while shipping: a progress bar, or a status line, or log records.

- `--no-follow` on a terminal: a progress bar over the bytes of the log, with lines/s and the
  time left, redrawn in place.
- follow mode on a terminal: a one-line status every few seconds: lines/s and, per backend,
  how far behind it is (lines and seconds), its retries and errors.
- standard error not a terminal (a batch job's log): the same status as a structured
  ``key=value`` log line every `interval` seconds, so that job logs stay greppable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TextIO

import attrs

logger = logging.getLogger("tf_ship")

BAR_WIDTH = 24


@attrs.frozen
class BackendProgress:
    """One backend's position, as the status shows it."""

    name: str
    offset: int
    lines: int
    events: int
    retries: int
    failed: bool
    lag_seconds: float


@attrs.frozen
class Snapshot:
    """Everything the status line needs, taken at one moment."""

    elapsed: float
    size: int
    lines_read: int
    backends: Sequence[BackendProgress]


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover - the loop always returns


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_bar(snapshot: Snapshot) -> str:
    """``[#####.....] 12.0 MiB/48.0 MiB 250,000 lines/s 0:03 left`` for the slowest backend."""
    done = min((b.offset for b in snapshot.backends), default=0)
    fraction = 1.0 if snapshot.size <= 0 else min(1.0, done / snapshot.size)
    filled = round(fraction * BAR_WIDTH)
    rate = snapshot.lines_read / snapshot.elapsed if snapshot.elapsed > 0 else 0.0
    byte_rate = done / snapshot.elapsed if snapshot.elapsed > 0 else 0.0
    left = (snapshot.size - done) / byte_rate if byte_rate > 0 else 0.0
    return (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
        f"{_human_bytes(done)}/{_human_bytes(snapshot.size)} {rate:,.0f} lines/s "
        f"{_duration(left)} left"
    )


def status_line(snapshot: Snapshot, previous: Snapshot | None) -> str:
    """``1,200 lines/s | mlflow: 30 lines behind (1.2 s), 2 retries | wandb: caught up``."""
    if previous is not None and snapshot.elapsed > previous.elapsed:
        rate = (snapshot.lines_read - previous.lines_read) / (snapshot.elapsed - previous.elapsed)
    else:
        rate = snapshot.lines_read / snapshot.elapsed if snapshot.elapsed > 0 else 0.0
    parts = [f"{rate:,.0f} lines/s"]
    furthest = max((b.lines for b in snapshot.backends), default=0)
    for backend in snapshot.backends:
        behind = furthest - backend.lines
        if backend.failed:
            text = f"{backend.name}: FAILED"
        elif behind or backend.lag_seconds >= 1:
            text = f"{backend.name}: {behind:,} lines behind ({backend.lag_seconds:.1f} s)"
        else:
            text = f"{backend.name}: caught up"
        if backend.retries:
            text += f", {backend.retries} retries"
        parts.append(text)
    return " | ".join(parts)


def structured_line(snapshot: Snapshot) -> str:
    """The status as ``key=value`` pairs, for logs read by programs and people alike."""
    fields = [f"lines_read={snapshot.lines_read}", f"elapsed={snapshot.elapsed:.1f}"]
    for backend in snapshot.backends:
        prefix = backend.name.replace(" ", "_")
        fields.extend(
            [
                f"{prefix}.events={backend.events}",
                f"{prefix}.lag_s={backend.lag_seconds:.1f}",
                f"{prefix}.retries={backend.retries}",
                f"{prefix}.failed={str(backend.failed).lower()}",
            ]
        )
    return "status " + " ".join(fields)


@attrs.define
class ProgressReporter:
    """Draws the bar or the status line; call `update` often, it decides when to draw."""

    stream: TextIO
    follow: bool
    interactive: bool
    interval: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _last_draw: float | None = attrs.field(default=None, init=False)
    _previous: Snapshot | None = attrs.field(default=None, init=False)
    _drawn: bool = attrs.field(default=False, init=False)

    def update(self, snapshot: Snapshot) -> None:
        """Draw if it is time: 5 times a second for a bar, every `interval` s otherwise."""
        now = self.clock()
        every = 0.2 if self.interactive and not self.follow else self.interval
        if self._last_draw is not None and now - self._last_draw < every:
            return
        first = self._last_draw is None
        self._last_draw = now
        if first and not self.interactive:
            return  # nothing worth saying before the first interval
        if not self.interactive:
            logger.info("%s", structured_line(snapshot))
        elif self.follow:
            self._redraw(status_line(snapshot, self._previous))
        else:
            self._redraw(progress_bar(snapshot))
        self._previous = snapshot

    def _redraw(self, text: str) -> None:
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Clear the line so that the summary starts on a clean one."""
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False
