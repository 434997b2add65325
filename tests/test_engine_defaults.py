"""What the engine decides when the user does not: run names, and when lines/s means something."""

from __future__ import annotations

from pathlib import Path

import pytest

from tf_ship.shipper.monitor import BackendStats
from tf_ship.shipper.ship import ShipOptions, Shipper, ShipReport
from tf_ship.testing import RecordingBackend

LINE = b"TORCHFORT::WANDB: model: mymodel, step: 1, train_loss: 0.5\n"


def ship_once(logdir: Path, **options: object) -> RecordingBackend:
    """Ship a one-line log in `logdir` to a recording backend; return the backend."""
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / "torchfort.log").write_bytes(LINE)
    backend = RecordingBackend()
    report = Shipper(
        logdir / "torchfort.log",
        {"recording": backend},
        ShipOptions(follow=False, **options),  # type: ignore[arg-type]
    ).run()
    assert report.ok, report.summary()
    return backend


def test_runs_are_named_after_the_log_directory(tmp_path: Path) -> None:
    """Without a run name every backend gets the log directory's name (``run1``)."""
    backend = ship_once(tmp_path / "run1")
    assert backend.run is not None
    assert backend.run.run_name == "run1"


def test_a_given_run_name_wins(tmp_path: Path) -> None:
    """--run-name (ShipOptions.run_name) is passed as it is."""
    backend = ship_once(tmp_path / "run1", run_name="re1000")
    assert backend.run is not None
    assert backend.run.run_name == "re1000"


def test_a_relative_log_path_is_named_after_the_real_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--log-file torchfort.log`` in run7/ names the runs ``run7``, not ``.``."""
    (tmp_path / "run7").mkdir()
    monkeypatch.chdir(tmp_path / "run7")
    (tmp_path / "run7" / "torchfort.log").write_bytes(LINE)
    backend = RecordingBackend()
    Shipper(Path("torchfort.log"), {"recording": backend}, ShipOptions(follow=False)).run()
    assert backend.run is not None
    assert backend.run.run_name == "run7"


def report(shipping: float | None, lines: int = 600, elapsed: float = 6.0) -> ShipReport:
    """A report of a backend that shipped `lines` lines in `shipping` seconds."""
    stats = BackendStats("mlflow", events=lines)
    return ShipReport(
        Path("run1/torchfort.log"),
        lines,
        {},
        [stats],
        elapsed,
        "end of log",
        shipping,
    )


def test_no_lines_per_second_for_a_short_shipping() -> None:
    """600 lines shipped in 0.05 s after 6 s of tracker start-up: no rate (it would say 99/s)."""
    text = report(0.05).summary()
    assert "lines/s" not in text
    assert "read 600 lines of run1/torchfort.log in 6.00 s, skipped 0" in text


def test_lines_per_second_over_the_shipping_time() -> None:
    """A rate when shipping took long enough, measured over shipping, not start-up."""
    text = report(4.0, lines=2_000_000, elapsed=9.0).summary()
    assert "in 9.00 s (500,000 lines/s over 4.0 s of shipping)" in text


def test_shipping_time_leaves_out_opening_the_run(tmp_path: Path) -> None:
    """The shipping time starts when the backend's run is open, not when tf-ship started."""

    class SlowOpen(RecordingBackend):
        def open(self, run: object) -> None:
            import time  # noqa: PLC0415

            time.sleep(0.3)  # stands for a tracker's start-up
            super().open(run)  # type: ignore[arg-type]

    (tmp_path / "torchfort.log").write_bytes(LINE)
    result = Shipper(
        tmp_path / "torchfort.log", {"slow": SlowOpen()}, ShipOptions(follow=False)
    ).run()
    assert result.shipping_seconds is not None
    assert result.shipping_seconds < 0.3 <= result.elapsed


def test_a_slow_trackers_start_up_is_not_shipping_time(tmp_path: Path) -> None:
    """A fast and a slow tracker: the slow one's start-up is no shipping time (the example)."""

    class SlowOpen(RecordingBackend):
        def open(self, run: object) -> None:
            import time  # noqa: PLC0415

            time.sleep(0.3)  # stands for wandb's start-up while MLflow is already shipping
            super().open(run)  # type: ignore[arg-type]

    (tmp_path / "torchfort.log").write_bytes(LINE)
    backends = {"fast": RecordingBackend(), "slow": SlowOpen()}
    result = Shipper(tmp_path / "torchfort.log", backends, ShipOptions(follow=False)).run()
    assert result.shipping_seconds is not None
    assert result.shipping_seconds < 0.3 <= result.elapsed
