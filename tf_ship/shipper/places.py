"""Where tf-ship writes what the user did not place, and whether it can write there.

A log in a folder the user cannot write (a finished run in a shared project folder, another
user's directory, a read-only mount in a container) cannot keep its state beside it: the state
then lives in a per-user folder, keyed by the log's path, where the next run of the same command
finds it again. The same question, asked once at start-up, covers what the backends write by
default in the current folder (``./runs``, ``./mlflow.db``, ``./wandb``): each backend module
says where with a ``local_outputs(options)`` function, and `output_problems` checks them all.

Writability is found out by creating (and removing) a file, not with ``access()``: that does not
see every read-only mount or network filesystem export, and root passes its permission checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from tf_ship.errors import TfShipError

LOG_NAME = "torchfort.log"
"""The file TorchFort writes its metric lines to, in its log directory (docs/log-format.md)."""
STATE_NAME = ".tf-ship-state.json"
"""The state file's name beside the log (docs/delivery.md)."""
STATE_DIR_NAME = "tf-ship"
_READABLE = re.compile(r"[^A-Za-z0-9._-]+")
_READABLE_PARTS = 2
_READABLE_CHARS = 60


class PlaceError(TfShipError):
    """A place tf-ship must write to cannot be written; the message says what to do instead."""


def write_problem(directory: Path) -> str | None:
    """Why no file can be made in `directory` (for example "read-only file system"), or None.

    A folder that does not exist yet is judged by the nearest one above it that does (it would
    be made there), and the reason then names that folder.
    """
    target = existing = Path(os.path.abspath(directory))  # noqa: PTH100 - no links resolved
    while not _exists(existing) and existing.parent != existing:
        existing = existing.parent
    where = "" if existing == target else f"{existing}: "
    if not existing.is_dir():
        return f"{where}not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".tf-ship-probe-", dir=existing)
    except OSError as error:
        return where + (error.strerror or str(error)).lower()
    os.close(fd)
    with contextlib.suppress(OSError):
        Path(probe).unlink()
    return None


def _exists(path: Path) -> bool:
    try:
        return os.path.lexists(path)
    except OSError:  # pragma: no cover - lexists reports errors as False already
        return False


# -- the state file -----------------------------------------------------------------------------


def user_state_dir() -> Path:
    """The per-user state folder: ``$XDG_STATE_HOME/tf-ship``, else ``~/.local/state/tf-ship``.

    A relative ``XDG_STATE_HOME`` is ignored, as the XDG specification asks.
    """
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state"
    return root / STATE_DIR_NAME


def user_state_file(log_file: Path) -> Path:
    """The per-user state file of a log: a readable part of its path, then a hash of the path.

    The hash is of the log's resolved absolute path, so the same log reached through another
    relative path or a symbolic link finds the same file.
    """
    absolute = Path(log_file).resolve()
    readable = "-".join(absolute.parent.parts[-_READABLE_PARTS:]).lstrip("/") or "root"
    readable = _READABLE.sub("_", readable)[:_READABLE_CHARS]
    digest = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:16]
    return user_state_dir() / f"{readable}-{digest}.json"


def _has_state(path: Path) -> bool:
    return _exists(path) or _exists(path.with_name(path.name + ".prev"))


@attrs.frozen
class StatePlace:
    """Where the state of a log is kept.

    With a `note`, one line that says so, when it is not the usual place.
    """

    path: Path
    note: str | None = None


def state_place(log_file: Path, explicit: Path | None) -> StatePlace:
    """Where to keep the state of `log_file`; raises `PlaceError` when nowhere will do.

    An `explicit` file (``--state-file``) must be writable. Otherwise: beside the log when its
    folder is writable, unless only the per-user folder holds a state of this log (an earlier
    run kept it there); else in the per-user folder.
    """
    if explicit is not None:
        problem = write_problem(explicit.parent)
        if problem is None and explicit.is_dir():
            problem = f"{explicit} is a folder"
        if problem is not None:
            msg = (
                f"cannot write the state file {explicit} ({problem}): give --state-file a file "
                "you can write, or --no-state"
            )
            raise PlaceError(msg)
        return StatePlace(explicit)
    beside = log_file.parent / STATE_NAME
    mine = user_state_file(log_file)
    folder = Path(os.path.abspath(log_file.parent))  # noqa: PTH100 - no links resolved
    beside_problem = write_problem(folder)
    if beside_problem is None:
        if _has_state(beside) or not _has_state(mine):
            return StatePlace(beside)
        return StatePlace(mine, f"keeping the state in {mine}, where an earlier run kept it")
    mine_problem = write_problem(mine.parent)
    if mine_problem is not None:
        msg = (
            f"cannot keep the state in the log's folder {folder} ({beside_problem}) nor in "
            f"{mine.parent} "
            f"({mine_problem}): give --state-file FILE in a folder you can write, or --no-state"
        )
        raise PlaceError(msg)
    left = " (the state file there is left alone)" if _has_state(beside) else ""
    return StatePlace(
        mine, f"cannot write in {folder} ({beside_problem}): keeping the state in {mine}{left}"
    )


# -- what the backends write ---------------------------------------------------------------------


def output_problems(
    backends: Sequence[tuple[str, Any]], options: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """One line per folder a backend would write but cannot, naming the option that moves it.

    `backends` pairs each backend name with its class (or factory); the folders come from a
    ``local_outputs(options) -> {keyword: folder}`` function in the module defining it, which
    built-in backends and plugins alike may have.
    """
    problems = []
    for name, factory in backends:
        module = sys.modules.get(getattr(factory, "__module__", ""), None)
        outputs = getattr(module, "local_outputs", None)
        if outputs is None:
            continue
        for keyword, folder in outputs(options.get(name, {})).items():
            problem = write_problem(Path(folder))
            if problem is not None:
                problems.append(
                    f"the {name} backend cannot write to {Path(folder).absolute()} ({problem}): "
                    f"choose another place with {_flag(name, keyword)}"
                )
    return problems


def _flag(backend: str, keyword: str) -> str:
    from tf_ship.backends.plugin_specs import all_specs  # noqa: PLC0415

    for spec in all_specs():
        for option in spec.options:
            if spec.name == backend and option.keyword == keyword:
                return option.flag
    return f"--backend-opt {backend}.{keyword}=..."
