"""MLflow errors that no retry can fix stop the backend at once, with one line saying what to do.

Each case is a real failure where one can be had on every supported MLflow (a malformed or unknown
URI, a missing database driver, a server that refuses the login), and an injected one where it
depends on the installed versions (mlflow 3.0 to 3.8 with SQLAlchemy 2.1).
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import TF_SHIP, clean_env
from terminal import on_a_terminal

import tf_ship
from tf_ship.backends.base import FatalBackendError
from tf_ship.backends.mlflow import MlflowBackend
from tf_ship.backends.mlflow import errors as mlflow_errors
from tf_ship.shipper.events import RunInfo, RunStatus

pytest.importorskip("mlflow")

FAST = 10.0
"""Seconds within which an error that no retry fixes must end the backend (the budget is 600)."""
SQL_STORE_ERROR = ImportError(
    "cannot import name 'FallbackAsyncAdaptedQueuePool' from 'sqlalchemy.pool' "
    "(/site-packages/sqlalchemy/pool/__init__.py)",
    name="sqlalchemy.pool",
)
"""What mlflow 3.0 to 3.8 raise when their SQL store is imported with SQLAlchemy 2.1."""


def open_error(uri: str, tmp_path: Path) -> FatalBackendError:
    """The error `open` raises for a tracking URI; it must come within seconds."""
    backend = MlflowBackend(uri, "tf-ship-tests")
    started = time.monotonic()
    with pytest.raises(FatalBackendError) as caught:
        backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    assert time.monotonic() - started < FAST
    backend.close(RunStatus.FAILED)
    assert "\n" not in str(caught.value)
    return caught.value


def write_log(directory: Path) -> None:
    """A log of three metric lines."""
    lines = [f"TORCHFORT::WANDB: model: m, step: {step}, loss: 0.5\n" for step in range(3)]
    (directory / "torchfort.log").write_text("".join(lines), encoding="utf-8")


def test_sql_store_that_does_not_import_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow 3.0 to 3.8 with SQLAlchemy 2.1: one line naming both fixes, no 600 s of retries."""
    import mlflow  # noqa: PLC0415

    class BrokenStoreClient:
        def __init__(self, tracking_uri: str) -> None:
            self.tracking_uri = tracking_uri

        def get_run(self, *_: object) -> None:
            raise SQL_STORE_ERROR

        get_experiment_by_name = get_run

    versions = {"mlflow": "3.4.0", "sqlalchemy": "2.1.9"}
    monkeypatch.setattr(mlflow, "MlflowClient", BrokenStoreClient)
    monkeypatch.setattr(mlflow_errors, "installed_version", versions.__getitem__)
    write_log(tmp_path)
    backend = MlflowBackend(f"sqlite:///{tmp_path / 'mlflow.db'}", "tf-ship-tests")
    started = time.monotonic()
    report = tf_ship.ship(tmp_path, {"mlflow": backend}, follow=False)
    assert time.monotonic() - started < FAST
    stats = report.backends[0]
    assert stats.failed
    assert stats.retries == 0
    assert stats.error is not None
    assert stats.error.endswith(
        "mlflow 3.4.0 cannot import its SQL store with SQLAlchemy 2.1: "
        "pip install 'sqlalchemy<2.1' or 'mlflow>=3.9'"
    )


