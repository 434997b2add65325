"""Hostile config files beside the log, through the whole pipeline (`tf_ship.ship`).

The unit tests of the loader and the catalog live in test_configs.py; here every case runs a
real one-shot ship of a log with a `RecordingBackend` and checks what a user sees: the metrics
arrive, configs are attached only where they are valid, a broken file gets one clear warning,
and nothing hangs or crashes. Config files are dated in the past, as they are when a finished
run is shipped afterwards: TorchFort wrote them at model creation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tf_ship
from tf_ship.shipper.ship import ShipReport
from tf_ship.testing import RecordingBackend

BOUND = 20.0
"""Seconds any one-shot ship here may take: the logs are tiny, so more means a hang."""

GOOD = b"general:\n  report_frequency: 1\noptimizer:\n  type: adam\nidentifier: good"

BILLION_LAUGHS = b"""a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
identifier: bad"""

MERGE_BOMB = b"""base: &base {x: 1}
a: {<<: *base, y: 2}
identifier: bad"""


def metric_lines(models: list[str], steps: int = 3) -> bytes:
    """A few metric lines for each model."""
    return b"".join(
        b"TORCHFORT::WANDB: model: %s, step: %d, train_loss: %g\n"
        % (model.encode(), step, 1.0 / (step + 1))
        for step in range(steps)
        for model in models
    )


def write_config(logdir: Path, name: str, data: bytes) -> Path:
    """Write a config file and date it a minute back (written before the ship started)."""
    path = logdir / f"config_{name}.yaml"
    path.write_bytes(data)
    age(path)
    return path


def age(path: Path) -> None:
    """Move a file's mtime a minute into the past (without following symlinks is not needed)."""
    past = time.time() - 60
    os.utime(path, (past, past))


def ship_bounded(logdir: Path, backend: RecordingBackend) -> ShipReport:
    """One-shot ship in a thread; fail (not hang) if it does not finish within BOUND seconds."""
    result: list[ShipReport] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(tf_ship.ship(logdir, {"rec": backend}, follow=False, batch_size=2))
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            errors.append(error)

    thread = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(BOUND)
    if thread.is_alive():
        pytest.fail(f"ship() did not finish within {BOUND:g} s")
    if errors:
        raise errors[0]
    report = result[0]
    assert time.monotonic() - started < BOUND
    return report


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warning messages logged by tf_ship."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("tf_ship")
    ]


def check_metrics(backend: RecordingBackend, models: list[str], steps: int = 3) -> None:
    """Every metric line of every model arrived, once, and nothing failed."""
    got = sorted((e.model, e.step) for e in backend.flushed)
    assert got == sorted((m, s) for m in models for s in range(steps))


@contextlib.contextmanager
def released(fifo: Path) -> Iterator[None]:
    """On exit, open the FIFO for writing once, so that a reader stuck in open() is let go."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


# -- broken and hostile files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"general: [1, 2\nidentifier: bad", "expected"),
        (b"general:\n\tfoo: 1\nidentifier: bad", "cannot start any token"),
        (b"identifier: bad\nx: \x00\x00\x00\x00", "unacceptable character"),
        (b"identifier: bad\n" + b"\x00" * 4096, "unacceptable character"),
        (b"\xff\xfe\x00\x01binary\x02\x03", ""),
        (BILLION_LAUGHS, "alias"),
        (MERGE_BOMB, "alias"),
        (b"- a\n- b", "mapping"),
        (b"", "mapping"),
        (b"general: 1", "identifier"),
        (b"identifier: [bad]", "scalar"),
        (b"a: " + b"[" * 20000 + b"]" * 20000 + b"\nidentifier: bad", ""),
        (b"a: !!python/object/apply:os.system ['true']\nidentifier: bad", ""),
    ],
    ids=[
        "unclosed-flow",
        "tab-indent",
        "nul-bytes-in-value",
        "nul-page",
        "binary",
        "billion-laughs",
        "merge-alias",
        "a-list",
        "empty",
        "no-identifier",
        "identifier-list",
        "deep-nesting",
        "python-tag",
    ],
)
def test_broken_config_warns_once_and_metrics_ship(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, data: bytes, reason: str
) -> None:
    """A broken or hostile config: one warning naming the file, no crash, all metrics shipped.

    The good model's config is still attached; the model whose config is broken ships its
    metrics without one. A NUL byte in a config (a page a network filesystem has not filled yet)
    used to escape the loader as a ReaderError and stop the backend.
    """
    write_config(tmp_path, "bad", data)
    write_config(tmp_path, "good", GOOD)
    (tmp_path / "torchfort.log").write_bytes(metric_lines(["good", "bad"]))
    backend = RecordingBackend()
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        report = ship_bounded(tmp_path, backend)
    assert report.ok, report.summary()
    check_metrics(backend, ["good", "bad"])
    assert [c.model for c in backend.configs] == ["good"]
    assert backend.configs[0].config == {
        "general": {"report_frequency": 1},
        "optimizer": {"type": "adam"},
    }
    warnings = [w for w in warnings_of(caplog) if "config_bad.yaml" in w]
    assert len(warnings) == 1, warnings_of(caplog)
    assert "unusable" in warnings[0]
    assert reason in warnings[0]
    assert not [w for w in warnings_of(caplog) if "config_good.yaml" in w]


def test_hundred_megabyte_config_is_refused_quickly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 100 MB config (sparse) for a model in the log: one warning, quickly.

    It is refused as 'larger than' without being read whole; the model's metrics still ship,
    without a config.
    """
    huge = tmp_path / "config_huge.yaml"
    with huge.open("wb") as stream:
        stream.write(b"identifier: huge\ngeneral:\n  report_frequency: 1\npad: '")
        stream.truncate(100 * 2**20)
    age(huge)
    write_config(tmp_path, "good", GOOD)
    (tmp_path / "torchfort.log").write_bytes(metric_lines(["huge", "good"]))
    backend = RecordingBackend()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        report = ship_bounded(tmp_path, backend)
    elapsed = time.monotonic() - started
    assert report.ok, report.summary()
    check_metrics(backend, ["huge", "good"])
    assert [c.model for c in backend.configs] == ["good"]
    warnings = [w for w in warnings_of(caplog) if "config_huge.yaml" in w]
    assert len(warnings) == 1
    assert "larger than" in warnings[0]
    assert elapsed < 10


