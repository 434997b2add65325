"""Helpers for the wandb backend's tests: an offline wandb, TorchFort logs, and reading back.

Every run is an offline run (nothing leaves the machine) whose transaction log the tests read
with `tf_ship.backends.wandb.transaction_log` and the readers of records here (config, run
record, exit code, metric definitions), which only the tests need.
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
from tf_ship.backends.wandb.transaction_log import (
    TransactionLogError,
    decode_json,
    history_rows,
    read_records,
)

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


# -- reading a run's records back ---------------------------------------------------------------


def config_of(path: str | Path, *, strict: bool = True) -> dict[str, Any]:
    """The run's config after every update and removal in the log, as decoded JSON values.

    Includes wandb's own ``_wandb`` entry.
    """
    config: dict[str, Any] = {}
    for record in read_records(path, strict=strict):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            updates, removals = record.run.config.update, ()
        elif kind == "config":
            updates, removals = record.config.update, record.config.remove
        else:
            continue
        for item in updates:
            _set_nested(config, _path_of(item), decode_json(item.value_json))
        for item in removals:
            _remove_nested(config, _path_of(item))
    return config


def run_record(path: str | Path, *, strict: bool = True) -> Any:
    """The first ``run`` record (a ``RunRecord``: id, project, name, group, tags, job type)."""
    for record in read_records(path, strict=strict):
        if record.WhichOneof("record_type") == "run":
            return record.run
    msg = f"{path} holds no run record"
    raise TransactionLogError(msg)


def exit_code_of(path: str | Path, *, strict: bool = True) -> int | None:
    """The exit code the run finished with, or None when it did not finish (yet)."""
    for record in read_records(path, strict=strict):
        if record.WhichOneof("record_type") == "exit":
            return int(record.exit.exit_code)
    return None


def metric_definitions(path: str | Path, *, strict: bool = True) -> dict[str, str]:
    """The x-axis of each metric or glob defined with `define_metric`: name -> step metric.

    Names defined without a step metric map to ``""``.
    """
    definitions: dict[str, str] = {}
    for record in read_records(path, strict=strict):
        if record.WhichOneof("record_type") == "metric":
            metric = record.metric
            name = metric.name or metric.glob_name
            if name:
                definitions[str(name)] = str(metric.step_metric)
    return definitions


def hidden_metrics(path: str | Path, *, strict: bool = True) -> set[str]:
    """The names (or globs) defined with ``define_metric(..., hidden=True)``."""
    return {
        str(record.metric.name or record.metric.glob_name)
        for record in read_records(path, strict=strict)
        if record.WhichOneof("record_type") == "metric" and record.metric.options.hidden
    }


def transaction_logs(directory: str | Path, run_id: str | None = None) -> list[Path]:
    """The transaction logs of offline runs under a wandb ``dir``, oldest first.

    `directory` is what was given to ``wandb.init(dir=...)``; runs are in its ``wandb``
    folder. A run resumed offline with the same id gets one folder per session.
    """
    base = Path(directory)
    wandb_dir = base / "wandb" if (base / "wandb").is_dir() else base
    pattern = f"offline-run-*-{run_id}/run-{run_id}.wandb" if run_id else "offline-run-*/*.wandb"
    return sorted(wandb_dir.glob(pattern))


def _path_of(item: Any) -> list[str]:
    return [str(item.key)] if item.key else [str(part) for part in item.nested_key]


def _set_nested(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    target[keys[-1]] = value


def _remove_nested(target: dict[str, Any], keys: list[str]) -> None:
    for key in keys[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            return
        target = child
    target.pop(keys[-1], None)
