"""The tf-ship command end to end, in subprocesses: usage, one-shot, follow, signals, scale."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest
from support import TF_SHIP, clean_env, wait_for

from tf_ship.cli import EXAMPLE_DIR
from tf_ship.shipper.parse import LineParser
from tf_ship.shipper.state import STATE_NAME

TRACKER_SDKS = ("wandb", "mlflow", "tensorboardX", "tensorboard", "torch")

WRITER = textwrap.dedent(
    """
    import os, sys, time
    path, count, config = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(config, "w") as stream:
        stream.write("general:\\n  report_frequency: 1\\nidentifier: my model")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for step in range(count):
        model = "my model" if step % 2 else "critic_0"
        line = f"TORCHFORT::WANDB: model: {model}, step: {step}, l2 error (rel.): {step / 3:g}\\n"
        data = line.encode()
        if step % 5 == 0:  # a partial write, finished a little later
            os.write(fd, data[:17])
            time.sleep(0.003)
            os.write(fd, data[17:])
        else:
            os.write(fd, data)
        time.sleep(0.001)
    os.close(fd)
    """
)


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run tf-ship to completion."""
    return subprocess.run(
        [*TF_SHIP, *args],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=timeout,
        check=False,
    )


def metric_records(path: Path) -> list[dict[str, object]]:
    """The metric lines a jsonl backend wrote (config lines left out)."""
    if not path.exists():
        return []
    records = [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines() if text]
    return [r for r in records if "metric" in r]


def test_help_works_and_imports_no_tracker_sdk() -> None:
    """--help exits 0 and, like importing the CLI, loads no tracker SDK."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tf_ship", "--help"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--backend" in result.stdout
    imported = {
        entry.split("|")[-1].strip().split(".")[0]
        for entry in result.stderr.splitlines()
        if entry.startswith("import time:")
    }
    assert "click" in imported
    assert not imported & set(TRACKER_SDKS)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys, tf_ship.cli; "
                f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TRACKER_SDKS!r}))"
            ),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=True,
    )
    assert probe.stdout.strip() == "[]"


def test_version() -> None:
    """--version prints the package version."""
    import tf_ship  # noqa: PLC0415

    result = run("--version")
    assert result.returncode == 0
    assert tf_ship.__version__ in result.stdout


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--logdir", "."], "choose at least one --backend"),
        (["--logdir", ".", "--backend", "no-such-backend"], "unknown backend 'no-such-backend'"),
        (["--backend", "jsonl"], "no log to ship"),
        (["--logdir", ".", "--backend", "null", "--jsonl-path", "x.jsonl"], "--backend jsonl"),
        (["--logdir", ".", "--backend", "jsonl", "--backend", "jsonl"], "twice"),
        (["--logdir", ".", "--backend", "null", "--backend-opt", "nonsense"], "NAME.KEY=VALUE"),
    ],
    ids=["no-backend", "unknown-backend", "no-logdir", "jsonl-path-alone", "twice", "bad-opt"],
)
def test_usage_errors_exit_2_with_one_line_reason(
    tmp_path: Path, args: list[str], reason: str
) -> None:
    """Usage errors exit with status 2 and say why in one line."""
    result = subprocess.run(
        [*TF_SHIP, *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    errors = [text for text in result.stderr.splitlines() if text.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert reason in errors[0]
    assert "Traceback" not in result.stderr


def test_missing_log_without_follow_exits_1(tmp_path: Path) -> None:
    """--no-follow on a missing log exits 1 with a clear error, no traceback."""
    result = run("--logdir", str(tmp_path), "--no-follow", "--backend", "null")
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_example_no_follow_writes_every_event(tmp_path: Path) -> None:
    """--example --no-follow --backend jsonl writes every event of the bundled log, in order."""
    out = tmp_path / "out.jsonl"
    result = run("--example", "--no-follow", "--backend", "jsonl", "--jsonl-path", str(out))
    assert result.returncode == 0, result.stderr
    expected = LineParser().parse((EXAMPLE_DIR / "torchfort.log").read_bytes()).events
    assert expected
    got = metric_records(out)
    assert [(r["model"], r["step"], r["metric"], r["value"]) for r in got] == [
        (e.model, e.step, e.metric, e.value) for e in expected
    ]
    configs = [json.loads(t) for t in out.read_text().splitlines() if '"config"' in t]
    assert {c["model"] for c in configs} >= {"mymodel"}
    assert f"{len(expected)} events" in result.stderr


def start_writer(logdir: Path, count: int) -> subprocess.Popen[bytes]:
    """Start the writer script appending `count` lines to logdir/torchfort.log."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRITER,
            str(logdir / "torchfort.log"),
            str(count),
            str(logdir / "config_mymodel.yaml"),
        ],
    )


def start_shipper(args: list[str], stderr_path: Path) -> subprocess.Popen[bytes]:
    """Start tf-ship with its stderr going to a file the test can poll."""
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen(
            [*TF_SHIP, *args], stderr=stderr, stdout=subprocess.DEVNULL, env=clean_env()
        )


def check_each_event_once(out: Path, count: int) -> None:
    """The jsonl file holds every step of the writer exactly once, with the right names."""
    records = metric_records(out)
    steps = Counter(r["step"] for r in records)
    assert steps == Counter(range(count))
    for record in records:
        step = record["step"]
        assert isinstance(step, int)
        assert record["model"] == ("my model" if step % 2 else "critic_0")
        assert record["metric"] == "l2 error (rel.)"
        assert record["value"] == pytest.approx(float(f"{step / 3:g}"))


