"""`tf-ship watch ROOT` end to end: many log directories, each shipped to runs of its own."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from support import TF_SHIP, clean_env, in_terminal, wait_for

from tf_ship.watching.finding import find_log_dirs, folder_name


def write_log(logdir: Path, seed: int, steps: range) -> list[tuple[str, str, int, float]]:
    """Append metric lines whose values say which log they belong to; return the events."""
    logdir.mkdir(parents=True, exist_ok=True)
    events = [
        (model, "loss", step, seed * 10_000 + step + (0.5 if model == "critic" else 0.0))
        for step in steps
        for model in ("actor", "critic")
    ]
    text = "".join(
        f"TORCHFORT::WANDB: model: {model}, step: {step}, {metric}: {value:g}\n"
        for model, metric, step, value in events
    )
    with (logdir / "torchfort.log").open("a", encoding="utf-8") as stream:
        stream.write(text)
    return events


def make_sweep(root: Path) -> dict[str, list[tuple[str, str, int, float]]]:
    """Three log directories, one nested in another, plus what must be ignored."""
    expected = {
        "a": write_log(root / "a", 1, range(40)),
        "b-c": write_log(root / "b" / "c", 2, range(30)),
        "b-c-d": write_log(root / "b" / "c" / "d", 3, range(20)),
    }
    write_log(root / ".hidden", 9, range(5))  # hidden: skipped
    (root / "empty").mkdir()  # no log: nothing to ship
    (root / "a" / "loop").symlink_to(root)  # a symlink loop: visited once
    return expected


def run_watch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `tf-ship watch` to completion."""
    return subprocess.run(
        [*TF_SHIP, "watch", *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout,
        check=False,
    )


def jsonl_events(path: Path) -> list[tuple[str, str, int, float]]:
    """The metric events a jsonl backend wrote to `path`."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [
        (r["model"], r["metric"], r["step"], float(r["value"])) for r in records if "metric" in r
    ]


def same_once(got: list[tuple[str, str, int, float]], expected: list[tuple[str, str, int, float]]):
    """Every expected event exactly once, nothing else."""
    assert Counter(got) == Counter(expected)


# -- finding the logs ---------------------------------------------------------------------------


def test_find_log_dirs_skips_hidden_folders_and_ends_symlink_loops(tmp_path):
    """Every folder holding a log, ROOT included, sorted; hidden ones and loops are not followed."""
    make_sweep(tmp_path)
    write_log(tmp_path, 0, range(1))
    found = find_log_dirs(tmp_path)
    assert found == [tmp_path, tmp_path / "a", tmp_path / "b" / "c", tmp_path / "b" / "c" / "d"]
    assert [folder_name(tmp_path, d) for d in found[1:]] == ["a", "b-c", "b-c-d"]
    assert folder_name(tmp_path, tmp_path) == tmp_path.name


def test_find_log_dirs_depth_limit(tmp_path):
    """--depth N looks at most N levels below ROOT."""
    make_sweep(tmp_path)
    assert find_log_dirs(tmp_path, depth=0) == []
    assert find_log_dirs(tmp_path, depth=1) == [tmp_path / "a"]
    assert find_log_dirs(tmp_path, depth=2) == [tmp_path / "a", tmp_path / "b" / "c"]


# -- one-shot -----------------------------------------------------------------------------------


def tensorboard_events(run_dir: Path) -> list[tuple[str, str, int, float]]:
    """(model, tag, step, value) of every scalar under a TensorBoard run directory."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    ).EventAccumulator
    events = []
    for model_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        acc = accumulator(str(model_dir), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            events.extend((model_dir.name, tag, e.step, e.value) for e in acc.Scalars(tag))
    return events


def test_no_follow_ships_each_log_to_its_own_tensorboard_directory(tmp_path):
    """--no-follow: each log once into OUT/<folder>; a second run ships nothing again."""
    pytest.importorskip("tensorboardX")
    root, out = tmp_path / "sweep", tmp_path / "tb"
    expected = make_sweep(root)
    args = [str(root), "--no-follow", "--backend", "tensorboard", "--tensorboard-dir", str(out)]
    result = run_watch(*args)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    for name, events in expected.items():
        same_once(tensorboard_events(out / name), events)  # values are exact in float32
        assert f"  {name}: end of log; read {len(events)} lines" in result.stderr
    assert "3 logs under" in result.stderr
    assert all((root / d / ".tf-ship-state.json").is_file() for d in ("a", "b/c", "b/c/d"))
    assert not (root / ".hidden" / ".tf-ship-state.json").exists()

    again = run_watch(*args)
    assert again.returncode == 0, again.stderr
    assert "read 0 lines, delivered 0 events" in again.stderr
    for name, events in expected.items():
        same_once(tensorboard_events(out / name), events)


def test_mlflow_one_run_per_folder_named_after_it(tmp_path):
    """With MLflow, each folder gets its own run, named --run-name plus the folder."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 - an optional extra

    root = tmp_path / "sweep"
    expected = make_sweep(root)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_watch(
        str(root), "--no-follow", "--backend", "mlflow", "--mlflow-tracking-uri", uri,
        "--mlflow-experiment", "sweep", "--run-name", "job",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("sweep")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert sorted(by_name) == sorted(f"job-{name}" for name in expected)
    for name, events in expected.items():
        run = by_name[f"job-{name}"]
        assert run.info.status == "FINISHED"
        got = [
            (key.split("/")[0], key.split("/")[1], m.step, m.value)
            for key in run.data.metrics
            for m in client.get_metric_history(run.info.run_id, key)
        ]
        same_once(got, events)


# -- follow mode --------------------------------------------------------------------------------


def start_watch(args: list[str], stderr_path: Path) -> subprocess.Popen[bytes]:
    """Start `tf-ship watch` with its stderr going to a file the test can poll."""
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen(
            [*TF_SHIP, "watch", *args],
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            env=clean_env(),
        )


def stop(process: subprocess.Popen[bytes], err: Path) -> None:
    """SIGTERM, then expect a clean exit 0."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, err.read_text()


def test_follow_picks_up_new_logs_and_stops_on_sigterm(tmp_path):
    """A folder created while watch runs is shipped; growth too; SIGTERM exits 0; each event once.

    Restarting with the same options ships nothing twice (state file per log directory).
    """
    root, out, err = tmp_path / "sweep", tmp_path / "out", tmp_path / "stderr.txt"
    expected = make_sweep(root)
    args = [
        str(root), "--backend", "jsonl", "--jsonl-path", str(out),
        "--scan-interval", "0.1", "--poll-interval", "0.05",
    ]  # fmt: skip
    watch = start_watch(args, err)
    try:
        for name, events in expected.items():
            wait_for(lambda n=name, e=events: len(jsonl_events(out / f"{n}.jsonl")) == len(e),
                     what=f"{name} shipped")  # fmt: skip
        expected["later"] = write_log(root / "later", 4, range(25))
        wait_for(lambda: len(jsonl_events(out / "later.jsonl")) == 50, what="new folder shipped")
        expected["a"] += write_log(root / "a", 1, range(40, 60))
        wait_for(lambda: len(jsonl_events(out / "a.jsonl")) == 120, what="growth shipped")
        stop(watch, err)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    stderr = err.read_text()
    assert "stopped by SIGTERM" in stderr
    assert "4 logs under" in stderr
    for name, events in expected.items():
        same_once(jsonl_events(out / f"{name}.jsonl"), events)

    again = run_watch(*args, "--no-follow")
    assert again.returncode == 0, again.stderr
    assert "read 0 lines, delivered 0 events" in again.stderr
    for name, events in expected.items():
        same_once(jsonl_events(out / f"{name}.jsonl"), events)


def test_max_logs_queue_their_turn_and_idle_logs_are_shipped_again(tmp_path):
    """--max-logs 1 --timeout: logs ship one after the other; an idle log that grows ships again."""
    root, out, err = tmp_path / "sweep", tmp_path / "out", tmp_path / "stderr.txt"
    expected = make_sweep(root)
    watch = start_watch(
        [
            str(root), "--backend", "jsonl", "--jsonl-path", str(out), "--max-logs", "1",
            "--timeout", "0.3", "--scan-interval", "0.1", "--poll-interval", "0.05",
        ],
        err,
    )  # fmt: skip
    try:
        wait_for(lambda: err.read_text().count("no new lines for 0.3 s") >= 3, what="all idle")
        assert "wait for a slot" in err.read_text()
        for name, events in expected.items():
            same_once(jsonl_events(out / f"{name}.jsonl"), events)
        expected["b-c"] += write_log(root / "b" / "c", 2, range(30, 35))
        wait_for(lambda: len(jsonl_events(out / "b-c.jsonl")) == 70, what="idle log shipped again")
        wait_for(lambda: err.read_text().count("no new lines for 0.3 s") >= 4, what="idle again")
        stop(watch, err)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    stderr = err.read_text()
    assert "[b-c] backend jsonl resumes at line 61" in stderr
    assert ", 0 failed, 0 not started" in stderr
    for name, events in expected.items():
        same_once(jsonl_events(out / f"{name}.jsonl"), events)


# -- failures and usage -------------------------------------------------------------------------


def test_a_failing_backend_exits_1_and_the_others_still_ship(tmp_path):
    """A backend that fails for every log: exit 1, a line per log says so; jsonl shipped all."""
    root, out = tmp_path / "sweep", tmp_path / "out"
    expected = make_sweep(root)
    result = run_watch(
        str(root), "--no-follow", "--backend", "tf_ship.testing:FailingBackend",
        "--backend", "jsonl", "--jsonl-path", str(out), "--retry-timeout", "0",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "3 failed" in result.stderr
    for name, events in expected.items():
        same_once(jsonl_events(out / f"{name}.jsonl"), events)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--backend", "jsonl"], "--jsonl-path DIR"),
        (["--backend", "null", "--state-file", "s.json"], "--state-file"),
        (["--backend", "wandb", "--wandb-id", "x"], "--wandb-id"),
        (["--backend", "mlflow", "--mlflow-run-id", "x"], "--mlflow-run-id"),
        (["--backend", "no-such-backend"], "unknown backend"),
    ],
    ids=["jsonl-stdout", "state-file", "wandb-id", "mlflow-run-id", "unknown-backend"],
)
def test_options_that_would_share_an_output_are_usage_errors(tmp_path, args, reason):
    """Options that would make logs share a run, a file or a state: exit 2, one-line reason."""
    result = subprocess.run(
        [*TF_SHIP, "watch", str(tmp_path), "--no-follow", *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert reason in errors[0]


def test_no_log_under_root_without_follow_exits_1(tmp_path):
    """--no-follow on a root without any log (or no root at all): exit 1 with a clear error."""
    result = run_watch(str(tmp_path), "--no-follow", "--backend", "null")
    assert result.returncode == 1
    assert "found no torchfort.log" in result.stderr
    missing = run_watch(str(tmp_path / "missing"), "--no-follow", "--backend", "null")
    assert missing.returncode == 1
    assert "is not a directory" in missing.stderr
    assert "Traceback" not in result.stderr + missing.stderr


def test_symlinked_folder_ships_once(tmp_path):
    """A log folder reachable by two paths (a symlink) is shipped once, under the first name."""
    root, out = tmp_path / "sweep", tmp_path / "out"
    events = write_log(root / "real", 5, range(10))
    (root / "alias").symlink_to(root / "real")
    result = run_watch(str(root), "--no-follow", "--backend", "jsonl", "--jsonl-path", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["alias.jsonl"]
    same_once(jsonl_events(out / "alias.jsonl"), events)


# -- a log another process ships ------------------------------------------------------------------


def test_a_log_another_process_ships_is_skipped_and_said_once(tmp_path):
    """Watch skips a log that a running tf-ship holds, says so once, and ships the others.

    In a terminal with --no-follow: the log is named with its holder (host and PID), exit 0.
    With --follow it takes the log up once its holder has ended, without saying it again.
    """
    root, out, err = tmp_path / "sweep", tmp_path / "out", tmp_path / "stderr.txt"
    expected = {"a": write_log(root / "a", 1, range(40)), "b": write_log(root / "b", 2, range(30))}
    holder = subprocess.Popen(
        [*TF_SHIP, "--logdir", str(root / "a"), "-b", "null"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
    )
    watch = None
    try:
        wait_for((root / "a" / ".tf-ship-state.json.lock").exists, "the holder's lock")
        args = [str(root), "--backend", "jsonl", "--jsonl-path", str(out)]
        once = in_terminal([*TF_SHIP, "watch", *args, "--no-follow"])
        assert once.returncode == 0, once.stdout
        who = rf"host {re.escape(socket.gethostname())}, PID {holder.pid}, since \d\d:\d\d:\d\d"
        skipping = rf"tf-ship: skipping {re.escape(str(root / 'a' / 'torchfort.log'))}: "
        skipping += rf"another tf-ship ships it \({who}\)"
        assert len(re.findall(skipping, once.stdout)) == 1, once.stdout
        assert re.search(rf"  a: skipped: another process ships it \({who}\);", once.stdout)
        assert "1 shipped by another process" in once.stdout
        assert not (out / "a.jsonl").exists()
        same_once(jsonl_events(out / "b.jsonl"), expected["b"])

        with err.open("wb") as stream:
            watch = subprocess.Popen(
                [*TF_SHIP, "watch", *args, "--scan-interval", "0.1", "--poll-interval", "0.05"],
                stderr=stream,
                stdout=subprocess.DEVNULL,
                env=clean_env(),
            )
        wait_for(lambda: "skipping" in err.read_text(), "watch skipping the held log")
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(60) == 0
        wait_for(lambda: len(jsonl_events(out / "a.jsonl")) == len(expected["a"]), "a shipped")
        stop(watch, err)
    finally:
        for process in (holder, watch):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert err.read_text().count("skipping") == 1
    for name, events in expected.items():
        same_once(jsonl_events(out / f"{name}.jsonl"), events)


SLOW_IMPORT = '''
"""A backend whose import waits for a file: a signal can arrive while it imports."""
import os
import time
from pathlib import Path

Path(os.environ["MARK"]).touch()
while not Path(os.environ["GO"]).exists():
    time.sleep(0.01)  # the test creates GO after its signal


class Backend:
    def open(self, run): pass
    def log_config(self, config): pass
    def log_metrics(self, batch): pass
    def flush(self): pass
    def close(self, status): pass
'''


def test_a_signal_while_backends_import_stops_watch_cleanly(tmp_path: Path) -> None:
    """SIGTERM while a backend's module is still importing: a clean stop, exit 0, not 143."""
    (tmp_path / "slow_import_backend.py").write_text(SLOW_IMPORT)
    write_log(tmp_path / "root" / "a", 1, range(5))
    mark, go = tmp_path / "imported", tmp_path / "go"
    env = clean_env(PYTHONPATH=str(tmp_path), MARK=str(mark), GO=str(go))
    watch = subprocess.Popen(
        [*TF_SHIP, "watch", str(tmp_path / "root"), "-b", "slow_import_backend:Backend"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_for(mark.exists, "the backend module importing")
        watch.send_signal(signal.SIGTERM)
        go.touch()
        _, err = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    assert "SIGTERM received" in err
