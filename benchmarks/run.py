"""tf-ship against hand-written baselines, side by side, in one run.

    python benchmarks/run.py                 # the full run (40,000-line log, 2M-line log)
    python benchmarks/run.py --quick         # a smaller run, under 3 minutes
    python benchmarks/run.py --markdown table.md

Everything happens in a temporary directory: the logs are generated, MLflow servers are started
the way the tests start theirs (tests/mlflow_server.py; a SQLite store, and a PostgreSQL store
when ``initdb``, ``pg_ctl`` and psycopg2 are there) on free loopback ports and stopped at the
end, wandb runs offline against a closed loopback address, so nothing leaves the machine.

tf-ship is measured the way users run it: ``python -m tf_ship --logdir D --no-follow -b X``,
state file on, as a whole process, against each baseline as a whole process too (a fresh
interpreter running a small hand-written loop below: ``run.py --child NAME``); next to it the
same command with ``--no-state`` and the Python API (``tf_ship.ship(..., follow=False)``, timed
in-process like the loops). Every pair runs in mirrored order (A B B A) and each figure is a
ratio within the run: this machine's speed drifts by tens of percent between minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
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
MLFLOW_BATCH = 1000
SERVER_DEADLINE = 180.0
LATENCY_ENV = "TF_SHIP_BENCH_LATENCY_OUT"
HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
"""Where `mlflow_server` lives: the benchmark starts its servers as the tests do."""


def _servers() -> Any:  # noqa: ANN401 - the tests' module
    """tests/mlflow_server.py, imported in the measuring process only (it imports pytest)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import mlflow_server  # noqa: PLC0415

    return mlflow_server


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


def child_naive_finditer(options: dict[str, Any]) -> dict[str, Any]:
    """The naive loop: one ``re.finditer`` over the whole file, ``int()`` and ``float()`` each."""
    watch = Stopwatch()
    data = Path(options["log"]).read_bytes()
    count = 0
    for match in MULTILINE.finditer(data):
        int(match[2])
        float(match[4])
        count += 1
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


def child_wandb_packed(options: dict[str, Any]) -> dict[str, Any]:
    """The packed-rows loop: one wandb.log per step across models, no ``step=``."""
    import wandb  # noqa: F401, PLC0415

    watch = Stopwatch()
    run = _wandb_init(options)
    count = 0
    models: set[str] = set()
    row: dict[str, Any] = {}
    current: int | None = None
    for model, step, metric, value in parsed_lines(Path(options["log"])):
        if step != current:
            if row:
                run.log(row)
            current, row = step, {}
        if model not in models:
            models.add(model)
            run.define_metric(f"{model}/step")
            run.define_metric(f"{model}/*", step_metric=f"{model}/step")
        row[f"{model}/step"] = step
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
    "wandb_per_line": child_wandb_per_line,
    "wandb_packed": child_wandb_packed,
    "naive_finditer": child_naive_finditer,
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
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=directory, capture_output=True, text=True, timeout=900, check=False
    )
    process_seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    process_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0 or not result.exists():
        msg = f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        raise RuntimeError(msg)
    measured: dict[str, Any] = json.loads(result.read_text())
    return {**measured, "process_seconds": process_seconds, "process_cpu": process_cpu}


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


# -- the tracking servers ----------------------------------------------------------------------


@contextlib.contextmanager
def mlflow_server(
    store: Path, backend_store_uri: str | None = None
) -> Iterator[tuple[str, int, Callable[[], None]]]:
    """``mlflow server`` (SQLite store unless `backend_store_uri`), started as the tests start it.

    Yields the URI, its session id (for its CPU time) and a function that waits until it is
    healthy (so that two servers start at once); stops its process group at the end.
    """
    servers = _servers()
    store.mkdir(parents=True, exist_ok=True)
    uri = f"http://127.0.0.1:{(port := servers.free_port())}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    output = store / "server.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            servers.server_command(store, port, backend_store_uri),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=store,
            env=env,
            start_new_session=True,
        )
    try:
        yield uri, process.pid, lambda: servers.wait_until_healthy(process, uri, output)
    finally:
        servers.stop(process)