def test_follow_mode_ships_a_live_log_and_stops_on_sigterm(tmp_path: Path) -> None:
    """A live writer (partial writes too) is followed; SIGTERM: exit 0, summary, each event once."""
    logdir, out, err = tmp_path / "run", tmp_path / "out.jsonl", tmp_path / "stderr.txt"
    count = 400
    shipper = start_shipper(
        [
            "--logdir",
            str(logdir),
            "--backend",
            "jsonl",
            "--jsonl-path",
            str(out),
            "--poll-interval",
            "0.05",
        ],
        err,
    )
    try:
        writer = start_writer(logdir, count)
        assert writer.wait(60) == 0
        wait_for(lambda: len(metric_records(out)) >= count, what="all events shipped")
        shipper.send_signal(signal.SIGTERM)
        assert shipper.wait(30) == 0, err.read_text()
    finally:
        if shipper.poll() is None:
            shipper.kill()
            shipper.wait()
    stderr = err.read_text()
    assert "stopped by SIGTERM" in stderr
    assert f"read {count} lines" in stderr
    assert f"{count} events" in stderr
    check_each_event_once(out, count)
    configs = [json.loads(t) for t in out.read_text().splitlines() if '"config"' in t]
    assert [c["model"] for c in configs] == ["my model"]


def test_timeout_stops_by_itself_after_the_writer_stops(tmp_path: Path) -> None:
    """--timeout 1 ends tf-ship by itself soon after the last line: exit 0, every event."""
    logdir, out, err = tmp_path / "run", tmp_path / "out.jsonl", tmp_path / "stderr.txt"
    count = 200
    shipper = start_shipper(
        [
            "--logdir",
            str(logdir),
            "--backend",
            "jsonl",
            "--jsonl-path",
            str(out),
            "--timeout",
            "1",
            "--poll-interval",
            "0.05",
        ],
        err,
    )
    try:
        writer = start_writer(logdir, count)
        assert writer.wait(60) == 0
        writer_done = time.monotonic()
        assert shipper.wait(30) == 0, err.read_text()
        assert time.monotonic() - writer_done < 15
    finally:
        if shipper.poll() is None:
            shipper.kill()
            shipper.wait()
    assert "no new lines for 1 s" in err.read_text()
    check_each_event_once(out, count)


SLOW_BACKEND = textwrap.dedent(
    """
    import pathlib, time

    class SlowBackend:
        def __init__(self, marker):
            self.marker = pathlib.Path(marker)
        def open(self, run):
            self.marker.write_text("open")
        def log_config(self, config):
            pass
        def log_metrics(self, batch):
            pass
        def flush(self):
            pass
        def close(self, status):
            time.sleep(120)
    """
)


def test_second_sigint_exits_at_once(tmp_path: Path) -> None:
    """A second SIGINT exits at once (130), even mid-close, and leaves the state file intact.

    The first SIGINT starts a clean stop; the backend then hangs in close().
    """
    (tmp_path / "slowmod.py").write_text(SLOW_BACKEND)
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / "torchfort.log").write_bytes(b"")
    marker, err = tmp_path / "opened", tmp_path / "stderr.txt"
    with err.open("wb") as stderr:
        shipper = subprocess.Popen(
            [
                *TF_SHIP,
                "--logdir",
                str(logdir),
                "--backend",
                "slowmod:SlowBackend",
                "--backend-opt",
                f"slowmod:SlowBackend.marker={marker}",
            ],
            stderr=stderr,
            env=clean_env(PYTHONPATH=str(tmp_path)),
        )
    try:
        wait_for(marker.exists, what="backend opened")
        shipper.send_signal(signal.SIGINT)
        wait_for(lambda: "SIGINT received" in err.read_text(), what="first SIGINT handled")
        second = time.monotonic()
        shipper.send_signal(signal.SIGINT)
        assert shipper.wait(10) == 128 + signal.SIGINT
        assert time.monotonic() - second < 10
        state = json.loads((logdir / STATE_NAME).read_text(encoding="utf-8"))
        assert "slowmod:SlowBackend" in state["backends"]
    finally:
        if shipper.poll() is None:
            shipper.kill()
            shipper.wait()


def write_big_log(path: Path, lines: int) -> None:
    """A log of `lines` metric lines, written in blocks."""
    block = 100_000
    models = ("mymodel", "critic_0", "actor", "PPO")
    with path.open("wb") as stream:
        for start in range(0, lines, block):
            stream.write(
                "".join(
                    f"TORCHFORT::WANDB: model: {models[i % 4]}, step: {i // 4}, "
                    f"train_loss: {1.0 / (i + 1):g}\n"
                    for i in range(start, min(start + block, lines))
                ).encode()
            )


@pytest.mark.slow
def test_two_million_lines_in_bounded_memory(tmp_path: Path) -> None:
    """2,000,000 lines through --no-follow --backend null: all read, peak RSS under 150 MB."""
    count = 2_000_000
    log = tmp_path / "torchfort.log"
    write_big_log(log, count)
    started = time.monotonic()
    child = subprocess.Popen(
        [*TF_SHIP, "--log-file", str(log), "--no-follow", "--backend", "null"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    process = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    assert child.stderr is not None
    stderr = child.stderr.read().decode()
    child.stderr.close()
    assert child.wait() == 0, stderr
    assert f"read {count} lines" in stderr
    assert f"{count} events" in stderr
    sys.stdout.write(f"\n2M lines: {elapsed:.1f} s, peak RSS {peak / 2**20:.0f} MiB\n")
    assert peak < 150 * 2**20
