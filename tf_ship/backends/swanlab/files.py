"""SwanLab's run folders: the sessions of a run, and the scalars their run files hold.

Each `swanlab.init` writes a new folder ``run-<YYYYmmdd_HHMMSS>-<run id>`` under the log folder,
holding ``run-<run id>.swanlab``: records in a LevelDB-style log, read here with SwanLab's own
`DataStoreReader` (which stops at a record cut short by a crash).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

from tf_ship.contract import FatalBackendError

logger = logging.getLogger("tf_ship")


def _session_order(folder: str, run_id: str) -> str | None:
    match = re.fullmatch(rf"run-(\d{{8}}_\d{{6}})-{re.escape(run_id)}", folder)
    return None if match is None else match[1]


def session_dirs(log_dir: str | Path, run_id: str) -> list[Path]:
    """The folders of every session of the run under `log_dir`, oldest first."""
    try:
        folders = list(Path(log_dir).iterdir())
    except OSError:
        return []
    found = []
    for folder in folders:
        order = _session_order(folder.name, run_id)
        if order is not None and (folder / f"run-{run_id}.swanlab").is_file():
            found.append((order, folder))
    return [folder for _, folder in sorted(found)]


def scalars(run_dir: str | Path) -> Iterator[tuple[str, int, float]]:
    """(key, step, value) of every scalar record in a session's run file, in file order.

    A file cut short (a crash) yields what it holds up to the cut; an unreadable one nothing.
    """
    try:
        from swanlab.exceptions import DataStoreError  # noqa: PLC0415 - lazy SDK
        from swanlab.proto.swanlab.record.v1.record_pb2 import Record  # noqa: PLC0415
        from swanlab.sdk.internal.core_python.store import DataStoreReader  # noqa: PLC0415
    except ImportError as error:
        msg = f"this SwanLab cannot read its run files back ({error}): install tf-ship[swanlab]"
        raise FatalBackendError(msg) from error

    for path in sorted(Path(run_dir).glob("run-*.swanlab")):
        reader = DataStoreReader()
        try:
            reader.open(path)
        except (OSError, AssertionError, DataStoreError) as error:  # a header cut short asserts
            logger.warning("SwanLab: cannot read %s (%s); its records are not counted", path, error)
            continue
        try:
            for data in reader:
                record = Record()
                record.ParseFromString(data)
                if record.WhichOneof("record_type") == "scalar":
                    scalar = record.scalar
                    yield scalar.key, scalar.step, scalar.value.number
        finally:
            reader.close()


__all__ = ["scalars", "session_dirs"]
