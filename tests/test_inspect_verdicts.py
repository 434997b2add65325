"""`tf-ship inspect` calls each line what shipping it does: shipped, or skipped for that reason.

The log is shipped to the jsonl backend and read back from its file; the same log is inspected;
the series and the skip counts must agree. The logs hold what breaks readers: NUL runs (longer
than a line may be, and with a metric line right after them), torn lines, CRLF endings, lines
over the limit, an incomplete last line.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tf_ship
from tf_ship.backends.jsonl import JsonlBackend
from tf_ship.inspection import InspectError, LogReport, inspect_log, reader

P = b"TORCHFORT::WANDB: model: "
Event = tuple[str, str, int, float]


def metric_line(model: bytes, step: int, metric: bytes, value: bytes) -> bytes:
    """A metric line without its end."""
    return P + model + b", step: %d, " % step + metric + b": " + value


def shipped(log: Path, max_line_bytes: int) -> tuple[list[Event], Counter[str]]:
    """The events the jsonl backend wrote when the log was shipped, and the skips by reason."""
    out = log.parent / "out.jsonl"
    report = tf_ship.ship(
        log, {"jsonl": JsonlBackend(out)}, max_line_bytes=max_line_bytes, poll_interval=0.01
    )
    assert report.ok, report.summary()
    records = [json.loads(text) for text in out.read_text(encoding="utf-8").splitlines()]
    events = [
        (r["model"], r["metric"], r["step"], float(r["value"])) for r in records if "metric" in r
    ]
    skipped = Counter({reason.value: count for reason, count in report.skipped.items() if count})
    return events, skipped


def series_facts(events: list[Event]) -> dict[tuple[str, str], tuple[object, ...]]:
    """What the inspect report keeps of each series, computed from the events themselves."""
    grouped: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for model, metric, step, value in events:
        grouped.setdefault((model, metric), []).append((step, value))
    facts = {}
    for key, points in grouped.items():
        steps = [step for step, _ in points]
        values = [value for _, value in points]
        facts[key] = (
            len(points),
            steps[0],
            steps[-1],
            min(steps),
            max(steps),
            sum(b < a for a, b in pairwise(steps)),
            repr(values[-1]),
            sum(map(math.isnan, values)),
            sum(map(math.isinf, values)),
        )
    return facts


def report_facts(report: LogReport) -> dict[tuple[str, str], tuple[object, ...]]:
    """The same facts, as the inspect report holds them."""
    return {
        key: (
            s.count,
            s.first_step,
            s.last_step,
            s.min_step,
            s.max_step,
            s.backwards,
            repr(s.last_value),
            s.nan_count,
            s.inf_count,
        )
        for key, s in report.series.items()
    }


def assert_same_verdicts(log: Path, max_line_bytes: int = 1 << 20) -> LogReport:
    """Inspect and ship the log; the shipped series and the skip counts agree."""
    report = inspect_log(log, max_line_bytes=max_line_bytes)
    events, skipped = shipped(log, max_line_bytes)
    assert report.events == len(events)
    assert list(report.series) == list(dict.fromkeys((m, k) for m, k, _, _ in events))
    assert report_facts(report) == series_facts(events)
    inspected = Counter({s.reason.value: s.count for s in report.skipped.values()})
    assert inspected == skipped
    return report


def test_a_metric_line_after_a_nul_run_longer_than_a_line_is_shipped(tmp_path: Path) -> None:
    """Unwritten pages (NULs) longer than --max-line-bytes, then a metric line: both ship it."""
    log = tmp_path / "torchfort.log"
    log.write_bytes(
        metric_line(b"m", 1, b"loss", b"0.5")
        + b"\n"
        + b"\x00" * 300
        + metric_line(b"m", 2, b"loss", b"0.25")
        + b"\r\n"
        + metric_line(b"m", 3, b"loss", b"0.125")[:40]  # torn: its end never came
        + b"\x00" * 10
        + metric_line(b"m", 4, b"loss", b"nan")
        + b"\n"
    )
    report = assert_same_verdicts(log, max_line_bytes=100)
    assert report_facts(report) == {("m", "loss"): (3, 1, 4, 1, 4, 0, "nan", 1, 0)}
    assert {s.reason.value: s.count for s in report.skipped.values()} == {
        "line longer than --max-line-bytes": 1,
        "NUL bytes": 1,
    }


def test_a_metric_line_after_megabytes_of_nul_bytes_is_shipped(tmp_path: Path) -> None:
    """NUL bytes over more than a read block and the longest line: the line after them counts."""
    log = tmp_path / "torchfort.log"
    after = metric_line(b"m", 7, b"loss", b"0.5") + b"\n"
    log.write_bytes(b"\x00" * (3 << 20) + after + metric_line(b"m", 8, b"loss", b"0.25") + b"\n")
    report = assert_same_verdicts(log)
    assert report_facts(report) == {("m", "loss"): (2, 7, 8, 7, 8, 0, "0.25", 0, 0)}
    assert report.skipped_count == 1


MODELS = st.sampled_from([b"m", b"actor", b"my model"])
METRICS = st.sampled_from([b"loss", b"lr", b"l2 error (rel.)"])
VALUES = st.sampled_from([b"0.5", b"-1e-05", b"nan", b"-inf", b"inf", b"3", b"1,5"])
STEPS = st.integers(min_value=-3, max_value=2**63 + 1)
METRIC = st.builds(metric_line, MODELS, STEPS, METRICS, VALUES)
TORN = st.tuples(METRIC, st.integers(min_value=1, max_value=60)).map(lambda t: t[0][: t[1]])
NULS = st.integers(min_value=1, max_value=400).map(lambda n: b"\x00" * n)
PIECE = st.one_of(
    METRIC.map(lambda line: line + b"\n"),
    METRIC.map(lambda line: line + b"\r\n"),
    TORN.map(lambda line: line + b"\n"),
    st.tuples(TORN, NULS).map(b"".join),  # torn, then unwritten pages, then what follows
    st.tuples(NULS, METRIC).map(lambda t: t[0] + t[1] + b"\n"),
    NULS,
    st.sampled_from([b"\n", b"\r\n", b"INFO starting\n", b"x" * 150 + b"\n"]),
)


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(PIECE, max_size=25),
    tail=st.one_of(st.just(b""), TORN, NULS),
    max_line_bytes=st.sampled_from([64, 100, 256]),
)
def test_random_hard_logs_get_the_same_verdicts(
    pieces: list[bytes], tail: bytes, max_line_bytes: int
) -> None:
    """Whatever the log holds, inspect and ship agree on every line."""
    with tempfile.TemporaryDirectory(prefix="tf-ship-verdicts-") as folder:
        log = Path(folder) / "torchfort.log"
        log.write_bytes(b"".join(pieces) + tail)
        assert_same_verdicts(log, max_line_bytes)


def test_a_log_truncated_while_it_is_read_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report mixing two files would be wrong: inspect says so and what to do."""
    log = tmp_path / "torchfort.log"
    log.write_bytes(
        b"".join(metric_line(b"m", step, b"loss", b"0.5") + b"\n" for step in range(20))
    )
    real_parse = reader.LineParser.parse

    def parse_then_truncate(self: Any, chunk: bytes, **kwargs: Any) -> Any:
        log.write_bytes(b"")
        return real_parse(self, chunk, **kwargs)

    monkeypatch.setattr(reader.LineParser, "parse", parse_then_truncate)
    with pytest.raises(InspectError) as caught:
        inspect_log(log, chunk_bytes=64, max_line_bytes=100)
    assert (
        str(caught.value) == f"{log} was truncated or rewritten while it was read: inspect it again"
    )
