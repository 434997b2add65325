"""What the workers report, counted once however many backends read the same line."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Hashable, Iterable

import attrs

from tf_ship.contract import RunStatus
from tf_ship.shipper.events import SkippedLine, SkipReason

logger = logging.getLogger("tf_ship")

REPORTED_SKIPS = 10


@attrs.define
class BackendStats:
    """One backend's outcome, for the final summary."""

    name: str
    events: int = 0
    configs: int = 0
    batches: int = 0
    retries: int = 0
    rejected: int = 0
    lines: int = 0
    restarts: int = 0
    """Application restarts found in the log, each one shipped to a run of its own."""
    status: RunStatus | None = None
    error: str | None = None
    view_hint: str | None = None
    """How a person looks at what was shipped (a command), when the backend says."""
    waiting: str | None = None
    """While a failed call waits for its retry: why it failed, in a few words."""
    retry_at: float = 0.0
    """When (`time.monotonic`) the retry the backend waits for is due."""
    opened_at: float | None = None
    """When (`time.monotonic`) the backend's run was open: shipping began."""
    done_at: float | None = None
    """When (`time.monotonic`) the backend had shipped all it was to ship (before closing)."""

    @property
    def failed(self) -> bool:
        """Whether this backend did not ship everything it was given."""
        return self.error is not None or self.status is RunStatus.FAILED


@attrs.define
class Monitor:
    """Collects skipped lines and notices from all workers and reports each one once.

    Every worker reads the same file in order, so a line is new exactly when its offset lies
    beyond the highest one reported for that file: one integer per file, however long the log.
    """

    max_reported: int = REPORTED_SKIPS
    skipped: collections.Counter[SkipReason] = attrs.field(factory=collections.Counter)
    lines_read: int = 0
    _high_water: dict[Hashable, int] = attrs.field(factory=dict)
    _recent_notices: collections.deque[str] = attrs.field(
        factory=lambda: collections.deque(maxlen=64)
    )
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def skip(self, file: Hashable, lines: Iterable[SkippedLine]) -> None:
        """Count and (the first few) report lines that were skipped.

        `file` names the content: a file identity plus how often it was truncated.
        """
        with self._lock:
            high = self._high_water.get(file, -1)
            for line in lines:
                if line.offset <= high:
                    continue
                high = line.offset
                self.skipped[line.reason] += 1
                total = sum(self.skipped.values())
                if total <= self.max_reported:
                    logger.warning(
                        "skipped line %d (%s): %r",
                        line.line_number,
                        line.reason.value,
                        line.excerpt,
                    )
                    if total == self.max_reported:
                        logger.warning("further skipped lines are counted, not shown")
            self._high_water[file] = high

    def notice(self, message: str) -> None:
        """Log a notice once even when several workers see the same thing."""
        with self._lock:
            if message in self._recent_notices:
                return
            self._recent_notices.append(message)
        logger.warning("%s", message)

    def read_up_to(self, lines: int) -> None:
        """Record how many lines the furthest worker has read."""
        with self._lock:
            self.lines_read = max(self.lines_read, lines)
