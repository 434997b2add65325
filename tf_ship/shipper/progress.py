"""What a person sees while shipping: a progress bar, or a status line, or log records.

- `--no-follow` on a terminal: a progress bar over the bytes of the log, with lines/s and the
  time left, redrawn in place.
- follow mode on a terminal: a one-line status every few seconds: lines/s and, per backend,
  how far behind it is (lines and seconds), its retries and errors.
- a backend waiting to retry a failed call: ``waiting for mlflow (connection refused), retry in
  4 s``, in the bar and in the status line alike.
- standard error not a terminal (a batch job's log): the same status as a structured
  ``key=value`` log line every `interval` seconds while something moves (every
  `quiet_interval` seconds when nothing does), so that job logs stay greppable and short.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TextIO

import attrs

from tf_ship.redaction import redact

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
    waiting: str | None = None
    """Why the backend's last call failed, while it waits to retry; None otherwise."""
    retry_in: float = 0.0
    """Seconds until that retry."""

    def waiting_text(self) -> str:
        """``waiting for mlflow (connection refused), retry in 4 s``."""
        return (
            f"waiting for {self.name} ({self.waiting}), retry in {max(0, round(self.retry_in))} s"
        )


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
    bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
    bar += f"{_human_bytes(done)}/{_human_bytes(snapshot.size)}"
    waiting = [b.waiting_text() for b in snapshot.backends if b.waiting and not b.failed]
    if waiting:
        return f"{bar} {'; '.join(waiting)}"
    rate = snapshot.lines_read / snapshot.elapsed if snapshot.elapsed > 0 else 0.0
    byte_rate = done / snapshot.elapsed if snapshot.elapsed > 0 else 0.0
    if byte_rate <= 0:
        return f"{bar} {rate:,.0f} lines/s"
    return f"{bar} {rate:,.0f} lines/s {_duration((snapshot.size - done) / byte_rate)} left"


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
        elif backend.waiting:
            text = backend.waiting_text()
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
        if backend.waiting and not backend.failed:
            fields.append(f'{prefix}.waiting="{backend.waiting}"')
    return "status " + " ".join(fields)


def _movement(snapshot: Snapshot) -> tuple[object, ...]:
    """What a structured status line is worth repeating for (not the clock, not retries)."""
    return (
        snapshot.lines_read,
        tuple((b.events, b.failed, b.waiting) for b in snapshot.backends),
    )


@attrs.define
class ProgressReporter:
    """Draws the bar or the status line; call `update` often, it decides when to draw."""

    stream: TextIO
    follow: bool
    interactive: bool
    interval: float = 5.0
    quiet_interval: float = 60.0
    """Without a terminal, an unchanged status is logged again only after this many seconds."""
    clock: Callable[[], float] = time.monotonic
    _last_draw: float | None = attrs.field(default=None, init=False)
    _previous: Snapshot | None = attrs.field(default=None, init=False)
    _drawn: bool = attrs.field(default=False, init=False)
    _last_logged: tuple[float, tuple[object, ...]] | None = attrs.field(default=None, init=False)
    _clearing: _ClearBeforeRecords | None = attrs.field(default=None, init=False)

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
            self._log(snapshot, now)
        elif self.follow:
            self._redraw(status_line(snapshot, self._previous))
        else:
            self._redraw(progress_bar(snapshot))
        self._previous = snapshot

    def _log(self, snapshot: Snapshot, now: float) -> None:
        movement = _movement(snapshot)
        if self._last_logged is not None:
            when, last = self._last_logged
            if movement == last and now - when < self.quiet_interval:
                return
        self._last_logged = (now, movement)
        logger.info("%s", structured_line(snapshot))

    def _redraw(self, text: str) -> None:
        if self._clearing is None:  # a message printed while the line is drawn clears it first
            self._clearing = _ClearBeforeRecords(self)
            for handler in logger.handlers:
                handler.addFilter(self._clearing)
        self.stream.write("\r\x1b[2K" + redact(text))
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        """Clear the drawn line (it is drawn again at the next update that draws)."""
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False

    def close(self) -> None:
        """Clear the line so that the summary starts on a clean one."""
        self.clear()
        if self._clearing is not None:
            for handler in logger.handlers:
                handler.removeFilter(self._clearing)
            self._clearing = None


class _ClearBeforeRecords(logging.Filter):
    """Clears the status line before tf-ship prints a message, so that none starts mid-line."""

    def __init__(self, reporter: ProgressReporter) -> None:
        super().__init__()
        self.reporter = reporter

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: ARG002 - every record
        """Clear the line; let the record through."""
        self.reporter.clear()
        return True
