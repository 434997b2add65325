"""Finding the TorchFort logs under a root, and telling whether one holds lines left to ship."""

from __future__ import annotations

import os
from pathlib import Path

from tf_ship.shipper.places import LOG_NAME
from tf_ship.shipper.ship import Shipper

_READ_BLOCK = 1 << 16


def find_log_dirs(root: Path, depth: int | None = None) -> list[Path]:
    """Directories under `root` (itself included) that hold a ``torchfort.log``, sorted.

    Hidden folders (names starting with ``.``) are skipped. Symbolic links to directories are
    followed, but each directory is visited once, under the first path that reaches it, so a
    link loop ends. `depth` limits how many levels below `root` are searched (0: `root` only;
    None: no limit). Folders that cannot be read are skipped.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        directory, level = stack.pop()
        try:
            info = directory.stat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        if _is_file(directory / LOG_NAME):
            found.append(directory)
        if depth is not None and level >= depth:
            continue
        try:
            with os.scandir(directory) as entries:
                names = sorted(e.name for e in entries if not e.name.startswith(".") and _is_dir(e))
        except OSError:
            continue
        stack.extend((directory / name, level + 1) for name in reversed(names))
    return found


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def folder_name(root: Path, directory: Path) -> str:
    """A log directory's name: its path below `root` with ``/`` replaced by ``-``.

    `root` itself is named after its own last component.
    """
    parts = directory.relative_to(root).parts
    if parts:
        return "-".join(parts)
    return root.resolve().name or "root"


def signature(path: Path) -> tuple[int, int, int] | None:
    """Device, inode and size of `path` (None when it cannot be read): whether a log changed."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size)


def has_unshipped_lines(shipper: Shipper) -> bool:
    """Whether the log holds a complete line that some backend's saved cursor is before.

    Read from the shipper's state file after it ended: lines appended while it was closing its
    runs are noticed here, not lost.
    """
    if shipper.state is None:
        return False
    try:
        info = shipper.log_file.stat()
    except OSError:
        return False
    try:
        saved = shipper.state.load()
    except OSError:
        return False
    for name, _backend in shipper.backends:
        cursor = saved[name].cursor if name in saved else None
        if cursor is None or cursor.file is None:
            offset = 0
        elif (cursor.file.device, cursor.file.inode) != (info.st_dev, info.st_ino):
            return True  # the log was replaced
        else:
            offset = cursor.offset
        if offset < info.st_size and _newline_after(shipper.log_file, offset):
            return True
    return False


def _newline_after(path: Path, offset: int) -> bool:
    try:
        with path.open("rb") as stream:
            stream.seek(offset)
            while block := stream.read(_READ_BLOCK):
                if b"\n" in block:
                    return True
    except OSError:
        return False
    return False
