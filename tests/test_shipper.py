"""The shipper from Python: ordering, batching, configs, retries, isolation, waiting."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
from support import wait_for

from tf_ship import LogNotFoundError, PermanentBackendError, ShipOptions, Shipper, ship
from tf_ship.shipper.events import MetricEvent, ModelConfig, RunStatus, SkipReason
from tf_ship.shipper.worker import RetryPolicy
from tf_ship.testing import FailingBackend, RecordingBackend

SHORT_RETRY = RetryPolicy(initial=0.01, maximum=0.05, give_up_after=0.5)
CONFIG = b"""general:
  report_frequency: 1
optimizer:
  learning_rate: 1e-3
identifier: %s"""


def line(model: str, step: int, metric: str, value: str) -> bytes:
    """One metric line."""
    return f"TORCHFORT::WANDB: model: {model}, step: {step}, {metric}: {value}\n".encode()


def make_log(logdir: Path, steps: int = 40) -> list[tuple[str, int, str]]:
    """A log with two models, a few bad lines and a config for one model; the expected events."""
    expected: list[tuple[str, int, str]] = []
    data = b""
    for step in range(steps):
        for model in ("mymodel", "actor"):
            for metric in ("train_loss", "train_lr"):
                data += line(model, step, metric, f"{step / 7:g}")
                expected.append((model, step, metric))
        if step % 10 == 5:
            data += b"INFO: not a metric\n"
    (logdir / "torchfort.log").write_bytes(data)
    (logdir / "config_mymodel.yaml").write_bytes(CONFIG % b"mymodel")
    return expected


def triples(events: Sequence[MetricEvent]) -> list[tuple[str, int, str]]:
    """Model, step and metric of each event."""
    return [(e.model, e.step, e.metric) for e in events]


@attrs.define
class OrderBackend(RecordingBackend):
    """A recording backend that also keeps the order of config and metric calls."""

    calls: list[tuple[str, object]] = attrs.field(factory=list)

    def log_config(self, config: ModelConfig) -> None:
        """Record the config call."""
        self.calls.append(("config", config.model))
        super().log_config(config)

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Record the batch call."""
        self.calls.append(("batch", [e.model for e in batch]))
        super().log_metrics(batch)


def test_ship_delivers_all_events_in_order_with_configs_first(tmp_path: Path) -> None:
    """All events in log order, bounded batches, a model's config before its first batch."""
    expected = make_log(tmp_path)
    backend = OrderBackend()
    report = ship(tmp_path, {"rec": backend}, batch_size=7)
    assert triples(backend.flushed) == expected
    assert backend.events == backend.flushed
    assert max(backend.batches) <= 7
    assert sum(backend.batches) == len(expected)
    assert [c.model for c in backend.configs] == ["mymodel"]
    assert backend.configs[0].config["optimizer"]["learning_rate"] == 0.001
    first_batch = next(
        i
        for i, (kind, models) in enumerate(backend.calls)
        if kind == "batch" and "mymodel" in models  # type: ignore[operator]
    )
    assert ("config", "mymodel") in backend.calls[:first_batch]
    assert backend.status is RunStatus.FINISHED
    assert backend.close_calls == 1
    assert backend.run is not None
    assert backend.run.log_file == tmp_path / "torchfort.log"
    assert report.ok
    assert report.lines_read == len(expected) + 4
    assert report.skipped == {SkipReason.NOT_A_METRIC_LINE: 4}
    (stats,) = report.backends
    assert (stats.name, stats.events, stats.configs, stats.rejected) == ("rec", len(expected), 1, 0)
    assert f"{len(expected)} events" in report.summary()


def test_events_carry_their_source(tmp_path: Path) -> None:
    """Every event knows its file identity and the byte offset of its line."""
    make_log(tmp_path, steps=3)
    backend = RecordingBackend()
    ship(tmp_path / "torchfort.log", [backend])
    data = (tmp_path / "torchfort.log").read_bytes()
    stat = (tmp_path / "torchfort.log").stat()
    for event in backend.flushed:
        assert event.file is not None
        assert (event.file.device, event.file.inode) == (stat.st_dev, stat.st_ino)
        assert data[event.offset :].startswith(f"TORCHFORT::WANDB: model: {event.model}, ".encode())


def test_skips_are_counted_once_for_several_backends(tmp_path: Path) -> None:
    """Two backends reading the same bad lines count each bad line once."""
    expected = make_log(tmp_path)
    first, second = RecordingBackend(), RecordingBackend()
    report = ship(tmp_path, {"a": first, "b": second}, batch_size=5)
    assert triples(first.flushed) == triples(second.flushed) == expected
    assert report.skipped == {SkipReason.NOT_A_METRIC_LINE: 4}
    assert report.ok


def test_transient_failures_are_retried(tmp_path: Path) -> None:
    """A backend failing twice (transiently) is retried and then receives everything."""
    expected = make_log(tmp_path)
    failing = FailingBackend(failures=2)
    report = Shipper(
        tmp_path / "torchfort.log", {"flaky": failing}, ShipOptions(follow=False, retry=SHORT_RETRY)
    ).run()
    assert triples(failing.recorder.flushed) == expected
    assert report.ok
    assert report.backends[0].retries >= 2
    assert failing.recorder.status is RunStatus.FINISHED


