"""Non-finite values in tf-ship's own JSON: the jsonl backend writes what docs/backends.md says."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tf_ship.backends.json_numbers import json_number
from tf_ship.backends.jsonl import JsonlBackend
from tf_ship.contract import MetricEvent, RunInfo, RunStatus


def test_jsonl_writes_non_finite_values_as_strings(tmp_path: Path) -> None:
    """``"nan"``, ``"inf"``, ``"-inf"``; finite values stay numbers."""
    out = tmp_path / "out.jsonl"
    backend = JsonlBackend(out)
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    values = [math.nan, math.inf, -math.inf, 0.5, -0.0]
    backend.log_metrics([MetricEvent("m", "x", step, v) for step, v in enumerate(values)])
    backend.flush()
    backend.close(RunStatus.FINISHED)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["value"] for line in lines] == ["nan", "inf", "-inf", 0.5, -0.0]
    assert [json_number(v) for v in values] == ["nan", "inf", "-inf", 0.5, -0.0]
