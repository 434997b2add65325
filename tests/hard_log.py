"""A TorchFort log holding every oddity of the contract, and what a tracker must hold of it.

The expected events are written down here, from the same tuples the log is built from, not
from tf-ship's parser. Values are compared by `value_key`: NaN equals NaN, ``-0`` differs from
``0``, every other double must be exact.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterable
from pathlib import Path

Event = tuple[str, str, int, float]
"""(model, metric, step, value) of one event."""
STEP_LIKE = re.compile(r"(?:.*/)?step(?: \(metric\))*", re.DOTALL)
"""Metric names logged with `` (metric)`` appended, so that they never look like an x-axis."""
PREFIX = b"TORCHFORT::WANDB: model: "
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# (model bytes, metric bytes, step, value text as C++ prints it)
LINES: list[tuple[bytes, bytes, int, str]] = [
    (b"mymodel", b"train_loss", 100, "0.0243117"),
    (b"mymodel", b"train_lr", 100, "0.000999998"),
    (b"mymodel", b"l2 error (rel.)", 100, "1.23457e+06"),
    (b"mymodel", b"train_loss", 200, "nan"),
    (b"mymodel", b"train_lr", 200, "-nan"),
    (b"mymodel", b"train_loss", 300, "inf"),
    (b"mymodel", b"train_lr", 300, "-inf"),
    (b"mymodel", b"grad_norm", 300, "-0"),
    (b"mymodel", b"big", 400, "1e+300"),
    (b"mymodel", b"tiny", 400, "4.94066e-324"),
    (b"mymodel", b"train_loss", 150, "0.5"),  # the step goes backwards
    (b"mymodel", b"train_loss", 150, "0.5"),  # the same line twice: two events
    (b"mymodel", b"step", 150, "3"),  # a metric named like the x-axis
    (b"critic_0", b"train_loss", -1, "2.71828"),
    (b"critic_0", b"train_loss", INT64_MIN, "2.5"),
    (b"critic_0", b"train_loss", INT64_MAX, "3.5"),
    (b"critic_0", b"train_loss", 2**53 + 1, "4.5"),
    (b"critic_0", b"train_loss", 0, "100000"),
    (b"actor", b"ratio: a/b", 7, "0.25"),
    (b"td3 system", b"episode reward", 37, "12"),
    (b"caf\xe9", b"temp\xff", 5, "1.5"),  # Latin-1 bytes
    ("température".encode(), "énergie ∂".encode(), 6, "2"),
    (b".hidden", b"/leading slash", 8, "1"),
    (b" padded ", b"trailing dot.", 9, "2"),
    (b"a/b", b"x", 10, "5"),
    (b"a", b"b/x", 10, "6"),
    (b"m", b"tab\there", 11, "7"),
    (b"m", b"k" * 600, 12, "8"),
    (b"__swanlab__.m", b"x", 13, "9"),
    (b"PPO", b"kl_divergence", 41, "0.00731"),
]
GARBAGE = [
    b"\n",
    b"INFO: not a metric line\n",
    b"TORCHFORT::WANDB: model: mymodel, step: 500, train_loss: 1,234.57\n",
    b"TORCHFORT::WANDB: model: mymodel, step: 500, train_lo\n",
    b"\x00\x00\x00\x00\n",
    b"\xff\xfe binary \x01\x02\n",
]
MYMODEL_CONFIG = (
    "general:\n  report_frequency: 100\noptimizer:\n  type: adam\n  parameters:\n"
    "    learning_rate: 1e-3\nidentifier: mymodel"
)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def expected_events() -> list[Event]:
    """The events the log holds, in log order, decoded as the contract says."""
    return [(_text(m), _text(k), step, float(v)) for m, k, step, v in LINES]


def line(model: str, metric: str, step: int, value: float) -> bytes:
    """The metric line of one event, as TorchFort writes it."""
    return f"TORCHFORT::WANDB: model: {model}, step: {step}, {metric}: {value!r}\n".encode()


def write_log(logdir: Path) -> Path:
    """Write the log, garbage between valid lines, and configs for two models."""
    logdir.mkdir(parents=True, exist_ok=True)
    chunks: list[bytes] = []
    for index, (model, metric, step, value) in enumerate(LINES):
        chunks.append(PREFIX + model + b", step: " + str(step).encode() + b", " + metric)
        chunks.append(b": " + value.encode() + b"\n")
        if index < len(GARBAGE):
            chunks.append(GARBAGE[index])
    path = logdir / "torchfort.log"
    path.write_bytes(b"".join(chunks))
    (logdir / "config_mymodel.yaml").write_text(MYMODEL_CONFIG, encoding="utf-8")
    (logdir / "config_td3system.yaml").write_text(
        "algorithm:\n  type: td3\nidentifier: td3 system", encoding="utf-8"
    )
    return path


def value_key(value: float) -> str:
    """A value as compared: NaN is ``nan`` whatever its sign, every other double its repr."""
    return "nan" if math.isnan(value) else repr(float(value))


def comparable(events: Iterable[Event]) -> list[tuple[str, str, int, str]]:
    """Events with their values as `value_key`s."""
    return [(m, k, s, value_key(v)) for m, k, s, v in events]


def missing_and_doubled(
    expected: Iterable[Event], found: Iterable[Event]
) -> tuple[list[tuple[str, str, int, str]], list[tuple[str, str, int, str]]]:
    """Events missing from `found`, and events found more often than expected."""
    want = collections.Counter(comparable(expected))
    have = collections.Counter(comparable(found))
    return sorted((want - have).elements()), sorted((have - want).elements())


def split_row(keys: Iterable[str]) -> tuple[str, str, str, str]:
    """(model, metric, metric key, step key) of a row ``{"<model>/<metric>", "<model>/step"}``.

    The x-axis key is the one ending in ``/step`` (a metric of that name is logged as
    ``step (metric)``), so a model name holding ``/`` is told apart from a metric name.
    """
    names = list(keys)
    steps = [name for name in names if name.endswith("/step")]
    assert len(names) == 2, names
    assert len(steps) == 1, names
    step_name = steps[0]
    (metric_name,) = (name for name in names if name != step_name)
    model = step_name.removesuffix("/step")
    assert metric_name.startswith(model + "/"), names
    metric = metric_name[len(model) + 1 :]
    bare = metric.removesuffix(" (metric)")
    if bare != metric and STEP_LIKE.fullmatch(bare):
        metric = bare
    return model, metric, metric_name, step_name
