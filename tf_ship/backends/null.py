"""A backend that drops everything: for measuring the engine alone."""

from __future__ import annotations

from collections.abc import Sequence

from tf_ship.contract import MetricEvent, ModelConfig, RunInfo, RunStatus


class NullBackend:
    """Accepts every call and keeps nothing but a count."""

    replay_safe = True
    """Nothing is kept, so nothing can be kept twice (`tf_ship.contract.ReplaySafe`)."""

    def __init__(self) -> None:
        self.events = 0

    def open(self, run: RunInfo) -> None:
        """Nothing to open."""

    def log_config(self, config: ModelConfig) -> None:
        """Drop the config."""

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Count and drop the batch."""
        self.events += len(batch)

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self, status: RunStatus) -> None:
        """Nothing to close."""
