"""An example tf-ship backend: one CSV row per metric event, configs as JSON beside it.

Install it (``pip install ./examples/tf-ship-csv``) and use it by name::

    tf-ship --logdir run1 --backend csv --csv-path metrics.csv

Its flags, variables and TOML keys are declared in `tf_ship_csv.spec`.

A row that reached the file is not written again when tf-ship re-sends its batch after a failed
flush. A CSV file cannot be asked what it holds, so a restart of tf-ship after a crash may write
the rows of the last unflushed batch again: at-least-once across crashes.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from tf_ship import FileIdentity, MetricEvent, ModelConfig, RunInfo, RunStatus

__all__ = ["CsvBackend"]

HEADER = ("model", "metric", "step", "value")


class CsvBackend:
    """Appends ``model,metric,step,value`` rows to `path`; writes ``<path>.configs.json``."""

    def __init__(self, path: str = "metrics.csv") -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._configs: dict[str, object] = {}
        self._unflushed: set[tuple[FileIdentity | None, int]] = set()
        """Where in the log the rows written since the last flush came from."""

    def open(self, run: RunInfo) -> None:  # noqa: ARG002 - a CSV file has no run to name
        """Open the file for appending (again after a close); write the header into a new file."""
        self._unflushed = set()
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(HEADER)

    def log_config(self, config: ModelConfig) -> None:
        """Keep the newest config of each model in a JSON file beside the CSV."""
        self._configs[config.model] = config.config
        side = self.path.with_name(self.path.name + ".configs.json")
        side.write_text(json.dumps(self._configs, indent=2, default=str), encoding="utf-8")

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """One row per event; Python's repr keeps nan, inf and every digit.

        A batch sent again after a failed flush skips the rows already written.
        """
        assert self._writer is not None  # noqa: S101 - open() comes first by contract
        new = [e for e in batch if e.offset < 0 or (e.file, e.offset) not in self._unflushed]
        self._writer.writerows((e.model, e.metric, e.step, repr(e.value)) for e in new)
        self._unflushed.update((e.file, e.offset) for e in new)

    def flush(self) -> None:
        """Make the rows durable: the engine moves its cursor once this returns."""
        assert self._file is not None  # noqa: S101
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unflushed.clear()

    def close(self, status: RunStatus) -> None:  # noqa: ARG002 - a CSV file has no status
        """Close the file; a second call finds nothing to close."""
        file, self._file = self._file, None
        if file is not None:
            file.close()
