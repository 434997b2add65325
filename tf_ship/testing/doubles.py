"""Backends for tests: one that records every call, one that fails, one that hangs on purpose.

Plugin authors can use them to test code around tf-ship; tf-ship's own tests use them to check
isolation, retries and timeouts. They are real backends: give them to `tf_ship.ship` or `--backend
tf_ship.testing:RecordingBackend` (`tf_ship.testing` re-exports them).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import attrs

from tf_ship.contract import MetricEvent, ModelConfig, PermanentBackendError, RunInfo, RunStatus

__all__ = ["FailingBackend", "HangingBackend", "RecordingBackend"]


@attrs.define
class RecordingBackend:
    """Keeps everything it is given, in order, for assertions.

    `flushed` holds only events that were followed by a `flush`: what the engine may count as
    delivered.
    """

    run: RunInfo | None = None
    configs: list[ModelConfig] = attrs.field(factory=list)
    events: list[MetricEvent] = attrs.field(factory=list)
    flushed: list[MetricEvent] = attrs.field(factory=list)
    batches: list[int] = attrs.field(factory=list)
    status: RunStatus | None = None
    close_calls: int = 0
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)

    def open(self, run: RunInfo) -> None:
        """Remember the run."""
        self.run = run

    def log_config(self, config: ModelConfig) -> None:
        """Remember the config."""
        with self._lock:
            self.configs.append(config)

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Remember the events and the batch size."""
        with self._lock:
            self.events.extend(batch)
            self.batches.append(len(batch))

    def flush(self) -> None:
        """Mark everything so far as delivered."""
        with self._lock:
            self.flushed[:] = self.events

    def close(self, status: RunStatus) -> None:
        """Remember the status of the first close."""
        self.close_calls += 1
        if self.status is None:
            self.status = status


@attrs.define
class FailingBackend:
    """Raises from the chosen methods: always, or for the first `failures` calls.

    With `permanent`, raises `PermanentBackendError` (input refused for good); otherwise a
    `ConnectionError` (transient: the engine retries). Calls that do not fail are recorded in
    `recorder`.
    """

    fail_on: Sequence[str] = ("open", "log_config", "log_metrics", "flush", "close")
    failures: int | None = None
    permanent: bool = False
    recorder: RecordingBackend = attrs.field(factory=RecordingBackend)
    calls: int = 0

    def _maybe_fail(self, method: str) -> None:
        if method not in self.fail_on:
            return
        if self.failures is not None and self.calls >= self.failures:
            return
        self.calls += 1
        if self.permanent:
            msg = f"{method} refused on purpose"
            raise PermanentBackendError(msg)
        msg = f"{method} failed on purpose"
        raise ConnectionError(msg)

    def open(self, run: RunInfo) -> None:
        """Fail or record."""
        self._maybe_fail("open")
        self.recorder.open(run)

    def log_config(self, config: ModelConfig) -> None:
        """Fail or record."""
        self._maybe_fail("log_config")
        self.recorder.log_config(config)

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Fail or record."""
        self._maybe_fail("log_metrics")
        self.recorder.log_metrics(batch)

    def flush(self) -> None:
        """Fail or record."""
        self._maybe_fail("flush")
        self.recorder.flush()

    def close(self, status: RunStatus) -> None:
        """Fail or record."""
        self.recorder.close(status)
        self._maybe_fail("close")


@attrs.define
class HangingBackend:
    """Blocks in the chosen methods until `release` is set (never, unless a test sets it).

    Stands for a tracker call that never returns: ``--backend tf_ship.testing:HangingBackend``
    hangs in `log_metrics`, and ``--call-timeout`` decides when tf-ship stops waiting for it.
    `hang_on` names the methods that block (a comma-separated string, as ``--backend-opt
    NAME.hang_on=open,close`` passes it, works too); `entered` is set when a call starts to
    block. Calls that do not block, and blocked calls once released, are recorded in `recorder`.
    """

    hang_on: Sequence[str] | str = ("log_metrics",)
    recorder: RecordingBackend = attrs.field(factory=RecordingBackend)
    release: threading.Event = attrs.field(factory=threading.Event)
    entered: threading.Event = attrs.field(factory=threading.Event)

    def _maybe_hang(self, method: str) -> None:
        names = self.hang_on.split(",") if isinstance(self.hang_on, str) else self.hang_on
        if method in names:
            self.entered.set()
            self.release.wait()

    def open(self, run: RunInfo) -> None:
        """Hang or record."""
        self._maybe_hang("open")
        self.recorder.open(run)

    def log_config(self, config: ModelConfig) -> None:
        """Hang or record."""
        self._maybe_hang("log_config")
        self.recorder.log_config(config)

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Hang or record."""
        self._maybe_hang("log_metrics")
        self.recorder.log_metrics(batch)

    def flush(self) -> None:
        """Hang or record."""
        self._maybe_hang("flush")
        self.recorder.flush()

    def close(self, status: RunStatus) -> None:
        """Hang or record."""
        self._maybe_hang("close")
        self.recorder.close(status)