def test_a_failing_backend_does_not_stop_the_others(tmp_path: Path) -> None:
    """An always-failing backend fails alone: the other gets everything; the report is not ok."""
    expected = make_log(tmp_path)
    failing = FailingBackend()
    recording = RecordingBackend()
    report = Shipper(
        tmp_path / "torchfort.log",
        [("bad", failing), ("good", recording)],
        ShipOptions(follow=False, retry=SHORT_RETRY),
    ).run()
    assert triples(recording.flushed) == expected
    assert recording.status is RunStatus.FINISHED
    assert not report.ok
    stats = {s.name: s for s in report.backends}
    assert stats["bad"].failed
    assert stats["bad"].error
    assert not stats["good"].failed
    assert "error" in report.summary()


@attrs.define
class RefusingBackend(RecordingBackend):
    """Refuses, for good, any batch holding the event at step `bad_step` of `bad_metric`."""

    bad_step: int = 13
    bad_metric: str = "train_lr"

    def log_metrics(self, batch: Sequence[MetricEvent]) -> None:
        """Refuse the whole batch if it holds the bad event; record it otherwise."""
        if any(
            e.step == self.bad_step and e.metric == self.bad_metric and e.model == "actor"
            for e in batch
        ):
            msg = "invalid key"
            raise PermanentBackendError(msg)
        super().log_metrics(batch)


def test_permanent_error_isolates_exactly_one_event(tmp_path: Path) -> None:
    """A PermanentBackendError for one event refuses exactly that one; the rest arrive in order."""
    expected = make_log(tmp_path)
    backend = RefusingBackend()
    report = ship(tmp_path, {"picky": backend}, batch_size=16)
    bad = ("actor", 13, "train_lr")
    assert triples(backend.flushed) == [e for e in expected if e != bad]
    (stats,) = report.backends
    assert stats.rejected == 1
    assert stats.events == len(expected) - 1
    assert "1 refused" in report.summary()


def test_missing_log_without_follow_raises(tmp_path: Path) -> None:
    """Without follow (and without wait) a missing log raises LogNotFoundError."""
    with pytest.raises(LogNotFoundError):
        ship(tmp_path, [RecordingBackend()])
    with pytest.raises(LogNotFoundError):
        ship(tmp_path / "missing-dir", [RecordingBackend()], wait=0.1)


def test_wait_picks_up_a_log_created_later(tmp_path: Path) -> None:
    """With `wait`, a log created later (by another thread) is found and shipped."""
    logdir = tmp_path / "later"
    created = threading.Event()

    def create() -> None:
        created.wait(0.3)
        logdir.mkdir()
        make_log(logdir, steps=5)
        created.set()

    thread = threading.Thread(target=create)
    thread.start()
    backend = RecordingBackend()
    try:
        report = ship(logdir, {"rec": backend}, wait=20.0, poll_interval=0.05)
    finally:
        thread.join()
    assert len(backend.flushed) == 20
    assert report.ok


def test_follow_ships_appends_then_stops_on_request(tmp_path: Path) -> None:
    """In follow mode appended lines arrive as they come; request_stop ends the runs (KILLED)."""
    log = tmp_path / "torchfort.log"
    log.write_bytes(b"")
    backend = RecordingBackend()
    shipper = Shipper(log, {"rec": backend}, ShipOptions(poll_interval=0.05))
    result: list[object] = []
    runner = threading.Thread(target=lambda: result.append(shipper.run()))
    runner.start()
    try:
        with log.open("ab") as stream:
            for step in range(30):
                stream.write(line("m", step, "loss", "1")[:20])
                stream.flush()
                stream.write(line("m", step, "loss", "1")[20:])
                stream.flush()
        wait_for(lambda: len(backend.flushed) == 30)
    finally:
        shipper.request_stop("test over")
        runner.join(10)
    assert [e.step for e in backend.flushed] == list(range(30))
    assert backend.status is RunStatus.KILLED
    (report,) = result
    assert report.stop_reason == "test over"  # type: ignore[attr-defined]
    assert report.ok  # type: ignore[attr-defined]


def test_inactivity_timeout_stops_follow_mode(tmp_path: Path) -> None:
    """With `timeout`, follow mode drains and stops by itself once the log stays quiet."""
    make_log(tmp_path, steps=3)
    backend = RecordingBackend()
    started = time.monotonic()
    report = ship(tmp_path, {"rec": backend}, follow=True, timeout=0.3, poll_interval=0.05)
    assert time.monotonic() - started < 10
    assert len(backend.flushed) == 12
    assert backend.status is RunStatus.FINISHED
    assert "no new lines" in report.stop_reason


@attrs.define
class ReplaySafeRecorder(RecordingBackend):
    """A recording backend that says a replay from any saved state stores nothing twice."""

    replay_safe: bool = True


@pytest.mark.parametrize(
    ("kind", "most_saves"), [(RecordingBackend, None), (ReplaySafeRecorder, 5)]
)
def test_the_state_is_saved_after_every_batch_unless_the_backend_is_replay_safe(
    tmp_path: Path, kind: type[RecordingBackend], most_saves: int | None
) -> None:
    """After each flushed batch (a crash replays one batch) unless `replay_safe`: then rarely.

    Either way the final state holds the cursor at the end of the log.
    """
    backend = kind()
    make_log(tmp_path, steps=200)  # 800 metric lines: 40 batches of 20
    state_file = tmp_path / "state.json"
    options = ShipOptions(follow=False, batch_size=20, state_file=state_file)
    shipper = Shipper(tmp_path / "torchfort.log", {"b": backend}, options)
    report = shipper.run()
    assert report.ok
    assert len(backend.events) == 800
    assert shipper.state is not None
    if most_saves is None:
        assert shipper.state.saves >= 40
    else:
        assert shipper.state.saves <= most_saves
    saved = json.loads(state_file.read_text())["backends"]["b"]["cursor"]
    assert saved["offset"] == (tmp_path / "torchfort.log").stat().st_size
