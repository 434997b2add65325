"""The tf-ship command end to end, in subprocesses: usage, one-shot, follow, signals, scale."""

from __future__ import annotations

import json
import os
import re
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
from terminal import Terminal

from tf_ship.cli import EXAMPLE_DIR
from tf_ship.cli_options import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from tf_ship.cli_reference import render
from tf_ship.exit_codes import EXIT_CODES, exit_code_table
from tf_ship.shipper.parse import LineParser
from tf_ship.shipper.places import STATE_NAME

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
    modules = {
        entry.split("|")[-1].strip()
        for entry in result.stderr.splitlines()
        if entry.startswith("import time:")
    }
    engine = {f"tf_ship.shipper.{name}" for name in ("tail", "parse", "state", "worker", "ship")}
    assert not modules & engine  # nor the engine: --help stays well under 0.3 s
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
        (
            ["--logdir", ".", "--backend", "mlfow"],
            "unknown backend 'mlfow': did you mean 'mlflow'?",
        ),
        (["--backend", "jsonl"], "no log to ship"),
        (["--logdir", ".", "--backend", "null", "--jsonl-path", "x.jsonl"], "--backend jsonl"),
        (["--logdir", ".", "--backend", "jsonl", "--backend", "jsonl"], "twice"),
        (["--logdir", ".", "--backend", "null", "--backend-opt", "nonsense"], "NAME.KEY=VALUE"),
    ],
    ids=[
        "no-backend",
        "unknown-backend",
        "misspelt-backend",
        "no-logdir",
        "jsonl-path-alone",
        "twice",
        "bad-opt",
    ],
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
    """--no-follow on a missing log exits 1 with a clear error naming --wait, no traceback."""
    result = run("--logdir", str(tmp_path), "--no-follow", "--backend", "null")
    assert result.returncode == 1
    (error,) = result.stderr.splitlines()
    assert error.startswith("tf-ship: error: ")
    assert "does not exist" in error
    assert "--wait SECONDS" in error
    assert "Traceback" not in result.stderr


def test_the_exit_codes_are_one_table_in_readme_help_and_reference() -> None:
    """README, ``tf-ship --help`` and docs/cli.md show the same exit codes, from one constant."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert exit_code_table() in readme
    assert exit_code_table() in render()
    help_text = " ".join(run("--help").stdout.split())
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {' '.join(meaning.split())}" in help_text
    assert sorted(EXIT_CODES) == [EXIT_OK, EXIT_FAILURE, EXIT_USAGE] == [0, 1, 2]


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
    assert "lines/s" not in result.stderr  # shipping a few hundred lines is too short to rate


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
    """A second SIGINT exits at once with code 1, even mid-close; the state file is intact.

    The first SIGINT starts a clean stop; the backend then hangs in close(). The second one
    abandons it: the summary says so, and the exit code is 1 (not everything was closed).
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
        assert shipper.wait(10) == 1
        assert time.monotonic() - second < 10
        state = json.loads((logdir / STATE_NAME).read_text(encoding="utf-8"))
        assert "slowmod:SlowBackend" in state["backends"]
        stderr = err.read_text()
        assert "backend slowmod:SlowBackend: FAILED" in stderr, stderr
        assert "abandoned after a second SIGINT" in stderr, stderr
        assert "Traceback" not in stderr, stderr
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
    assert re.search(r"\([\d,]+ lines/s over [\d.]+ s of shipping\)", stderr), stderr
    sys.stdout.write(f"\n2M lines: {elapsed:.1f} s, peak RSS {peak / 2**20:.0f} MiB\n")
    assert peak < 150 * 2**20


# -- a backend that dies, prompts or hangs, under a terminal --------------------------------------

TROUBLE_BACKEND = textwrap.dedent(
    '''
    """A backend that raises or waits for the terminal in one of its calls, as an SDK might."""
    import os, pathlib

    import click

    ERRORS = {"KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit}

    class Trouble:
        def __init__(self, marker, where, what):
            self.marker, self.where, self.what = pathlib.Path(marker), where, what

        def _call(self, name):
            if name != self.where:
                return
            self.marker.with_suffix(".entered").write_text(name)
            if self.what == "prompt":  # what wandb 0.31 does without credentials
                try:
                    click.prompt("Enter your choice", prompt_suffix=": ", err=True)
                except click.Abort:  # standard input closed
                    raise KeyboardInterrupt from None
            else:
                raise ERRORS[self.what](1)

        def open(self, run):
            self.marker.write_text(str(os.getpid()))
            self._call("open")

        def log_config(self, config):
            pass

        def log_metrics(self, batch):
            self._call("log_metrics")

        def flush(self):
            pass

        def close(self, status):
            self.marker.with_suffix(".closed").write_text(status.value)
    '''
)
TROUBLE = "trouble:Trouble"


def trouble_session(
    tmp_path: Path, where: str, what: str, *extra: str, stdin_closed: bool = False
) -> tuple[Terminal, Path, Path]:
    """tf-ship --no-follow on a 50-line log, to the trouble backend and jsonl, in a terminal."""
    (tmp_path / "trouble.py").write_text(TROUBLE_BACKEND, encoding="utf-8")
    logdir = tmp_path / "run1"
    logdir.mkdir()
    write_big_log(logdir / "torchfort.log", 50)
    marker, out = tmp_path / "trouble.pid", tmp_path / "out.jsonl"
    args = [*TF_SHIP, "--logdir", str(logdir), "--no-follow", "--no-state", "-b", TROUBLE]
    args += ["-b", "jsonl"]
    args += ["--jsonl-path", str(out), "--retry-timeout", "30", *extra]
    for key, value in {"marker": marker, "where": where, "what": what}.items():
        args += ["--backend-opt", f"{TROUBLE}.{key}={value}"]
    env = clean_env(PYTHONPATH=str(tmp_path))
    return Terminal(args, cwd=tmp_path, env=env, stdin_closed=stdin_closed), marker, out


