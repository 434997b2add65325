"""A real MLflow tracking server for the tests, started once per session.

Registered as a pytest plugin by ``tests/conftest.py``. The server keeps its SQLite store and its
artifacts in a temporary directory, listens on a free loopback port, and is stopped (its whole
process group) when the session ends.

`run_artifacts` reads a run's artifacts back without MLflow's client (whose artifact calls
depend on the version: before 3.7 they resolve ``mlflow-artifacts:`` against the global tracking
URI): over the server's artifact API, or from the local directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

STARTUP_DEADLINE = 120.0
"""Seconds the server may take to answer /health (it usually needs about 15)."""
STOP_GRACE = 10.0


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(store: Path, port: int, backend_store_uri: str | None = None) -> list[str]:
    """The command line of a server with its artifacts (and its SQLite store) under `store`.

    `backend_store_uri` replaces the SQLite store (a PostgreSQL URI, for instance).
    """
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def is_healthy(uri: str) -> bool:
    """True when the server answers ``GET /health`` with 200."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:  # noqa: S310 - http on loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_until_healthy(process: subprocess.Popen[bytes], uri: str, output: Path) -> None:
    """Poll /health until it answers; fail early if the server exits or the deadline passes."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    interval = 0.1
    while not is_healthy(uri):
        if process.poll() is not None:
            log = output.read_text(errors="replace")[-4000:]
            pytest.fail(f"mlflow server exited with {process.returncode}:\n{log}")
        if time.monotonic() >= deadline:
            log = output.read_text(errors="replace")[-4000:]
            pytest.fail(f"mlflow server not healthy within {STARTUP_DEADLINE:g} s:\n{log}")
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the server's process group, wait, and kill it if it does not go."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_GRACE)
    # Workers left behind by a server that exited first still belong to the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


ARTIFACT_API = "/api/2.0/mlflow-artifacts/artifacts"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - http on loopback
        return bytes(response.read())


def run_artifacts(tracking_uri: str, artifact_uri: str, folder: str) -> dict[str, str]:
    """The text of each file in a run's artifact `folder`, by name."""
    if artifact_uri.startswith("mlflow-artifacts:"):
        base = urllib.parse.urlsplit(artifact_uri).path.strip("/")
        where = f"{base}/{folder}"
        query = urllib.parse.urlencode({"path": where})
        listing = json.loads(_get(f"{tracking_uri}{ARTIFACT_API}?{query}"))
        names = [entry["path"] for entry in listing.get("files", []) if not entry["is_dir"]]
        return {
            name: _get(f"{tracking_uri}{ARTIFACT_API}/{where}/{name}").decode() for name in names
        }
    directory = Path(urllib.parse.unquote(urllib.parse.urlsplit(artifact_uri).path)) / folder
    if not directory.is_dir():
        return {}
    return {path.name: path.read_text(encoding="utf-8") for path in directory.iterdir()}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``mlflow server`` on a free loopback port; yield its URI; stop it at the end."""
    store = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    output = store / "server.log"
    # Background jobs (trace rollups and the like) are not needed: fewer processes, quicker start.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with output.open("wb") as sink:
        process = subprocess.Popen(
            server_command(store, port),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=store,
            env=env,
            start_new_session=True,
        )
    try:
        wait_until_healthy(process, uri, output)
        yield uri
    finally:
        stop(process)
