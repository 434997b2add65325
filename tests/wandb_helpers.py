"""Helpers for the wandb backend's tests: an offline wandb, TorchFort logs, and reading back.

Every run is an offline run (nothing leaves the machine) whose transaction log the tests read
with `tf_ship.backends.wandb.transaction_log`.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

import tf_ship
from tf_ship.backends.wandb import WandbBackend
from tf_ship.backends.wandb.transaction_log import history_rows, transaction_logs

WANDB_OWN_KEYS = frozenset({"_step", "_runtime", "_timestamp"})
PROJECT = "tf-ship-tests"
UNSET = (
    "WANDB_API_KEY",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "WANDB_RUN_ID",
    "WANDB_RESUME",
    "WANDB_NAME",
    "WANDB_TAGS",
    "WANDB_RUN_GROUP",
    "WANDB_JOB_TYPE",
    "WANDB_NOTES",
)


def offline_wandb_env(root: Path) -> dict[str, str]:
    """Environment for wandb offline with everything under `root` (runs in root/wandb-runs).

    The base URL points at a closed loopback port, so that anything that tried the network
    anyway would fail at once instead of reaching out.
    """
    return {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(root / "wandb-runs"),
        "WANDB_CONFIG_DIR": str(root / "wandb-config"),
        "WANDB_CACHE_DIR": str(root / "wandb-cache"),
        "WANDB_DATA_DIR": str(root / "wandb-data"),
        "WANDB_ARTIFACT_DIR": str(root / "wandb-artifacts"),
        "WANDB_BASE_URL": "http://127.0.0.1:9",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_X_DISABLE_STATS": "true",
        "WANDB_X_DISABLE_META": "true",
        "WANDB_X_SAVE_REQUIREMENTS": "false",
    }


def offline_wandb(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    """Make wandb work offline under `root`, and return the directory for its runs."""
    settings = offline_wandb_env(root)
    runs = Path(settings["WANDB_DIR"])
    runs.mkdir(parents=True, exist_ok=True)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    return runs


def line(model: str | bytes, step: int, metric: str | bytes, value: str) -> bytes:
    """One TorchFort metric line, byte-exact."""
    model_bytes = model.encode() if isinstance(model, str) else model
    metric_bytes = metric.encode() if isinstance(metric, str) else metric
    return (
        b"TORCHFORT::WANDB: model: "
        + model_bytes
        + b", step: "
        + str(step).encode()
        + b", "
        + metric_bytes
        + b": "
        + value.encode()
        + b"\n"
    )


def write_log(logdir: Path, lines: Iterable[bytes], *, append: bool = False) -> Path:
    """Write (or append) the lines to ``<logdir>/torchfort.log``."""
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / "torchfort.log"
    with path.open("ab" if append else "wb") as stream:
        stream.write(b"".join(lines))
    return path


def write_config(logdir: Path, file_name: str, body: str, identifier: str) -> None:
    """Write a config as TorchFort does: the YAML, then ``identifier:``, no final newline."""
    logdir.mkdir(parents=True, exist_ok=True)
    text = body.rstrip("\n") + f"\nidentifier: {identifier}"
    (logdir / f"config_{file_name}.yaml").write_text(text, encoding="utf-8")


def settle() -> None:
    """Wait until wandb-core has written and closed the transaction logs of finished runs.

    ``run.finish`` returns before wandb-core closes an offline run's transaction log (it tells
    the service it is done with a one-way message), so a file read right after it may lack its
    last block. Tearing wandb's service down waits for the service process to exit, after it
    closed every log; the next ``wandb.init`` starts a new service.

    wandb 0.19 leaves the socket to its service open after the teardown: it is collected here,
    its ResourceWarning (a wandb bug, not the code under test) ignored, rather than in whichever
    test the garbage collector happens to run next.
    """
    import wandb  # noqa: PLC0415 - the tests skip when wandb is not installed

    wandb.teardown()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def ship_to_wandb(
    logdir: Path, directory: Path, *, ship_options: Mapping[str, Any] | None = None, **options: Any
) -> tuple[WandbBackend, Path]:
    """Ship the log to a new wandb backend; return it and its run's transaction log."""
    backend = WandbBackend(directory=str(directory), project=PROJECT, **options)
    report = tf_ship.ship(logdir, {"wandb": backend}, follow=False, **dict(ship_options or {}))
    assert report.ok, report.summary()
    settle()
    run_id = backend.resume_state()["run_id"]
    assert run_id
    logs = transaction_logs(directory, run_id)
    assert len(logs) == 1, logs
    return backend, logs[0]


def metric_rows(path: Path) -> list[dict[str, Any]]:
    """The history rows of a run without wandb's own keys."""
    return [
        {key: value for key, value in row.items() if key not in WANDB_OWN_KEYS}
        for row in history_rows(path)
    ]