def postgres_unavailable() -> str | None:
    """Why a PostgreSQL store cannot be measured here, or None when it can."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    probe = [sys.executable, "-c", "import psycopg2"]
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root, and runuser (to start PostgreSQL as nobody) is missing"
    return None


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster in a temporary directory on a free loopback port.

    Yields its URI. As root, the cluster runs as ``nobody`` (PostgreSQL refuses root). Stopped
    at the end by the PID in its ``postmaster.pid`` (fast shutdown, then SIGKILL).
    """
    with (
        tempfile.TemporaryDirectory(prefix="tf-ship-bench-pg-") as temp,
        _postgres_in(Path(temp)) as uri,
    ):
        yield uri


@contextlib.contextmanager
def _postgres_in(base: Path) -> Iterator[str]:
    data = base / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    port = _servers().free_port()
    initdb = [*as_user, "initdb", "-D", str(data), "-U", "postgres", "-A", "trust"]
    subprocess.run(initdb, capture_output=True, check=True, timeout=120)
    server_options = f"-p {port} -h 127.0.0.1 -k {base}"
    start = [*as_user, "pg_ctl", "-D", str(data), "-l", str(base / "server.log"), "-w"]
    subprocess.run([*start, "-o", server_options, "start"], capture_output=True, check=True,
                   timeout=120)  # fmt: skip
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        # psycopg2 named: SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        for sig, grace in ((signal.SIGINT, 20.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)


# -- the real command -------------------------------------------------------------------------


def tf_ship_command() -> list[str]:
    """The installed ``tf-ship`` script beside this interpreter, else ``python -m tf_ship``."""
    script = Path(sys.executable).parent / "tf-ship"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tf_ship"]


SHIPPED = re.compile(r"backend (\S+): \w+, (\d+) events")
"""A backend's line in the command's summary: its name, status and events delivered."""


def tracker_options(backends: Sequence[str], out: Path, uri: str | None) -> list[str]:
    """The command-line options of `backends`, with their outputs under `out`."""
    options = [part for name in backends for part in ("-b", name)]
    if "tensorboard" in backends:
        options += ["--tensorboard-dir", str(out / "tb")]
    if "wandb" in backends:
        options += ["--wandb-dir", str(out), "--wandb-mode", "offline"]
        options += ["--wandb-project", "tf-ship-bench"]
    if "mlflow" in backends and uri is not None:
        options += ["--mlflow-tracking-uri", uri, "--mlflow-experiment", "tf-ship-command"]
    return options


