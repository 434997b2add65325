"""`tf-ship run`: start an application, ship while it runs, end with its outcome and exit code.

The application is a small Python program that writes a TorchFort-like log (partial writes,
pauses) and a config file into $TORCHFORT_LOGDIR, then exits with a chosen code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from support import TF_SHIP, clean_env, wait_for
from test_cli import TROUBLE, TROUBLE_BACKEND

from tf_ship.commands.run import describe_exit, exit_code, pid_alive, wait_for_pid

METRIC = "l2 error (rel.)"

APP = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path

    logdir = Path(os.environ["TORCHFORT_LOGDIR"])
    assert logdir.is_dir(), f"{logdir} does not exist when the application starts"
    count, code, mode, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if mode == "trap":  # SIGTERM is waited for below, not fatal
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    if mode == "go":  # wait until the test says go
        deadline = time.monotonic() + 60
        while not Path(marker).exists():
            assert time.monotonic() < deadline, "no go"
            time.sleep(0.01)
    (logdir / "config_mymodel.yaml").write_text(
        "general:\\n  report_frequency: 1\\nidentifier: my model\\n"
    )

    def line(step):
        model = "my model" if step % 2 else "critic_0"
        return f"TORCHFORT::WANDB: model: {model}, step: {step}, l2 error (rel.): {step / 3:g}\\n"

    fd = os.open(logdir / "torchfort.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for step in range(count):
        data = line(step).encode()
        if step % 5 == 0:  # a partial write, finished a little later
            os.write(fd, data[:17])
            time.sleep(0.003)
            os.write(fd, data[17:])
        else:
            os.write(fd, data)
        if step % 50 == 49:
            time.sleep(0.05)
    if mode == "trap":
        Path(marker).write_text("ready")
        signal.sigwait({signal.SIGTERM})
        os.write(fd, line(count).encode())  # the last line, written after SIGTERM
    os.close(fd)
    sys.exit(code)
    """
)


@pytest.fixture
def app(tmp_path: Path) -> list[str]:
    """The command that runs the application: add COUNT CODE MODE MARKER."""
    path = tmp_path / "app.py"
    path.write_text(APP, encoding="utf-8")
    return [sys.executable, str(path)]


def tf_ship_run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `tf-ship run ARGS` to completion."""
    return subprocess.run(
        [*TF_SHIP, "run", "--poll-interval", "0.05", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or clean_env(),
        timeout=180,
        check=False,
    )


def records(path: Path) -> list[dict[str, object]]:
    """Every line a jsonl backend wrote."""
    if not path.exists():
        return []
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines() if text]


def check_every_event(out: Path, count: int) -> None:
    """The jsonl file holds each of the application's `count` steps once, and its config."""
    metrics = [r for r in records(out) if "metric" in r]
    assert Counter(r["step"] for r in metrics) == Counter(range(count))
    for record in metrics:
        step = record["step"]
        assert isinstance(step, int)
        assert record["model"] == ("my model" if step % 2 else "critic_0")
        assert record["metric"] == METRIC
        assert record["value"] == pytest.approx(float(f"{step / 3:g}"))
    configs = [r for r in records(out) if "config" in r]
    assert [c["model"] for c in configs] == ["my model"]


