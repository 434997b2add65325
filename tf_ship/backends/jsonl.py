"""A backend that writes one JSON object per event: for scripts, pipes and tests."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from tf_ship.backends.json_numbers import json_number
from tf_ship.contract import FatalBackendError, MetricEvent, ModelConfig, RunInfo, RunStatus


class JsonlBackend:
    """Writes ``{"model", "metric", "step", "value"}`` lines (and ``{"model", "config"}`` lines).

    `path` is a file to append to; without it, lines go to standard output. A file has no runs:
    when the application restarted (``--on-restart new-run``), a ``{"restart": N}`` line marks
    where the lines of its N-th restart begin, followed by the configs again.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None or str(path) in ("", "-") else Path(path)
        self._stream: IO[str] | None = None
        self._closed = False
        self._segment = 0

    def open(self, run: RunInfo) -> None:
        """Open the output file (appending) or take standard output; mark a restart."""
        if self.path is None:
            self._stream = sys.stdout
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = self.path.open("a", encoding="utf-8")
        self._closed = False
        resumed = run.state.get("segment") == run.segment
        self._segment = run.segment
        if run.segment and not resumed:
            self._write(json.dumps({"restart": run.segment}) + "\n")
            self.flush()

    def resume_state(self) -> dict[str, Any]:
        """The segment written to, so that a resumed session does not mark its restart again."""
        return {"segment": self._segment}

    def _write(self, text: str) -> None:
        if self._stream is None:
            msg = "the jsonl backend was not opened"
            raise RuntimeError(msg)
        try:
            self._stream.write(text)
        except BrokenPipeError as error:
            msg = "the reader of the output went away (broken pipe)"
            raise FatalBackendError(msg) from error

    def log_config(self, config: ModelConfig) -> None:
        """Write the config as one line."""
        record = {"model": config.model, "config": config.config}
        self._write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Write one line per event."""
        dumps = json.dumps
        lines = [
            dumps(
                {
                    "model": e.model,
                    "metric": e.metric,
                    "step": e.step,
                    "value": json_number(e.value),
                },
                ensure_ascii=False,
            )
            for e in batch
        ]
        if lines:
            self._write("\n".join(lines) + "\n")

    def flush(self) -> None:
        """Flush and fsync a file, flush standard output."""
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except BrokenPipeError as error:
            msg = "the reader of the output went away (broken pipe)"
            raise FatalBackendError(msg) from error
        if self.path is not None:
            import os  # noqa: PLC0415 - only files need it

            os.fsync(self._stream.fileno())

    def close(self, status: RunStatus) -> None:  # noqa: ARG002 - a file has no run status
        """Flush and close the file; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.flush()
        except BrokenPipeError:
            pass  # already reported by the call that met it
        finally:
            if stream is not sys.stdout:
                stream.close()

    def view_hint(self) -> str | None:
        """Where the lines went, when that is a file."""
        return None if self.path is None else f"less {self.path}"