def pid_of(marker: Path) -> int:
    """The pid of tf-ship, which the trouble backend wrote when it was opened."""
    wait_for(lambda: marker.exists() and marker.read_text().isdigit(), what="backend opened")
    return int(marker.read_text())


@pytest.mark.parametrize(
    ("where", "what", "call_timeout"),
    [
        ("open", "KeyboardInterrupt", "120"),
        ("open", "SystemExit", "0"),
        ("log_metrics", "KeyboardInterrupt", "0"),
        ("log_metrics", "SystemExit", "120"),
    ],
)
def test_an_interrupt_inside_a_backend_call_fails_that_backend(
    tmp_path: Path, where: str, what: str, call_timeout: str
) -> None:
    """KeyboardInterrupt or SystemExit raised by an SDK fails its backend: FAILED, exit 1.

    On the worker's thread (--call-timeout 0) or the caller thread alike; not retried; the
    reason is in the summary; the other backend ships everything and FINISHES.
    """
    terminal, marker, out = trouble_session(tmp_path, where, what, "--call-timeout", call_timeout)
    try:
        code = terminal.wait(60)
    finally:
        terminal.close()
    screen = terminal.screen()
    assert code == 1, screen
    assert f"backend {TROUBLE}: FAILED, 0 events" in screen, screen
    assert f"the backend raised {what}" in screen or "sys.exit(1)" in screen, screen
    assert f"backend {TROUBLE}: FINISHED" not in screen
    assert not re.search(r"retry \d+ in|retrying for", screen), screen
    assert "Traceback" not in screen, screen
    assert "backend jsonl: FINISHED, 50 events" in screen, screen
    assert len(metric_records(out)) == 50
    assert marker.with_suffix(".closed").read_text() == "FAILED"


@pytest.mark.parametrize("call_timeout", ["0", "120"])
def test_sigterm_while_a_backend_waits_for_the_terminal_exits_1(
    tmp_path: Path, call_timeout: str
) -> None:
    """A backend blocked on a prompt in `open`; SIGTERM: exit 1 after the shutdown timeout.

    Python's own shutdown would abort (exit 134, "Fatal Python error") on the thread blocked on
    the terminal; tf-ship exits with its own code instead, after the summary.
    """
    terminal, marker, _ = trouble_session(
        tmp_path, "open", "prompt", "--call-timeout", call_timeout, "--shutdown-timeout", "2"
    )
    pid = pid_of(marker)
    try:
        wait_for(marker.with_suffix(".entered").exists, what="prompting")
        wait_for(lambda: "Enter your choice" in terminal.raw(), what="prompt shown")
        os.kill(pid, signal.SIGTERM)
        started = time.monotonic()
        code = terminal.wait(30)
        elapsed = time.monotonic() - started
    finally:
        terminal.close(pid)
    screen = terminal.screen()
    assert code == 1, screen
    assert elapsed < 2 + 8, screen
    assert "SIGTERM received: finishing" in screen, screen
    assert f"backend {TROUBLE}: FAILED" in screen, screen
    assert "did not finish within the shutdown timeout (2 s, --shutdown-timeout)" in screen
    assert "backend jsonl: KILLED" in screen or "backend jsonl: FINISHED" in screen, screen
    assert "Fatal Python error" not in screen, screen
    assert "Traceback" not in screen, screen


def test_two_signals_during_a_batch_exit_1_at_once(tmp_path: Path) -> None:
    """A backend blocked in `log_metrics`; Ctrl-C twice on the terminal: exit 1 within seconds.

    The first Ctrl-C asks for a clean stop (the batch in hand is waited for), the second stops
    waiting: the summary says the backend was abandoned.
    """
    terminal, marker, _ = trouble_session(tmp_path, "log_metrics", "prompt")
    pid = pid_of(marker)
    try:
        wait_for(marker.with_suffix(".entered").exists, what="blocked in a batch")
        terminal.type(b"\x03")
        wait_for(lambda: "SIGINT received" in terminal.raw(), what="first Ctrl-C handled")
        started = time.monotonic()
        terminal.type(b"\x03")
        code = terminal.wait(30)
        elapsed = time.monotonic() - started
    finally:
        terminal.close(pid)
    screen = terminal.screen()
    assert code == 1, screen
    assert elapsed < 5, screen
    assert f"backend {TROUBLE}: FAILED" in screen, screen
    assert "abandoned after a second SIGINT while busy" in screen, screen
    assert "Fatal Python error" not in screen, screen
    assert "Traceback" not in screen, screen


def test_a_prompt_with_standard_input_closed_fails_at_once(tmp_path: Path) -> None:
    """A backend that prompts while standard input is closed fails at once, exit 1, no retry.

    As wandb does, the prompt turns the end of input into KeyboardInterrupt: never FINISHED.
    """
    terminal, marker, _ = trouble_session(tmp_path, "open", "prompt", stdin_closed=True)
    try:
        code = terminal.wait(60)
    finally:
        terminal.close()
    screen = terminal.screen()
    assert code == 1, screen
    assert f"backend {TROUBLE}: FAILED, 0 events" in screen, screen
    assert "the backend raised KeyboardInterrupt" in screen, screen
    assert not re.search(r"retry \d+ in|retrying for", screen), screen
    assert "Traceback" not in screen, screen
    assert marker.with_suffix(".closed").read_text() == "FAILED"