def test_exit_0_ships_every_event_and_exits_0(tmp_path: Path, app: list[str]) -> None:
    """The application exits 0: tf-ship drains the log, the run ends FINISHED, tf-ship exits 0.

    The log folder does not exist beforehand: tf-ship makes it before the application starts.
    """
    out, logdir = tmp_path / "out.jsonl", tmp_path / "new" / "run"
    count = 300
    result = tf_ship_run(
        [
            "--logdir", str(logdir), "--backend", "jsonl", "--jsonl-path", str(out),
            "--", *app, str(count), "0", "plain", "-",
        ],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    check_every_event(out, count)
    assert "the application exited with code 0" in result.stderr
    assert f"backend jsonl: FINISHED, {count} events" in result.stderr


def test_exit_3_exits_3_and_the_mlflow_run_fails(tmp_path: Path, app: list[str]) -> None:
    """The application exits 3: tf-ship exits 3, every event is shipped, the MLflow run FAILED."""
    mlflow_tracking = pytest.importorskip("mlflow.tracking")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out.jsonl"
    count = 60
    result = tf_ship_run(
        [
            "--logdir", str(tmp_path / "run"),
            "--backend", "mlflow", "--mlflow-tracking-uri", uri, "--mlflow-experiment", "runs",
            "--backend", "jsonl", "--jsonl-path", str(out),
            "--", *app, str(count), "3", "plain", "-",
        ],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    check_every_event(out, count)
    assert "the application exited with code 3" in result.stderr
    client = mlflow_tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name("runs")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    keys = {key.partition("/")[0]: key for key in runs[0].data.metrics}  # the metric, sanitized
    assert set(keys) == {"critic_0", "my model"}
    for model, first in (("critic_0", 0), ("my model", 1)):
        history = client.get_metric_history(runs[0].info.run_id, keys[model])
        assert sorted(m.step for m in history) == list(range(first, count, 2))


def test_without_logdir_a_fresh_folder_is_made_first(tmp_path: Path, app: list[str]) -> None:
    """Without --logdir or TORCHFORT_LOGDIR, a fresh folder under ./tf-ship-runs/ is used.

    It exists before the application starts (the application asserts it).
    """
    out = tmp_path / "out.jsonl"
    count = 40
    result = tf_ship_run(
        ["--backend", "jsonl", "--jsonl-path", str(out), "--", *app, str(count), "0", "-", "-"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    folders = list((tmp_path / "tf-ship-runs").iterdir())
    assert len(folders) == 1
    assert (folders[0] / "torchfort.log").read_text().count("\n") == count
    assert (folders[0] / "config_mymodel.yaml").exists()
    check_every_event(out, count)


def test_sigterm_is_passed_on_and_the_rest_is_shipped(tmp_path: Path, app: list[str]) -> None:
    """SIGTERM to tf-ship reaches the application; the line it writes afterwards is shipped.

    The application writes a last line and exits 0: every line is shipped, tf-ship exits 0.
    """
    out, ready, err = tmp_path / "out.jsonl", tmp_path / "ready", tmp_path / "stderr.txt"
    count = 100
    command = [
        *TF_SHIP, "run", "--poll-interval", "0.05", "--logdir", str(tmp_path / "run"),
        "--backend", "jsonl", "--jsonl-path", str(out),
        "--", *app, str(count), "0", "trap", str(ready),
    ]  # fmt: skip
    with err.open("wb") as stderr:
        shipper = subprocess.Popen(command, stderr=stderr, env=clean_env(), cwd=tmp_path)
    try:
        wait_for(ready.exists, what="the application is ready")
        shipper.send_signal(signal.SIGTERM)
        assert shipper.wait(120) == 0, err.read_text()
    finally:
        if shipper.poll() is None:
            shipper.kill()
            shipper.wait()
    stderr_text = err.read_text()
    assert "SIGTERM received (passed on to the application)" in stderr_text
    assert f"backend jsonl: FINISHED, {count + 1} events" in stderr_text
    check_every_event(out, count + 1)


def test_follow_pid_ships_until_the_process_ends(tmp_path: Path, app: list[str]) -> None:
    """--follow-pid ships for an application started elsewhere and stops when it ends.

    The exit code is tf-ship's own (0: everything shipped), not the application's (5).
    """
    logdir, out = tmp_path / "run", tmp_path / "out.jsonl"
    go, err = tmp_path / "go", tmp_path / "stderr.txt"
    logdir.mkdir()
    count = 150
    application = subprocess.Popen(
        [*app, str(count), "5", "go", str(go)], env=clean_env(TORCHFORT_LOGDIR=str(logdir))
    )
    try:
        command = [
            *TF_SHIP, "run", "--poll-interval", "0.05", "--follow-pid", str(application.pid),
            "--logdir", str(logdir), "--backend", "jsonl", "--jsonl-path", str(out),
        ]  # fmt: skip
        with err.open("wb") as stderr:
            shipper = subprocess.Popen(command, stderr=stderr, env=clean_env(), cwd=tmp_path)
        try:
            wait_for(
                lambda: "following the application" in err.read_text(), what="tf-ship following"
            )
            go.write_text("go")
            assert application.wait(120) == 5
            assert shipper.wait(120) == 0, err.read_text()
        finally:
            if shipper.poll() is None:
                shipper.kill()
                shipper.wait()
    finally:
        if application.poll() is None:
            application.kill()
            application.wait()
    stderr_text = err.read_text()
    assert f"the application (pid {application.pid}) has ended" in stderr_text
    assert f"backend jsonl: FINISHED, {count} events" in stderr_text
    check_every_event(out, count)


@pytest.mark.parametrize(("app_code", "expected"), [(0, 1), (3, 3)])
def test_failed_shipping_exits_1_unless_the_application_failed(
    tmp_path: Path, app: list[str], app_code: int, expected: int
) -> None:
    """A backend that fails makes tf-ship exit 1 when the application succeeded.

    When the application failed too, its exit code wins.
    """
    result = tf_ship_run(
        [
            "--logdir", str(tmp_path / "run"), "--retry-timeout", "0",
            "--backend", "tf_ship.testing:FailingBackend",
            "--", *app, "10", str(app_code), "plain", "-",
        ],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == expected, result.stderr
    assert "failed on purpose" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "reason"),
    [
        (["--backend", "null"], 2, "no application"),
        (["--backend", "null", "--follow-pid", "1", "--logdir", ".", "--", "true"], 2, "not both"),
        (["--backend", "null", "--follow-pid", "1"], 2, "--follow-pid needs"),
        (["--backend", "null", "--bogus", "--", "true"], 2, "No such option '--bogus'"),
        (["--backend", "null", "--", "no-such-command-here"], 127, "no such command"),
    ],
    ids=["no-command", "pid-and-command", "pid-without-logdir", "unknown-option", "not-found"],
)
def test_errors_before_the_application_starts(
    tmp_path: Path, args: list[str], code: int, reason: str
) -> None:
    """Usage errors exit 2, a command that cannot be found 127, with a reason.

    No traceback, and no log folder is left behind.
    """
    result = tf_ship_run(args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.glob("tf-ship-runs/*")) == []


def test_exit_codes_and_descriptions() -> None:
    """A death by signal N reads as exit code 128 + N, as a shell reports it."""
    assert exit_code(0) == 0
    assert exit_code(3) == 3
    assert exit_code(-signal.SIGKILL) == 128 + signal.SIGKILL
    assert describe_exit(3) == "the application exited with code 3"
    assert describe_exit(-signal.SIGTERM) == (
        f"the application was killed by SIGTERM (exit code {128 + signal.SIGTERM})"
    )


@pytest.mark.parametrize("how", ["pidfd", "polling"])
def test_wait_for_pid_returns_when_the_process_ends(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """wait_for_pid returns once the process has ended, even before it is reaped.

    A zombie still answers kill(pid, 0), so pid_alive also reads /proc; without pidfd
    wait_for_pid polls.
    """
    if how == "polling":
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd here")
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        assert pid_alive(process.pid)
        assert process.stdin is not None
        process.stdin.close()  # the process ends
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped
        assert not pid_alive(process.pid)
        started = time.monotonic()
        wait_for_pid(process.pid, stop=threading.Event(), max_interval=0.05)
        assert time.monotonic() - started < 10
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_three_signals_exit_with_the_applications_code(tmp_path: Path, app: list[str]) -> None:
    """A backend stuck in a batch; three SIGTERMs: tf-ship exits at once with the app's code.

    The first is passed on (the application writes a last line and exits 3), the second stops
    shipping, the third exits at once: with 3, the application's code, never 128 + 15.
    """
    (tmp_path / "trouble.py").write_text(TROUBLE_BACKEND, encoding="utf-8")
    ready, marker = tmp_path / "ready", tmp_path / "trouble.pid"
    command = [
        *TF_SHIP, "run", "--poll-interval", "0.05", "--logdir", str(tmp_path / "run"),
        "--call-timeout", "0", "--backend", TROUBLE,
        "--backend-opt", f"{TROUBLE}.marker={marker}",
        "--backend-opt", f"{TROUBLE}.where=log_metrics",
        "--backend-opt", f"{TROUBLE}.what=prompt",
        "--", *app, "10", "3", "trap", str(ready),
    ]  # fmt: skip
    err = tmp_path / "stderr.txt"
    with err.open("wb") as stderr:
        shipper = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,  # open and silent: the prompt waits
            stderr=stderr,
            env=clean_env(PYTHONPATH=str(tmp_path)),
            cwd=tmp_path,
        )
    try:
        wait_for(ready.exists, what="the application is ready")
        wait_for(marker.with_suffix(".entered").exists, what="the backend is stuck in a batch")
        shipper.send_signal(signal.SIGTERM)
        wait_for(lambda: "the application exited with code 3" in err.read_text(), what="exit 3")
        shipper.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM received again" in err.read_text(), what="second signal")
        started = time.monotonic()
        shipper.send_signal(signal.SIGTERM)
        assert shipper.wait(30) == 3, err.read_text()
        assert time.monotonic() - started < 5
    finally:
        if shipper.poll() is None:
            shipper.kill()
            shipper.wait()
        assert shipper.stdin is not None
        shipper.stdin.close()
    assert "a third time: exiting now" in err.read_text()


def test_two_signals_with_follow_pid_exit_1(tmp_path: Path, app: list[str]) -> None:
    """--follow-pid, a backend stuck in a batch, two SIGTERMs: exit 1 within seconds.

    The first stops shipping (the batch in hand is waited for), the second stops waiting: the
    summary says the backend was abandoned. Before, this ended in os._exit(143).
    """
    (tmp_path / "trouble.py").write_text(TROUBLE_BACKEND, encoding="utf-8")
    logdir, go, marker = tmp_path / "run", tmp_path / "go", tmp_path / "trouble.pid"
    logdir.mkdir()
    (logdir / "torchfort.log").write_bytes(b"TORCHFORT::WANDB: model: m, step: 1, loss: 1\n")
    application = subprocess.Popen(
        [*app, "1", "0", "go", str(go)], env=clean_env(TORCHFORT_LOGDIR=str(logdir))
    )
    command = [
        *TF_SHIP, "run", "--poll-interval", "0.05", "--follow-pid", str(application.pid),
        "--logdir", str(logdir), "--call-timeout", "0", "--backend", TROUBLE,
        "--backend-opt", f"{TROUBLE}.marker={marker}",
        "--backend-opt", f"{TROUBLE}.where=log_metrics",
        "--backend-opt", f"{TROUBLE}.what=prompt",
    ]  # fmt: skip
    err = tmp_path / "stderr.txt"
    with err.open("wb") as stderr:
        shipper = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stderr=stderr,
            env=clean_env(PYTHONPATH=str(tmp_path)),
            cwd=tmp_path,
        )
    try:
        wait_for(marker.with_suffix(".entered").exists, what="the backend is stuck in a batch")
        shipper.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM received" in err.read_text(), what="first signal")
        started = time.monotonic()
        shipper.send_signal(signal.SIGTERM)
        assert shipper.wait(30) == 1, err.read_text()
        assert time.monotonic() - started < 5
    finally:
        for process in (shipper, application):
            if process.poll() is None:
                process.kill()
                process.wait()
        assert shipper.stdin is not None
        shipper.stdin.close()
    text = err.read_text()
    assert f"backend {TROUBLE}: FAILED" in text, text
    assert "abandoned after a second SIGTERM while busy" in text, text