def run_command(arguments: Sequence[str], out: Path) -> dict[str, Any]:
    """Run ``python -m tf_ship ARGUMENTS`` as a user would; its wall and CPU time, what it shipped.

    CPU: this process's reaped children over the run (the command and wandb's service).
    """
    out.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tf_ship", *arguments],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        msg = f"tf-ship {' '.join(arguments)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        raise RuntimeError(msg)
    shipped: dict[str, int] = {}
    for name, count in SHIPPED.findall(done.stderr):
        shipped[name] = shipped.get(name, 0) + int(count)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    delivered = sum(int(n) for n in re.findall(r"delivered (\d+) events", done.stderr))
    return {
        "seconds": seconds,
        "process_seconds": seconds,
        "cpu": cpu,
        "process_cpu": cpu,
        "events": shipped,
        "delivered": delivered,
    }


def fresh_logdir(log: Path, workdir: Path) -> Path:
    """A new log directory holding `log` (a hard link): no state file, no lock, no outputs."""
    directory = workdir / f"cmd-{time.monotonic_ns()}"
    directory.mkdir(parents=True)
    os.link(log, directory / log.name)
    return directory


def write_sweep(root: Path, logs: int, lines: int) -> list[Path]:
    """`logs` log directories of `lines` lines each under `root` (a sweep's layout)."""
    directories = []
    for index in range(logs):
        directory = root / f"trial-{index:03d}"
        write_log(directory / "torchfort.log", lines, seed=100 + index)
        directories.append(directory)
    return directories


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
    for field in ("seconds", "process_seconds", "cpu", "process_cpu", "server_cpu"):
        merged[field] = statistics.fmean(float(result.get(field, 0.0)) for result in results)
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
    if not result.get("ok", True) or shipped != {lines}:
        msg = f"tf-ship ({name}) did not ship all {lines} lines: {result}"
        raise RuntimeError(msg)


def side_by_side(
    *measure: Callable[[], dict[str, Any]], rounds: int = 1, mirrored: bool = True
) -> list[dict[str, Any]]:
    """Each measurement in mirrored order (A B B A), `rounds` times; the mean counts.

    Not `mirrored`: each once (A B), for a quick look.

    The machine's speed drifts between runs, and an MLflow store grows with every run: the mean
    of mirrored runs cancels a steady drift (the faster of two would favour whatever ran first).
    Quick figures take more rounds: a second of noise weighs more on them.
    """
    runs: list[list[dict[str, Any]]] = [[] for _ in measure]
    for _ in range(rounds):
        for index, run in enumerate(measure):
            runs[index].append(run())
        for index in reversed(range(len(measure)) if mirrored else ()):
            runs[index].append(measure[index]())
    return [mean_of(*results) for results in runs]


def within_row(
    table: Table, figure: str, baseline: dict[str, Any], ours: dict[str, Any], limit: float
) -> None:
    """A row "tf-ship's whole process takes at most `limit` x the baseline's"."""
    ratio = ours["process_seconds"] / baseline["process_seconds"]
    table.add(
        figure,
        f"{baseline['process_seconds']:.2f} s",
        f"{ours['process_seconds']:.2f} s",
        f"{ratio:.2f}x the time",
        f"<= {limit:g}x",
        met=ratio <= limit,
    )


class Bench:
    """One run of the benchmark: its logs, servers, table and options."""

    def __init__(self, work: Path, table: Table, args: argparse.Namespace) -> None:
        self.work = work
        self.table = table
        self.quick = bool(args.quick)
        self.rounds = 1 if self.quick else 2
        """Mirrored rounds of the figures whose targets are tight (engine, TensorBoard, wandb)."""
        self.log = work / "tracker-log" / "torchfort.log"
        self.big = work / "big-log" / "torchfort.log"
        self.lines = write_log(self.log, args.lines or (10_000 if self.quick else 40_000))
        self.big_lines = write_log(
            self.big, args.big_lines or (400_000 if self.quick else 2_000_000), seed=2
        )
        if self.quick:  # TensorBoard's state figure on an eighth of the big log
            self.mid = work / "mid-log" / "torchfort.log"
            self.mid_lines = write_log(self.mid, self.big_lines // 8, seed=3)
        else:
            self.mid, self.mid_lines = self.big, self.big_lines
        self.uri = ""
        self.session = 0
        self.alone: dict[str, dict[str, Any]] = {}

    def child(self, name: str, path: Path | None = None, **options: Any) -> dict[str, Any]:  # noqa: ANN401
        """A measurement in a fresh interpreter, with the MLflow server's CPU over it."""
        server_before = session_cpu_seconds(self.session) if self.session else 0.0
        log = path or self.log
        measured = run_child(name, self.work, log=str(log), uri=self.uri, **options)
        after = session_cpu_seconds(self.session) if self.session else 0.0
        measured["server_cpu"] = after - server_before
        return measured

    def api(self, *backends: str, path: Path | None = None) -> dict[str, Any]:
        """tf_ship.ship(follow=False) without a state file, in a fresh interpreter."""
        result = self.child("tf_ship", path, backends=list(backends))
        check_delivery("+".join(backends), result, self.big_lines if path else self.lines)
        return result

    def command(
        self, *backends: str, path: Path | None = None, state: bool = True
    ) -> dict[str, Any]:
        """The default command as users type it (``--no-state`` if not `state`)."""
        log = path or self.log
        logdir = fresh_logdir(log, self.work)
        arguments = ["--logdir", str(logdir), "--no-follow"]
        arguments += tracker_options(backends, logdir / "out", self.uri)
        if not state:
            arguments.append("--no-state")
        server_before = session_cpu_seconds(self.session) if self.session else 0.0
        result = run_command(arguments, logdir / "out")
        after = session_cpu_seconds(self.session) if self.session else 0.0
        result["server_cpu"] = after - server_before
        result["count"] = self._lines_of(log)
        check_delivery("+".join(backends) + " command", result, result["count"])
        return result

    def _lines_of(self, log: Path) -> int:
        if log == self.big:
            return self.big_lines
        return self.mid_lines if log == self.mid else self.lines

    # -- the sections ---------------------------------------------------------------------------

    def wandb(self) -> None:
        """Wandb offline: the command, --no-state and the API against the packed-rows loop."""
        if self.quick:
            packed, command = side_by_side(
                lambda: self.child("wandb_packed"), lambda: self.command("wandb")
            )
        else:
            packed, command, api = side_by_side(
                lambda: self.child("wandb_packed"),
                lambda: self.command("wandb"),
                lambda: self.api("wandb"),
                rounds=self.rounds,
            )
            speedup_row(self.table, "wandb: Python API vs packed-rows loop (in-process)",
                        packed, api, minimum=None, target="-")  # fmt: skip
        within_row(self.table, "wandb: command vs packed-rows loop", packed, command, 1.15)
        if not self.quick:
            per_line = self.child("wandb_per_line")
            within_row(self.table, "wandb: command vs per-line daemon (one wandb.log per line)",
                       per_line, command, 1.0)  # fmt: skip
        self.alone["wandb"] = command

    def mlflow(self, store: str) -> None:
        """MLflow against the running server: the command and the API against log_batch."""
        if self.quick:
            log_batch, command = side_by_side(
                lambda: self.child("mlflow_log_batch"), lambda: self.command("mlflow")
            )
        else:
            log_batch, command, api = side_by_side(
                lambda: self.child("mlflow_log_batch"),
                lambda: self.command("mlflow"),
                lambda: self.api("mlflow"),
            )
            speedup_row(self.table, f"MLflow server ({store}): Python API vs log_batch "
                        "(in-process)", log_batch, api, minimum=None, target="-")  # fmt: skip
        within_row(self.table, f"MLflow server ({store}): command vs log_batch loop of 1000",
                   log_batch, command, 1.15)  # fmt: skip
        self.table.notes.append(
            f"MLflow server ({store}) CPU: {command['server_cpu']:.1f} s for the command's "
            f"{self.lines:,} metrics, {log_batch['server_cpu']:.1f} s for the log_batch loop's."
        )
        if store == "SQLite":
            self.alone["mlflow"] = command

    def tensorboard(self) -> None:
        """TensorBoard: the command and --no-state against the add_scalar loop."""
        add_scalar, command, no_state = side_by_side(
            lambda: self.child("tensorboard_add_scalar"),
            lambda: self.command("tensorboard"),
            lambda: self.command("tensorboard", state=False),
            rounds=self.rounds,
        )
        within_row(self.table, "TensorBoard: command vs add_scalar loop", add_scalar, command, 1.0)
        within_row(self.table, "TensorBoard: command vs --no-state", no_state, command, 1.1)
        self.alone["tensorboard"] = command
        big, big_no_state = side_by_side(
            lambda: self.command("tensorboard", path=self.mid),
            lambda: self.command("tensorboard", path=self.mid, state=False),
        )
        within_row(self.table, f"TensorBoard, {self.mid_lines:,} lines: command vs --no-state",
                   big_no_state, big, 1.1)  # fmt: skip

    def engine(self) -> None:
        """The null backend on the big log: the command, --no-state, the API, the naive loop."""
        big = self.big
        figures = [
            lambda: self.child("naive_finditer", big),
            lambda: self.command("null", path=big),
            lambda: self.command("null", path=big, state=False),
        ]
        if not self.quick:  # the in-process figure has no target: the full run only
            figures.append(lambda: self.api("null", path=big))
        naive, command, no_state, *api = side_by_side(*figures, rounds=self.rounds)
        ratio = naive["process_seconds"] / command["process_seconds"]
        self.table.add(
            f"engine, null backend, {self.big_lines:,} lines: command vs naive finditer loop",
            speed_of(naive),
            speed_of(command),
            f"{ratio:.2f}x its speed",
            ">= 0.6x",
            met=ratio >= 0.6,
        )
        within_row(self.table, "engine, null backend: command vs --no-state", no_state, command,
                   1.1)  # fmt: skip
        self.table.notes.append(
            f"Engine, CPU time (user + system) of the whole process: naive loop "
            f"{naive['process_cpu']:.2f} s, command {command['process_cpu']:.2f} s "
            f"({naive['process_cpu'] / command['process_cpu']:.2f}x its speed), --no-state "
            f"{no_state['process_cpu']:.2f} s."
        )
        if api:
            speedup_row(self.table, "engine: Python API (no state) vs naive loop, in-process",
                        naive, api[0], minimum=None, target="-")  # fmt: skip

    def fan_out(self) -> None:
        """All three trackers at once against the slowest alone, side by side (commands, state on).

        The SDKs import one at a time in ``--backend`` order, and docs/torchfort-tutorial.md
        suggests naming the slowest tracker first: the full run measures that order and the one
        of the tracker sections (wandb, mlflow, tensorboard); a quick run the first only, once.
        """
        slowest = max(self.alone, key=lambda name: self.alone[name]["process_seconds"])
        listed = ("wandb", "mlflow", "tensorboard")
        first = (slowest, *(name for name in listed if name != slowest))
        orders = [first] if self.quick else [first, listed]
        alone, *fanned = side_by_side(
            lambda: self.command(slowest),
            *(lambda order=order: self.command(*order) for order in orders),
            rounds=1,
            mirrored=not self.quick,
        )
        for order, fan_out in zip(orders, fanned, strict=True):
            ratio = fan_out["process_seconds"] / alone["process_seconds"]
            self.table.add(
                f"fan-out: command with -b {' -b '.join(order)} vs {slowest} alone",
                f"{slowest} alone {alone['process_seconds']:.2f} s",
                f"all three {fan_out['process_seconds']:.2f} s",
                f"{ratio:.2f}x",
                "<= 1.2x",
                met=ratio <= 1.2,
            )
        cores = os.cpu_count() or 1
        needed = sum(cpu_demand(result) for result in self.alone.values())
        self.table.notes.append(
            "CPU used (user + system: the command with wandb's service, plus the MLflow server): "
            + ", ".join(f"{name} alone {cpu_demand(r):.1f} s" for name, r in self.alone.items())
            + f", all three at once {cpu_demand(fanned[0]):.1f} s. On {cores} cores the three "
            f"cannot finish in less than {needed:.1f} s / {cores} = {needed / cores:.1f} s."
        )

    def sweep(self, logs: int, lines: int, trackers: Sequence[str]) -> None:
        """``tf-ship watch ROOT --no-follow`` against the sum of one command per log."""
        for tracker in trackers:

            def watch(tracker: str = tracker) -> dict[str, Any]:
                root = self.work / f"sweep-{time.monotonic_ns()}"
                write_sweep(root, logs, lines)
                arguments = ["watch", str(root), "--no-follow"]
                result = run_command(arguments + tracker_options([tracker], root / "out", self.uri),
                                     root / "out")  # fmt: skip
                if result["delivered"] != logs * lines:
                    msg = f"watch delivered {result['delivered']}, not {logs * lines} events"
                    raise RuntimeError(msg)
                return result

            def singles(tracker: str = tracker) -> dict[str, Any]:
                root = self.work / f"sweep-{time.monotonic_ns()}"
                results = []
                for directory in write_sweep(root, logs, lines):
                    arguments = ["--logdir", str(directory), "--no-follow"]
                    arguments += tracker_options([tracker], directory / "out", self.uri)
                    results.append(run_command(arguments, directory / "out"))
                    check_delivery(f"{tracker} single", results[-1], lines)
                total = sum(r["process_seconds"] for r in results)
                return {"seconds": total, "process_seconds": total, "cpu": 0.0, "server_cpu": 0.0}

            watched, single = side_by_side(watch, singles)
            within_row(self.table, f"sweep, {tracker}: watch of {logs} logs x {lines:,} lines vs "
                       "the sum of single commands", single, watched, 1.2)  # fmt: skip


def speed_of(result: dict[str, Any]) -> str:
    """A whole-process throughput cell: lines per second and the process's time."""
    seconds = float(result["process_seconds"])
    return f"{float(result['count']) / seconds:,.0f} lines/s ({seconds:.2f} s)"


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0915 - one section per figure
    """Build the logs, start the servers, measure everything, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under 3 minutes")
    parser.add_argument("--lines", type=int, help="lines of the tracker log [40000; quick 10000]")
    parser.add_argument(
        "--big-lines", type=int, help="lines of the engine/RSS log [2000000; quick 400000]"
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
    bursts = 6 if args.quick else 40
    idle = 2.0 if args.quick else 5.0
    rss_limit = 4.0 if args.quick else 60.0
    # wandb offline, silent, and pointed at a closed loopback port should it ever try to talk.
    os.environ.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_BASE_URL=f"http://127.0.0.1:{_servers().free_port()}",
        WANDB_DISABLE_GIT="true",
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    began = time.monotonic()
    table = Table()
    with tempfile.TemporaryDirectory(prefix="tf-ship-bench-") as temp:
        work = Path(temp)
        bench = Bench(work, table, args)
        print(f"logs: {bench.lines:,} and {bench.big_lines:,} lines", flush=True)
        bench.engine()
        if not args.quick:
            bench.tensorboard()
            bench.wandb()
        reason = postgres_unavailable()
        with contextlib.ExitStack() as servers:  # both servers start at once
            uri, session, ready = servers.enter_context(mlflow_server(work / "mlflow"))
            with_postgres = None
            if reason is None:
                store = servers.enter_context(postgres())
                with_postgres = servers.enter_context(mlflow_server(work / "mlflow-pg", store))
            if args.quick:  # the servers start while these run (in the full run, before none)
                bench.tensorboard()
                bench.wandb()
            ready()
            print(f"MLflow server (SQLite) ready ({time.monotonic() - began:.0f} s)", flush=True)
            bench.uri, bench.session = uri, session
            bench.mlflow("SQLite")
            bench.fan_out()
            bench.sweep(4 if args.quick else 60, 1000, ["tensorboard"]
                        if args.quick else ["null", "tensorboard", "wandb", "mlflow"])  # fmt: skip
            rss = measure_rss(bench.big, work, uri, rss_limit)
            if with_postgres is not None:
                uri, session, ready = with_postgres
                ready()
                print(f"MLflow server (PostgreSQL) ready ({time.monotonic() - began:.0f} s)")
                bench.uri, bench.session = uri, session
                bench.mlflow("PostgreSQL")
            else:
                print(f"MLflow with a PostgreSQL store: skipped, {reason}", flush=True)
                table.notes.append(f"MLflow with a PostgreSQL store: not measured ({reason}).")
        the_command(table, work, bench, rss, bursts=bursts, idle=idle, quick=args.quick)
        table.notes.append(f"Whole benchmark: {time.monotonic() - began:.0f} s.")
    print()
    print(table.text())
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table.markdown())
    print(f"\nbenchmark wall time: {time.monotonic() - began:.0f} s")
    return 0


def the_command(  # noqa: PLR0913 - the figures of the real command
    table: Table,
    work: Path,
    bench: Bench,
    rss: dict[str, Any],
    *,
    bursts: int,
    idle: float,
    quick: bool,
) -> None:
    """Rows and notes kept from before: follow latency, idle CPU, --help, peak RSS."""
    follow = measure_follow(work, bursts, idle)
    median, p99 = follow["median"], follow["p99"]
    table.add("follow latency, median", "-", f"{median * 1000:.0f} ms", "-", "< 250 ms",
              met=median < 0.25)  # fmt: skip
    table.add("follow latency, p99", "-", f"{p99 * 1000:.0f} ms", "-", "< 1 s",
              met=p99 < 1.0)  # fmt: skip
    busy = follow["idle_cpu"]
    table.add(f"idle CPU in follow mode ({idle:g} s)", "-", f"{busy:.2%} of a core", "-",
              "< 1% of a core", met=busy < 0.01)  # fmt: skip
    help_time = measure_help(3 if quick else 5)
    table.add("tf-ship --help start-up (median)", "-", f"{help_time:.3f} s", "-", "< 0.3 s",
              met=help_time < 0.3)  # fmt: skip
    table.add(
        f"peak RSS, {bench.big_lines:,}-line log to null+tensorboard+wandb+mlflow",
        "-",
        f"{rss['peak'] / 2**20:.0f} MB",
        "-",
        "< 250 MB",
        met=rss["peak"] < 250 * 2**20,
    )
    shipped = ", ".join(f"{name} {count:,}" for name, count in rss["shipped"].items())
    table.notes += [
        (
            f"Logs: {bench.lines:,} lines for the trackers, {bench.big_lines:,} for the engine "
            f'and RSS ({len(MODELS)} models x {len(METRICS)} metrics per step). "command": '
            "`python -m tf_ship --logdir D --no-follow -b X` in a fresh directory holding the "
            "log (state file on), timed as a whole process, as are the baselines (each a fresh "
            'interpreter running the loop in benchmarks/run.py); "Python API": '
            "`tf_ship.ship(..., follow=False)` without a state file, timed in-process from "
            "opening the run to closing it, like the loop it is compared with. Every group is "
            "measured in mirrored order (A B B A) and the mean of the runs counts; in a quick "
            "run the MLflow servers start while the TensorBoard and wandb figures run."
        ),
        (
            "Follow mode: the real command with a recording backend (`run:LatencyBackend`); "
            f"{bursts} bursts of {len(MODELS) * len(METRICS)} lines at random gaps of 5 ms to "
            f"1 s, default --poll-interval 0.5; {follow['events']} of {follow['expected']} "
            f"events arrived. Idle CPU: user+system time over {idle:g} s without new lines."
        ),
        (
            "Peak RSS: `tf-ship --no-follow --no-state` with four backends, polled every 50 ms, "
            f"stopped after at most {rss['seconds']:.0f} s (shipped by then: {shipped})."
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
