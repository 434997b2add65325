"""Which MLflow errors a retry cannot fix, and the one line that says what to do about each.

An outage (no answer, a timeout, a 5xx) is left to the engine's retries; a refusal is not:
docs/backends.md (MLflow, Errors) lists them.
"""

from __future__ import annotations

import urllib.parse
from importlib import metadata

from tf_ship.backends.base import FatalBackendError

SQLALCHEMY_FIXED_IN = "3.9"
"""The first mlflow whose SQL store imports with SQLAlchemy 2.1."""
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "pymssql": "pymssql",
    "pyodbc": "pyodbc",
}
"""Database drivers MLflow's SQL stores import, and the package that provides each."""
URI_OPTION = "--mlflow-tracking-uri (or $MLFLOW_TRACKING_URI)"
FATAL_ERROR_CODES = frozenset(
    {
        "RESOURCE_DOES_NOT_EXIST",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "UNAUTHORIZED",
        "CUSTOMER_UNAUTHORIZED",
    }
)
"""Refusals that concern the run itself, not one event: no event can be shipped."""
LOGIN_HINT = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
    "to an account of this server"
)


def installed_version(package: str) -> str:
    """The installed version of a distribution, or ``?``."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def http_status(error: Exception) -> int:
    """The HTTP status an MlflowException stands for (500 when it names none)."""
    get_status = getattr(error, "get_http_status_code", None)
    try:
        return int(get_status()) if get_status is not None else 500
    except (TypeError, ValueError):
        return 500


def is_refusal_status(status: int) -> bool:
    """True for an answer that will not change on retry: a 4xx other than 408 and 429."""
    return 400 <= status < 500 and status not in {408, 429}


def is_refusal(error: Exception) -> bool:
    """True when MLflow's answer to a call will not change on retry."""
    return is_refusal_status(http_status(error))


def is_fatal_refusal(error: Exception) -> bool:
    """True when the refusal concerns the run as a whole (gone, deleted, forbidden)."""
    code = getattr(error, "error_code", None)
    return code in FATAL_ERROR_CODES or "must be in the 'active' state" in str(error)


MAX_TEXT = 300
"""Characters of an error's text quoted at most (MLflow quotes whole HTML pages)."""


def first_line(error: BaseException) -> str:
    """The first line of an error's text, cut to `MAX_TEXT` (MLflow's run over many lines)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= MAX_TEXT else line[: MAX_TEXT - 3] + "..."


def check_tracking_uri(uri: str) -> None:
    """Raise `FatalBackendError` for a URI that cannot be parsed (MLflow would fail later)."""
    try:
        parts = urllib.parse.urlsplit(uri)
        served = parts.scheme in {"http", "https"}
        problem = "no host" if served and not parts.hostname else None
        if served:
            _ = parts.port  # raises for a port that is not a number from 0 to 65535
    except ValueError as error:
        problem = str(error)
    if problem is not None:
        raise FatalBackendError(malformed(uri, problem))


def malformed(uri: str, problem: str) -> str:
    """The line for a tracking URI that cannot be used as written."""
    return f"the MLflow tracking URI {uri} is malformed ({problem}): correct {URI_OPTION}"


def import_error(error: ImportError, uri: str) -> str:
    """What to install (or pin) when MLflow, or a module it needs for `uri`, does not import."""
    name = error.name or ""
    if name == "mlflow" or name.startswith("mlflow."):
        return f"the MLflow backend needs mlflow ({error}): pip install 'tf-ship[mlflow]'"
    if "FallbackAsyncAdaptedQueuePool" in str(error):
        mlflow_version = installed_version("mlflow")
        sqlalchemy_version = ".".join(installed_version("sqlalchemy").split(".")[:2])
        return (
            f"mlflow {mlflow_version} cannot import its SQL store with SQLAlchemy "
            f"{sqlalchemy_version}: pip install 'sqlalchemy<2.1' or 'mlflow>={SQLALCHEMY_FIXED_IN}'"
        )
    root = name.partition(".")[0]
    package = DRIVER_PACKAGES.get(root, root)
    if isinstance(error, ModuleNotFoundError) and package:
        return f"MLflow needs the module {name!r} for {uri}: pip install '{package}'"
    return f"MLflow cannot import what {uri} needs ({first_line(error)}): repair that install"


def refusal(error: Exception, status: int, uri: str, experiment: str) -> str:
    """The line for a 4xx answer to opening the run: a login, a permission, the URI itself."""
    text = first_line(error)
    if status == 401:
        return f"MLflow at {uri} refused the login (HTTP 401): {LOGIN_HINT}"
    if status == 403:
        return (
            f"MLflow at {uri} denied access to experiment {experiment!r} (HTTP 403: {text}): "
            "ask the server's administrator for permission, or choose another experiment "
            "with --mlflow-experiment"
        )
    if status == 404 and getattr(error, "error_code", None) == "ENDPOINT_NOT_FOUND":
        return (
            f"{uri} has no MLflow API (HTTP 404): give --mlflow-tracking-uri the address of an "
            "MLflow tracking server, with its path prefix if it has one"
        )
    if "unsupported URI" in text:
        return (
            f"MLflow does not know the tracking URI {uri}: use http(s)://host:port for a "
            f"tracking server or sqlite:///path/to/mlflow.db, through {URI_OPTION}"
        )
    return f"MLflow at {uri} refused to open the run: {text}"


def fatal_error(error: Exception, status: int, uri: str, experiment: str) -> str | None:
    """The line for an error of `open` that no retry can fix, or None to retry it.

    `status` is the HTTP status the error stands for (500 when it names none).
    """
    if isinstance(error, ImportError):
        return import_error(error, uri)
    if type(error).__name__ == "InvalidUrlException":  # requests could not build the URL
        return malformed(uri, first_line(error))
    if is_refusal_status(status):
        return refusal(error, status, uri, experiment)
    return None


def refused_run_hint(status: int) -> str:
    """What to do when the server refuses a call for the run while logging; "" for no advice."""
    if status == 401:
        return f"; {LOGIN_HINT}"
    if status == 403:
        return "; ask the server's administrator for permission on the experiment"
    return ""
