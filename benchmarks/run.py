"""tf-ship against hand-written baselines, side by side, in one run.

    python benchmarks/run.py                 # the full run (80,000-line log, 2M-line log)
    python benchmarks/run.py --quick         # a smaller run, for a first look
    python benchmarks/run.py --markdown docs/table.md

Everything happens in a temporary directory: the logs are generated, an MLflow server
(SQLite store) is started on a free loopback port and stopped at the end, wandb runs offline
against a closed loopback address, so nothing leaves the machine.

Each throughput figure is measured in a fresh Python process (``run.py --child NAME``): the
tracker SDKs are imported first, then the clock runs from opening the run to closing it, for
the baseline (a small hand-written function below) and for tf-ship alike. tf-ship is driven
through its Python API, ``tf_ship.ship(..., follow=False)`` without a state file: the same
`Shipper` that ``tf-ship --no-follow --no-state`` runs, without the interpreter start-up and
SDK imports that the in-process baselines do not pay either. The real ``tf-ship`` command is
measured where the command itself is the point: follow-mode latency and idle CPU, ``--help``
start-up, and peak memory.

Ratios: for throughput, baseline time / tf-ship time (above 1: tf-ship is faster); for
fan-out, fan-out time / slowest single backend; for parsing, grep's speed / tf-ship's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

MODELS = ("mymodel", "critic_0")
METRICS = ("train_loss", "train_lr")
PREFIX = "TORCHFORT::WANDB: "
LINE = re.compile(rb"TORCHFORT::WANDB: model: (.+?), step: (-?\d+), (.+): (\S+)$")
MULTILINE = re.compile(
    rb"^TORCHFORT::WANDB: model: (.+?), step: (-?\d+), (.+): (\S+)$", re.MULTILINE
)
_ONCE = b"+" if sys.version_info >= (3, 11) else b""  # possessive where re has it (3.11+)
FLOOR = re.compile(
    rb"\nTORCHFORT::WANDB: model: ([^\n,]*" + _ONCE + rb"), step: (-?[0-9]+" + _ONCE + rb"), "
    rb"([^\n:]+" + _ONCE + rb"): ([^\n :]+" + _ONCE + rb")(?=\n)"
)
CHUNK_BYTES = 4 << 20
MLFLOW_BATCH = 1000
SERVER_DEADLINE = 180.0
LATENCY_ENV = "TF_SHIP_BENCH_LATENCY_OUT"
HERE = Path(__file__).resolve().parent


# -- the logs ---------------------------------------------------------------------------------


def write_log(path: Path, lines: int, seed: int = 1) -> int:
    """Write a finished TorchFort log: 2 models x 2 metrics per step; return its line count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)  # noqa: S311 - test data, not cryptography
    steps = max(1, lines // (len(MODELS) * len(METRICS)))
    with path.open("w", encoding="ascii") as out:
        for first in range(0, steps, 10_000):
            parts = []
            for step in range(first, min(steps, first + 10_000)):
                for model in MODELS:
                    loss = rnd.lognormvariate(-3, 1)
                    lr = 1e-3 * (1 + rnd.random())
                    parts.append(f"{PREFIX}model: {model}, step: {step}, train_loss: {loss:g}\n")
                    parts.append(f"{PREFIX}model: {model}, step: {step}, train_lr: {lr:g}\n")
            out.write("".join(parts))
    return steps * len(MODELS) * len(METRICS)


def parsed_lines(path: Path) -> Iterator[tuple[str, int, str, float]]:
    """(model, step, metric, value) of each metric line: the hand-written loops' parser."""
    with path.open("rb") as stream:
        for raw in stream:
            match = LINE.match(raw.rstrip(b"\n"))
            if match is not None:
                model, step, metric, value = match.groups()
                yield model.decode(), int(step), metric.decode(), float(value)


# -- baselines, each run in a fresh process ---------------------------------------------------


def child_grep(options: dict[str, Any]) -> dict[str, Any]:
    """``grep -c`` over the log: the floor for reading the bytes at all."""
    best = float("inf")
    count = 0
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run(
            ["grep", "-c", PREFIX, options["log"]], capture_output=True, check=True, text=True
        )
        best = min(best, time.perf_counter() - started)
        count = int(done.stdout)
    return {"seconds": best, "count": count}


def child_regex_lines(options: dict[str, Any]) -> dict[str, Any]:
    """Python: one regex match per line, a tuple per metric."""
    watch = Stopwatch()
    count = sum(1 for _ in parsed_lines(Path(options["log"])))
    return {**watch.stop(), "count": count}


def child_regex_chunks(options: dict[str, Any]) -> dict[str, Any]:
    """Python: re.finditer over 4 MiB chunks cut at a newline, a tuple per metric."""
    watch = Stopwatch()
    count = 0
    rest = b""
    with Path(options["log"]).open("rb") as stream:
        while block := stream.read(CHUNK_BYTES):
            data = rest + block
            cut = data.rfind(b"\n") + 1
            data, rest = data[:cut], data[cut:]
            events = [
                (m.decode(), int(s), k.decode(), float(v))
                for m, s, k, v in (match.groups() for match in MULTILINE.finditer(data))
            ]
            count += len(events)
    return {**watch.stop(), "count": count}


def child_parse_floor(options: dict[str, Any]) -> dict[str, Any]:
    """The least any Python parser does: find the fields, int() each step, float() each value.

    One fast regex per 4 MiB chunk; no names decoded, no objects, nothing checked.
    """
    watch = Stopwatch()
    count = 0
    rest = b"\n"
    with Path(options["log"]).open("rb") as stream:
        while block := stream.read(CHUNK_BYTES):
            data = rest + block
            cut = data.rfind(b"\n")
            data, rest = data[: cut + 1], data[cut:]
            found = FLOOR.findall(data)
            steps = list(map(int, (step for _, step, _, _ in found)))
            values = list(map(float, (value for _, _, _, value in found)))
            count += min(len(steps), len(values))
    return {**watch.stop(), "count": count}


def _wandb_init(options: dict[str, Any]) -> Any:  # noqa: ANN401 - a wandb Run
    import wandb  # noqa: PLC0415

    return wandb.init(
        project="tf-ship-bench",
        dir=options["dir"],
        mode="offline",
        settings=wandb.Settings(console="off"),
    )


def child_wandb_per_line(options: dict[str, Any]) -> dict[str, Any]:
    """TorchFort's wandb_helper.py: one wandb.log per line, the step as a side series."""
    import wandb  # noqa: F401, PLC0415 - imported before the clock starts

    watch = Stopwatch()
    run = _wandb_init(options)
    count = 0
    with Path(options["log"]).open(encoding="utf-8", errors="replace") as stream:
        for line in stream:
            if not line.startswith("TORCHFORT::WANDB"):
                continue
            rest = line.strip().split("model: ", 1)[1]
            model, rest = rest.split(", step: ", 1)
            step, rest = rest.split(", ", 1)
            metric, value = rest.rsplit(": ", 1)
            run.log({f"{model} {metric}": float(value), f"{model} {metric} step": int(step)})
            count += 1
    run.finish()
    return {**watch.stop(), "count": count}


def child_wandb_best(options: dict[str, Any]) -> dict[str, Any]:
    """The best hand-written loop: one wandb.log per (model, step), per-model x-axes."""
    import wandb  # noqa: F401, PLC0415

    watch = Stopwatch()
    run = _wandb_init(options)
    count = 0
    models: set[str] = set()
    row: dict[str, Any] = {}
    current: tuple[str, int] | None = None
    for model, step, metric, value in parsed_lines(Path(options["log"])):
        if (model, step) != current:
            if row:
                run.log(row)
            if model not in models:
                models.add(model)
                run.define_metric(f"{model}/step")
                run.define_metric(f"{model}/*", step_metric=f"{model}/step")
            current, row = (model, step), {f"{model}/step": step}
        row[f"{model}/{metric}"] = value
        count += 1
    if row:
        run.log(row)
    run.finish()
    return {**watch.stop(), "count": count}


def _mlflow_run(uri: str, experiment: str) -> tuple[Any, str]:
    from mlflow import MlflowClient  # noqa: PLC0415

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    return client, client.create_run(experiment_id).info.run_id


def child_mlflow_log_metric(options: dict[str, Any]) -> dict[str, Any]:
    """One MlflowClient.log_metric call per metric, on a sample of the log."""
    client, run_id = _mlflow_run(options["uri"], "baseline-log-metric")
    sample = []
    for event in parsed_lines(Path(options["log"])):
        sample.append(event)
        if len(sample) >= options["sample"]:
            break
    watch = Stopwatch()
    for model, step, metric, value in sample:
        client.log_metric(run_id, f"{model}/{metric}", value, step=step)
    measured = watch.stop()
    client.set_terminated(run_id)
    return {**measured, "count": len(sample)}


def child_mlflow_log_batch(options: dict[str, Any]) -> dict[str, Any]:
    """The best hand-written loop: MlflowClient.log_batch with 1000 metrics per call."""
    from mlflow.entities import Metric  # noqa: PLC0415

    watch = Stopwatch()
    client, run_id = _mlflow_run(options["uri"], "baseline-log-batch")
    count = 0
    batch: list[Any] = []
    for model, step, metric, value in parsed_lines(Path(options["log"])):
        batch.append(Metric(f"{model}/{metric}", value, time.time_ns() // 1_000_000, step))
        if len(batch) == MLFLOW_BATCH:
            client.log_batch(run_id, metrics=batch)
            count += len(batch)
            batch = []
    if batch:
        client.log_batch(run_id, metrics=batch)
        count += len(batch)
    client.set_terminated(run_id)
    return {**watch.stop(), "count": count}


def child_tensorboard_add_scalar(options: dict[str, Any]) -> dict[str, Any]:
    """The hand-written loop: tensorboardX SummaryWriter.add_scalar per metric."""
    from tensorboardX import SummaryWriter  # noqa: PLC0415

    watch = Stopwatch()
    writer = SummaryWriter(options["dir"])
    count = 0
    for model, step, metric, value in parsed_lines(Path(options["log"])):
        writer.add_scalar(f"{model}/{metric}", value, step)
        count += 1
    writer.close()
    return {**watch.stop(), "count": count}


# -- tf-ship ----------------------------------------------------------------------------------


def child_tf_ship(options: dict[str, Any]) -> dict[str, Any]:
    """tf_ship.ship(follow=False), no state file, to the backends named in options."""
    import tf_ship  # noqa: PLC0415

    names: list[str] = options["backends"]
    factories: dict[str, Callable[[], Any]] = {}
    if "null" in names:
        from tf_ship.backends.null import NullBackend  # noqa: PLC0415

        factories["null"] = NullBackend
    if "wandb" in names:
        import wandb  # noqa: F401, PLC0415

        from tf_ship.backends.wandb import WandbBackend  # noqa: PLC0415

        factories["wandb"] = lambda: WandbBackend(
            project="tf-ship-bench", directory=options["dir"], mode="offline"
        )
    if "mlflow" in names:
        import mlflow  # noqa: F401, PLC0415

        from tf_ship.backends.mlflow import MlflowBackend  # noqa: PLC0415

        factories["mlflow"] = lambda: MlflowBackend(options["uri"], experiment="tf-ship")
    if "tensorboard" in names:
        import tensorboardX  # noqa: F401, PLC0415

        from tf_ship.backends.tensorboard import TensorBoardBackend  # noqa: PLC0415

        factories["tensorboard"] = lambda: TensorBoardBackend(Path(options["dir"]) / "tb")
    watch = Stopwatch()
    report = tf_ship.ship(options["log"], {name: factories[name]() for name in names}, follow=False)
    measured = watch.stop()
    events = {stats.name: stats.events for stats in report.backends}
    return {**measured, "count": report.lines_read, "events": events, "ok": report.ok}


class LatencyBackend:
    """Records, for every event, microseconds from its append (its step) to `log_metrics`.

    Loaded by the real command as ``run:LatencyBackend``; writes what it saw at close.
    """

    def __init__(self) -> None:
        self.latencies: list[int] = []

    def open(self, run: object) -> None:
        """Nothing to open."""

    def log_config(self, config: object) -> None:
        """Configs are not measured."""

    def log_metrics(self, batch: Sequence[Any]) -> None:
        """Note the delay of each event: its step holds its append time in microseconds."""
        now = time.time_ns() // 1000
        self.latencies.extend(now - event.step for event in batch if event.step > 0)

    def flush(self) -> None:
        """Nothing buffered."""

    def close(self, status: object) -> None:  # noqa: ARG002
        """Write the latencies where the benchmark asked."""
        Path(os.environ[LATENCY_ENV]).write_text(json.dumps(self.latencies))


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "grep": child_grep,
    "regex_lines": child_regex_lines,
    "regex_chunks": child_regex_chunks,
    "parse_floor": child_parse_floor,
    "wandb_per_line": child_wandb_per_line,
    "wandb_best": child_wandb_best,
    "mlflow_log_metric": child_mlflow_log_metric,
    "mlflow_log_batch": child_mlflow_log_batch,
    "tensorboard_add_scalar": child_tensorboard_add_scalar,
    "tf_ship": child_tf_ship,
}


def run_child(name: str, workdir: Path, **options: Any) -> dict[str, Any]:  # noqa: ANN401
    """Run one measurement in a fresh interpreter; return what it measured."""
    result = workdir / f"result-{name}-{time.monotonic_ns()}.json"
    directory = workdir / f"out-{name}-{time.monotonic_ns()}"
    directory.mkdir(parents=True)
    options = {"dir": str(directory), **options}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name]
    command += ["--options", json.dumps(options), "--result", str(result)]
    done = subprocess.run(
        command, cwd=directory, capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0 or not result.exists():
        msg = f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(result.read_text())  # type: ignore[no-any-return]


# -- CPU time, from /proc (Linux) ---------------------------------------------------------------


def processes() -> Iterator[tuple[int, int, int, float]]:
    """(pid, parent pid, session id, user + system CPU seconds so far) of each live process."""
    ticks = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        # after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        # utime stime
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        yield int(stat.parent.name), int(fields[1]), int(fields[3]), cpu


def session_cpu_seconds(session: int) -> float:
    """CPU so far of the live processes of a session (the MLflow server's)."""
    return sum(cpu for _, _, sid, cpu in processes() if sid == session)


def tree_cpu_seconds(root: int) -> float:
    """CPU so far of a process and its live descendants (wandb's service process)."""
    table = list(processes())
    tree = {root}
    grew = True
    while grew:
        found = {pid for pid, parent, _, _ in table if parent in tree} - tree
        tree |= found
        grew = bool(found)
    return sum(cpu for pid, _, _, cpu in table if pid in tree)


class Stopwatch:
    """Wall time and the CPU of this process and its children, from creation to `stop`."""

    def __init__(self) -> None:
        self.cpu = tree_cpu_seconds(os.getpid())
        self.started = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """{"seconds": wall time, "cpu": CPU seconds of this process tree} so far."""
        seconds = time.perf_counter() - self.started
        return {"seconds": seconds, "cpu": tree_cpu_seconds(os.getpid()) - self.cpu}


# -- the MLflow server ------------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(uri: str) -> bool:
    """True when the server answers /health."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def mlflow_server(store: Path) -> Iterator[tuple[str, Callable[[], None], int]]:
    """Start ``mlflow server`` (SQLite) on a free loopback port; stop its process group at the end.

    Yields the URI, a function that waits until the server is healthy, and the server's
    session id (for its CPU time).
    """
    store.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "mlflow", "server"]
    command += ["--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(store / "artifacts")]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    output = store / "server.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=store,
            env=env,
            start_new_session=True,
        )

    def wait() -> None:
        deadline = time.monotonic() + SERVER_DEADLINE
        while not healthy(uri):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = output.read_text(errors="replace")[-3000:]
                msg = f"the MLflow server did not start:\n{tail}"
                raise RuntimeError(msg)
            time.sleep(0.2)

    try:
        yield uri, wait, process.pid
    finally:
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)


# -- the real command -------------------------------------------------------------------------


def tf_ship_command() -> list[str]:
    """The installed ``tf-ship`` script beside this interpreter, else ``python -m tf_ship``."""
    script = Path(sys.executable).parent / "tf-ship"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tf_ship"]


def measure_help(repeats: int) -> float:
    """Median wall time of ``tf-ship --help``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([*tf_ship_command(), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _append_step(fd: int, step_value: int | None = None) -> None:
    """Append one TorchFort step (2 models x 2 metrics), one write(2) per line."""
    for model in MODELS:
        for metric in METRICS:
            step = time.time_ns() // 1000 if step_value is None else step_value
            os.write(fd, f"{PREFIX}model: {model}, step: {step}, {metric}: 0.5\n".encode())


def measure_follow(workdir: Path, bursts: int, idle_seconds: float) -> dict[str, Any]:
    """Follow mode of the real command: latency from append to the backend, then idle CPU."""
    import psutil  # noqa: PLC0415

    logdir = workdir / "follow"
    logdir.mkdir()
    log = logdir / "torchfort.log"
    out = workdir / "latencies.json"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _append_step(fd, step_value=0)  # warm-up, not measured
    env = {**os.environ, LATENCY_ENV: str(out), "PYTHONPATH": str(HERE)}
    command = [*tf_ship_command(), "--logdir", str(logdir), "--no-state", "-q"]
    command += ["--backend", "run:LatencyBackend"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # start-up and the warm-up lines
        rnd = random.Random(7)  # noqa: S311 - write timing, not cryptography
        for _ in range(bursts):
            time.sleep(rnd.uniform(0.005, 1.0))
            _append_step(fd)
        time.sleep(1.5)  # let polling back off to its idle interval
        child = psutil.Process(process.pid)
        before = child.cpu_times()
        time.sleep(idle_seconds)
        after = child.cpu_times()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        os.close(fd)
        if process.poll() is None:
            process.kill()
            process.wait()
    if not out.exists():
        msg = f"the follow run recorded nothing:\n{stderr[-3000:]}"
        raise RuntimeError(msg)
    latencies = sorted(us / 1e6 for us in json.loads(out.read_text()))
    busy = (after.user - before.user) + (after.system - before.system)
    return {
        "events": len(latencies),
        "expected": bursts * len(MODELS) * len(METRICS),
        "median": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "idle_cpu": busy / idle_seconds,
    }


def measure_rss(log: Path, workdir: Path, uri: str, limit: float) -> dict[str, Any]:
    """Peak RSS of the real command shipping `log` to null, tensorboard, wandb and MLflow.

    Polls the process every 50 ms; stops it with SIGTERM after `limit` seconds (it then
    flushes and closes its runs). Returns the peak and how far each backend got.
    """
    import psutil  # noqa: PLC0415

    out = workdir / "rss"
    out.mkdir()
    command = [*tf_ship_command(), "--log-file", str(log), "--no-follow", "--no-state"]
    command += ["-b", "null", "-b", "tensorboard", "-b", "wandb", "-b", "mlflow"]
    command += ["--tensorboard-dir", str(out / "tb"), "--wandb-dir", str(out)]
    command += ["--wandb-mode", "offline", "--mlflow-tracking-uri", uri]
    command += ["--mlflow-experiment", "rss"]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=out, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    child = psutil.Process(process.pid)
    peak = 0
    stopped = False
    try:
        while process.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, child.memory_info().rss)
            if not stopped and time.perf_counter() - started > limit:
                process.send_signal(signal.SIGTERM)
                stopped = True
            time.sleep(0.05)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    shipped = {
        name: int(count) for name, count in re.findall(r"backend (\S+): \w+, (\d+) events", stderr)
    }
    return {"peak": peak, "seconds": time.perf_counter() - started, "shipped": shipped}


# -- the table --------------------------------------------------------------------------------


def mean_of(*results: dict[str, Any]) -> dict[str, Any]:
    """One result from several runs of a measurement: the mean of its times, the first's rest."""
    merged = dict(results[0])
    for field in ("seconds", "cpu", "server_cpu"):
        merged[field] = statistics.fmean(float(result[field]) for result in results)
    return merged


def cpu_demand(result: dict[str, Any]) -> float:
    """CPU seconds a measurement used: its process tree and the MLflow server."""
    return float(result["cpu"]) + float(result["server_cpu"])


def rate(result: dict[str, Any]) -> float:
    """Items per second of a measurement."""
    return float(result["count"]) / float(result["seconds"])


def speed(result: dict[str, Any], unit: str = "lines/s") -> str:
    """A throughput cell: rate and time."""
    return f"{rate(result):,.0f} {unit} ({result['seconds']:.2f} s)"


class Table:
    """Rows of figure, baseline, tf-ship, ratio, target, met."""

    HEADER = ("figure", "baseline", "tf-ship", "ratio", "target", "met?")

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []
        self.notes: list[str] = []

    def add(  # noqa: PLR0913 - one argument per column
        self, figure: str, baseline: str, tf_ship: str, ratio: str, target: str, *, met: bool | None
    ) -> None:
        """Add a row (met None: no target, shown for context) and echo it."""
        mark = "-" if met is None else ("yes" if met else "NO")
        self.rows.append((figure, baseline, tf_ship, ratio, target, mark))
        print(f"  {figure}: {tf_ship} vs {baseline} -> {ratio} ({target}: {mark})", flush=True)

    def text(self) -> str:
        """Aligned plain text."""
        rows = [self.HEADER, *self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.HEADER))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([*lines, "", *self.notes])

    def markdown(self) -> str:
        """A Markdown table plus the notes as a list."""
        lines = ["| " + " | ".join(self.HEADER) + " |", "|" + "---|" * len(self.HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join([*lines, "", *(f"- {note}" for note in self.notes)]) + "\n"


def speedup_row(  # noqa: PLR0913 - one argument per column
    table: Table,
    figure: str,
    baseline: dict[str, Any],
    ours: dict[str, Any],
    *,
    minimum: float | None,
    target: str,
) -> None:
    """A throughput row: ratio = baseline time per line / tf-ship time per line."""
    ratio = rate(ours) / rate(baseline)
    met = None if minimum is None else ratio >= minimum
    table.add(figure, speed(baseline), speed(ours), f"{ratio:.2f}x", target, met=met)


def check_delivery(name: str, result: dict[str, Any], lines: int) -> None:
    """Fail loudly when tf-ship did not ship every line to every backend."""
    shipped = set(result["events"].values())
    if not result["ok"] or shipped != {lines}:
        msg = f"tf-ship ({name}) did not ship all {lines} lines: {result}"
        raise RuntimeError(msg)


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0915 - one section per figure
    """Build the logs, start the server, measure everything, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--lines", type=int, help="lines of the tracker log [80000; quick 20000]")
    parser.add_argument(
        "--big-lines", type=int, help="lines of the parsing/RSS log [2000000; quick 200000]"
    )
    parser.add_argument("--markdown", type=Path, help="also write the table here, as Markdown")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        measured = CHILDREN[args.child](json.loads(args.options))
        args.result.write_text(json.dumps(measured))
        return 0

    lines = args.lines or (20_000 if args.quick else 80_000)
    big_lines = args.big_lines or (200_000 if args.quick else 2_000_000)
    sample = 100 if args.quick else 300
    bursts = 15 if args.quick else 40
    idle = 3.0 if args.quick else 5.0
    rss_limit = 20.0 if args.quick else 60.0
    # wandb offline, silent, and pointed at a closed loopback port should it ever try to talk.
    os.environ.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_BASE_URL=f"http://127.0.0.1:{free_port()}",
        WANDB_DISABLE_GIT="true",
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    began = time.monotonic()
    table = Table()
    with (
        tempfile.TemporaryDirectory(prefix="tf-ship-bench-") as temp,
        mlflow_server(Path(temp) / "mlflow") as (uri, wait_for_server, server_session),
    ):
        work = Path(temp)
        log = work / "tracker-log" / "torchfort.log"
        big = work / "big-log" / "torchfort.log"
        lines = write_log(log, lines)
        big_lines = write_log(big, big_lines, seed=2)
        print(f"logs: {lines:,} and {big_lines:,} lines; waiting for the MLflow server", flush=True)
        wait_for_server()
        print(f"MLflow server ready at {uri} ({time.monotonic() - began:.0f} s)", flush=True)

        def child(name: str, path: Path = log, **options: Any) -> dict[str, Any]:  # noqa: ANN401
            server_before = session_cpu_seconds(server_session)
            measured = run_child(name, work, log=str(path), uri=uri, **options)
            measured["server_cpu"] = session_cpu_seconds(server_session) - server_before
            return measured

        def ours(*backends: str, path: Path = log) -> dict[str, Any]:
            result = child("tf_ship", path, backends=list(backends))
            check_delivery("+".join(backends), result, big_lines if path == big else lines)
            return result

        def side_by_side(*measure: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
            """Each measurement twice, in mirrored order (A B B A); the mean of the two counts.

            The machine's speed drifts between runs, and the MLflow store grows with every run:
            the mean of mirrored runs cancels a steady drift (the faster of two would favour
            whatever ran first).
            """
            first = [run() for run in measure]
            second = [run() for run in reversed(measure)][::-1]
            return [mean_of(a, b) for a, b in zip(first, second, strict=True)]

        # wandb
        per_line, best, wandb_alone = side_by_side(
            lambda: child("wandb_per_line"), lambda: child("wandb_best"), lambda: ours("wandb")
        )
        speedup_row(
            table, "wandb vs per-line daemon", per_line, wandb_alone, minimum=4.0, target=">= 4x"
        )
        speedup_row(
            table,
            "wandb vs best hand-written loop",
            best,
            wandb_alone,
            minimum=1 / 1.15,
            target=">= 0.87x (within 1.15x)",
        )
        # MLflow
        log_metric = child("mlflow_log_metric", sample=sample)
        log_batch, mlflow_alone = side_by_side(
            lambda: child("mlflow_log_batch"), lambda: ours("mlflow")
        )
        speedup_row(
            table,
            "MLflow vs log_batch loop of 1000",
            log_batch,
            mlflow_alone,
            minimum=1 / 1.15,
            target=">= 0.87x (within 1.15x)",
        )
        ratio = rate(mlflow_alone) / rate(log_metric)
        table.add(
            f"MLflow vs log_metric per metric ({log_metric['count']} sampled)",
            speed(log_metric, "metrics/s"),
            speed(mlflow_alone, "metrics/s"),
            f"{ratio:.0f}x",
            ">= 100x",
            met=ratio >= 100,
        )
        # TensorBoard
        add_scalar, tensorboard_alone = side_by_side(
            lambda: child("tensorboard_add_scalar"), lambda: ours("tensorboard")
        )
        speedup_row(
            table,
            "TensorBoard vs add_scalar loop",
            add_scalar,
            tensorboard_alone,
            minimum=1.0,
            target=">= 1x",
        )
        # parsing, on the big log
        grep = child("grep", big)
        regex_lines, regex_chunks, floor, parsing = side_by_side(
            lambda: child("regex_lines", big),
            lambda: child("regex_chunks", big),
            lambda: child("parse_floor", big),
            lambda: ours("null", path=big),
        )
        slower = rate(grep) / rate(parsing)
        table.add(
            f"parsing alone, null backend ({big_lines:,} lines) vs grep -c",
            speed(grep),
            speed(parsing),
            f"{slower:.1f}x slower",
            ">= 1,000,000 lines/s and <= 20x",
            met=rate(parsing) >= 1_000_000 and slower <= 20,
        )
        for figure, baseline in (
            ("parsing vs Python regex line by line", regex_lines),
            ("parsing vs re.finditer, 4 MiB chunks", regex_chunks),
            ("parsing vs the floor: fast regex + int() + float() only", floor),
        ):
            speedup_row(table, figure, baseline, parsing, minimum=None, target="-")
        # fan-out
        fan_out = mean_of(*(ours("wandb", "mlflow", "tensorboard") for _ in range(2)))
        alone = {"wandb": wandb_alone, "mlflow": mlflow_alone, "tensorboard": tensorboard_alone}
        slowest = max(alone, key=lambda name: alone[name]["seconds"])
        ratio = fan_out["seconds"] / alone[slowest]["seconds"]
        table.add(
            "fan-out wandb+mlflow+tensorboard vs slowest alone",
            f"{slowest} alone {alone[slowest]['seconds']:.2f} s",
            f"all three {fan_out['seconds']:.2f} s",
            f"{ratio:.2f}x",
            "<= 1.2x",
            met=ratio <= 1.2,
        )
        cores = os.cpu_count() or 1
        needed = sum(cpu_demand(result) for result in alone.values())
        table.notes.append(
            "CPU used (user + system: the measuring process with wandb's service process, plus "
            "the MLflow server): "
            + ", ".join(
                f"{name} alone {cpu_demand(result):.1f} s" for name, result in alone.items()
            )
            + f", all three at once {cpu_demand(fan_out):.1f} s. On {cores} cores the three "
            f"cannot finish in less than {needed:.1f} s / {cores} = {needed / cores:.1f} s, "
            f"{needed / cores / alone[slowest]['seconds']:.2f}x the slowest alone. The MLflow "
            f"server used {mlflow_alone['server_cpu']:.1f} s of CPU for tf-ship's "
            f"{lines:,} metrics and {log_batch['server_cpu']:.1f} s for the log_batch loop's."
        )
        # the real command
        follow = measure_follow(work, bursts, idle)
        median, p99 = follow["median"], follow["p99"]
        table.add("follow latency, median", "-", f"{median * 1000:.0f} ms", "-", "< 250 ms",
                  met=median < 0.25)  # fmt: skip
        table.add("follow latency, p99", "-", f"{p99 * 1000:.0f} ms", "-", "< 1 s",
                  met=p99 < 1.0)  # fmt: skip
        busy = follow["idle_cpu"]
        table.add(f"idle CPU in follow mode ({idle:g} s)", "-", f"{busy:.2%} of a core", "-",
                  "< 1% of a core", met=busy < 0.01)  # fmt: skip
        help_time = measure_help(3 if args.quick else 5)
        table.add("tf-ship --help start-up (median)", "-", f"{help_time:.3f} s", "-", "< 0.3 s",
                  met=help_time < 0.3)  # fmt: skip
        rss = measure_rss(big, work, uri, rss_limit)
        table.add(
            f"peak RSS, {big_lines:,}-line log to null+tensorboard+wandb+mlflow",
            "-",
            f"{rss['peak'] / 2**20:.0f} MB",
            "-",
            "< 250 MB",
            met=rss["peak"] < 250 * 2**20,
        )
        shipped = ", ".join(f"{name} {count:,}" for name, count in rss["shipped"].items())
        everything = all(count == big_lines for count in rss["shipped"].values())
        table.notes += [
            (
                f"Tracker figures: a finished log of {lines:,} lines ({len(MODELS)} models x "
                f"{len(METRICS)} metrics x {lines // 4:,} steps); parsing and RSS: "
                f"{big_lines:,} lines. Throughput is measured in a fresh process per figure, "
                "from opening the run to closing it; tf-ship through "
                "`tf_ship.ship(..., follow=False)` without a state file (what "
                "`tf-ship --no-follow --no-state` runs). Each tracker baseline and tf-ship run "
                "twice in mirrored order (A B B A; the fan-out twice), and the mean of the two "
                "runs counts; likewise for the parsing figures (grep: the best of three)."
            ),
            (
                "Ratio: baseline time / tf-ship time for throughput (above 1: tf-ship faster); "
                "fan-out time / slowest backend alone; grep's speed / tf-ship's."
            ),
            f"MLflow log_metric: {log_metric['count']} metrics timed, reported as a rate.",
            (
                "Follow mode: the real command with a recording backend (`run:LatencyBackend`); "
                f"{bursts} bursts of {len(MODELS) * len(METRICS)} lines (one write per line) "
                "at random gaps of 5 ms to 1 s, default --poll-interval 0.5; "
                f"{follow['events']} of {follow['expected']} events arrived. "
                f"Idle CPU: user+system time over {idle:g} s without new lines."
            ),
            "Peak RSS: the real command (`tf-ship --no-follow --no-state` with four backends), "
            "polled every 50 ms"
            + (
                f"; it shipped the whole log to every backend in {rss['seconds']:.0f} s."
                if everything
                else f", stopped with SIGTERM after {rss_limit:g} s "
                f"(lines shipped by then: {shipped}): memory does not grow with the log, "
                "it holds at most one read block and one batch per backend."
            ),
            f"Whole benchmark: {time.monotonic() - began:.0f} s.",
        ]
    print()
    print(table.text())
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