def test_mlflow_not_installed_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without mlflow the backend says which extra to install."""
    monkeypatch.setitem(sys.modules, "mlflow", None)
    error = open_error(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    assert str(error).startswith("the MLflow backend needs mlflow (")
    assert str(error).endswith("): pip install 'tf-ship[mlflow]'")


def test_missing_database_driver_names_its_package(tmp_path: Path) -> None:
    """A MySQL URI without the MySQL driver: the package to install, at once."""
    error = open_error("mysql://user@127.0.0.1:9/db", tmp_path)
    assert str(error) == (
        "MLflow needs the module 'MySQLdb' for mysql://user@127.0.0.1:9/db: "
        "pip install 'mysqlclient'"
    )


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://127.0.0.1:99999", "Port out of range 0-65535"),
        ("http://127.0.0.1:80x", "Port could not be cast to integer value as '80x'"),
        ("http:///api", "no host"),
        ("https://exa mple.com", "Invalid url: https://exa mple.com/api/2.0/mlflow/"),
    ],
)
def test_malformed_uri_fails_at_once(uri: str, problem: str, tmp_path: Path) -> None:
    """A URI that cannot be parsed or sent to: say so and name the option."""
    error = open_error(uri, tmp_path)
    assert str(error).startswith(f"the MLflow tracking URI {uri} is malformed ({problem}")
    assert str(error).endswith("): correct --mlflow-tracking-uri (or $MLFLOW_TRACKING_URI)")


def test_unknown_uri_scheme_fails_at_once(tmp_path: Path) -> None:
    """A scheme MLflow has no store for: the two kinds of URI that work."""
    error = open_error("foo://x", tmp_path)
    assert str(error) == (
        "MLflow does not know the tracking URI foo://x: use http(s)://host:port for a tracking "
        "server or sqlite:///path/to/mlflow.db, through --mlflow-tracking-uri "
        "(or $MLFLOW_TRACKING_URI)"
    )


@pytest.fixture
def refusing_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """A loopback HTTP server answering every request with the status and body of the param.

    What a reverse proxy with a login (401, an HTML page) or MLflow's own authentication
    (403, a JSON error) answer.
    """
    status, body, kind = request.param

    class Refuse(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer  # noqa: N815 - the names http.server calls

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


LOGIN_PAGE = (401, b"<html><body>401 Authorization Required</body></html>", "text/html")
NOT_MLFLOW = (404, b"<html><body>" + b"Not Found. " * 200 + b"</body></html>", "text/html")
DENIED = (
    403,
    json.dumps({"error_code": "PERMISSION_DENIED", "message": "Permission denied"}).encode(),
    "application/json",
)


@pytest.mark.parametrize("refusing_server", [LOGIN_PAGE], indirect=True)
def test_refused_login_fails_at_once(refusing_server: str, tmp_path: Path) -> None:
    """401: the variables that carry a login."""
    error = open_error(refusing_server, tmp_path)
    assert str(error) == (
        f"MLflow at {refusing_server} refused the login (HTTP 401): set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an "
        "account of this server"
    )


@pytest.mark.parametrize("refusing_server", [NOT_MLFLOW], indirect=True)
def test_a_server_that_is_not_mlflow_fails_at_once(refusing_server: str, tmp_path: Path) -> None:
    """404 for MLflow's API (another web server, a missing path prefix): say so, briefly."""
    error = open_error(refusing_server, tmp_path)
    assert str(error) == (
        f"{refusing_server} has no MLflow API (HTTP 404): give --mlflow-tracking-uri the address "
        "of an MLflow tracking server, with its path prefix if it has one"
    )


@pytest.mark.parametrize("refusing_server", [DENIED], indirect=True)
def test_refused_permission_fails_at_once(refusing_server: str, tmp_path: Path) -> None:
    """403: whom to ask, or which option chooses another experiment."""
    error = open_error(refusing_server, tmp_path)
    assert str(error) == (
        f"MLflow at {refusing_server} denied access to experiment 'tf-ship-tests' (HTTP 403: "
        "PERMISSION_DENIED: Permission denied): ask the server's administrator for permission, "
        "or choose another experiment with --mlflow-experiment"
    )


@pytest.mark.parametrize("refusing_server", [LOGIN_PAGE], indirect=True)
def test_command_ends_at_once_with_the_reason(refusing_server: str, tmp_path: Path) -> None:
    """In a terminal, ``tf-ship`` exits 1 within seconds and prints the line, without retrying."""
    write_log(tmp_path)
    command = [
        *TF_SHIP,
        "--logdir",
        str(tmp_path),
        "--no-follow",
        "--backend",
        "mlflow",
        "--mlflow-tracking-uri",
        refusing_server,
        "--no-state",
    ]
    started = time.monotonic()
    result = subprocess.run(
        on_a_terminal(command),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert time.monotonic() - started < 60  # the interpreter and mlflow's import included
    assert result.returncode == 1, result.stdout
    assert "refused the login (HTTP 401): set MLFLOW_TRACKING_USERNAME" in result.stdout
    assert "retry" not in result.stdout


def test_login_refused_while_logging_fails_with_the_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A login that stops working mid-run (an expired token): fatal, with what to set."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415
    from mlflow.protos.databricks_pb2 import UNAUTHENTICATED  # noqa: PLC0415

    from tf_ship.shipper.events import MetricEvent  # noqa: PLC0415

    backend = MlflowBackend(f"sqlite:///{tmp_path / 'mlflow.db'}", "tf-ship-tests")
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    refused = MlflowException(
        "API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 401 != 200."
        " Response body: '<html>\n<body>401</body></html>'",
        error_code=UNAUTHENTICATED,
    )

    def expired(*_: object) -> None:
        raise refused

    monkeypatch.setattr(backend, "_log_batch", expired)
    with pytest.raises(FatalBackendError) as caught:
        backend.log_metrics([MetricEvent("m", "loss", 1, 0.5)])
    backend.close(RunStatus.FAILED)
    assert str(caught.value) == (
        f"MLflow refused 1 metrics for run {backend.run_id}: API request to endpoint "
        "/api/2.0/mlflow/runs/log-batch failed with error code 401 != 200. Response body: "
        "'<html>; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
        "MLFLOW_TRACKING_TOKEN) to an account of this server"
    )
