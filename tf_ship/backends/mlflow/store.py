"""Where a tracking URI keeps the run: a tracking server, or a SQLite file made absolute.

A SQLite file on a network filesystem is reported: docs/hpc.md (MLflow on compute nodes).
"""

from __future__ import annotations

import os
from pathlib import Path

from tf_ship.shipper.filesystems import warn_if_network_filesystem

SQLITE_ADVICE = (
    "SQLite can lock up or corrupt its file there; use a tracking server "
    "(--mlflow-tracking-uri http://HOST:PORT) or a file on node-local scratch "
    "(--mlflow-tracking-uri sqlite:////tmp/mlflow.db)"
)


def is_served(uri: str) -> bool:
    """True for a tracking server over HTTP (not a local store)."""
    return uri.startswith(("http://", "https://"))


def sqlite_file(uri: str) -> str | None:
    """The database file of a ``sqlite:///`` URI (relative to the working directory), or None."""
    scheme, separator, rest = uri.partition("://")
    if not separator or scheme.partition("+")[0] != "sqlite" or not rest.startswith("/"):
        return None
    file = rest[1:].partition("?")[0]
    return None if file in {"", ":memory:"} else file


def absolute_store(uri: str) -> str:
    """The URI with a relative SQLite file made absolute, so it works from any folder."""
    file = sqlite_file(uri)
    if file is None:
        return uri
    scheme = uri.partition("://")[0]
    query = uri.partition("?")[2]
    return f"{scheme}:///{Path(file).absolute()}" + (f"?{query}" if query else "")


def warn_if_sqlite_on_network_filesystem(uri: str) -> None:
    """Say once when a SQLite store tf-ship writes lives on NFS, Lustre, GPFS and the like."""
    file = sqlite_file(uri)
    if file is not None:
        warn_if_network_filesystem(os.path.abspath(file), "MLflow's SQLite store", SQLITE_ADVICE)  # noqa: PTH100