def test_fifo_named_like_a_config_does_not_hang(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A FIFO called config_x.yaml: opening it for reading would wait for a writer forever.

    The ship finishes, warns about the file once, and ships every metric.
    """
    fifo = tmp_path / "config_fifo.yaml"
    os.mkfifo(fifo)
    age(fifo)
    write_config(tmp_path, "good", GOOD)
    (tmp_path / "torchfort.log").write_bytes(metric_lines(["good", "fifo"]))
    backend = RecordingBackend()
    with released(fifo), caplog.at_level(logging.WARNING, logger="tf_ship"):
        report = ship_bounded(tmp_path, backend)
    assert report.ok, report.summary()
    check_metrics(backend, ["good", "fifo"])
    assert [c.model for c in backend.configs] == ["good"]
    warnings = [w for w in warnings_of(caplog) if "config_fifo.yaml" in w]
    assert len(warnings) == 1
    assert "not a regular file" in warnings[0]


def test_directory_and_dangling_link_named_like_configs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory and a dangling symlink matching config_*.yaml: no crash, metrics ship."""
    (tmp_path / "config_dir.yaml").mkdir()
    age(tmp_path / "config_dir.yaml")
    (tmp_path / "config_link.yaml").symlink_to(tmp_path / "nowhere")
    write_config(tmp_path, "good", GOOD)
    (tmp_path / "torchfort.log").write_bytes(metric_lines(["good", "dir"]))
    backend = RecordingBackend()
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        report = ship_bounded(tmp_path, backend)
    assert report.ok, report.summary()
    check_metrics(backend, ["good", "dir"])
    assert [c.model for c in backend.configs] == ["good"]
    assert len([w for w in warnings_of(caplog) if "config_dir.yaml" in w]) == 1


# -- identifiers that YAML would not load as strings -------------------------------------------

IDENTIFIERS = [
    ("1", b"1"),
    ("true", b"true"),
    ("True", b"True"),
    ("yes", b"yes"),
    ("null", b"null"),
    ("~", b"~"),
    ("1e3", b"1e3"),
    ("0x10", b"0x10"),
    ("007", b"007"),
    ("1_000", b"1_000"),
    (".inf", b".inf"),
    ("-0", b"-0"),
    ("12:30", b"12:30"),
    ("2024-01-01", b"2024-01-01"),
    ("1", b'"1"'),
    ("true", b"'true'"),
]


def test_identifiers_that_load_as_other_types_match_as_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Identifiers such as 1, true, null, 1e3, 0x10 (plain or quoted) are matched as text.

    Each model named like that gets exactly its own config; the model "1.0" (no config) gets
    none although YAML would load `1` and `1.0` as equal numbers; no warning at all.
    """
    models = []
    for index, (model, written) in enumerate(IDENTIFIERS):
        body = b"general:\n  report_frequency: %d\nidentifier: %s" % (index, written)
        write_config(tmp_path, f"id{index}", body)
        if model not in models:
            models.append(model)
    models.append("1.0")
    (tmp_path / "torchfort.log").write_bytes(metric_lines(models))
    backend = RecordingBackend()
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        report = ship_bounded(tmp_path, backend)
    assert report.ok, report.summary()
    check_metrics(backend, models)
    assert warnings_of(caplog) == []
    attached = {c.model: c.config["general"]["report_frequency"] for c in backend.configs}
    assert len(backend.configs) == len(attached), "a config was sent twice"
    expected: dict[str, int] = {}
    for index, (model, _) in enumerate(IDENTIFIERS):
        expected[model] = index  # a later file with the same identifier may win; check below
    assert set(attached) == set(expected)
    for model, frequency in attached.items():
        assert IDENTIFIERS[frequency][0] == model
    assert all(isinstance(c.model, str) for c in backend.configs)
    assert "1.0" not in attached
