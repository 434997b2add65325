r"""Which filesystem a path lives on, and whether it is a network filesystem.

SQLite relies on POSIX locks and on writes being seen in order, which NFS, Lustre, GPFS and the
other shared filesystems of clusters do not promise: a SQLite file there can lock up or be
corrupted (see https://www.sqlite.org/faq.html#q5). The type comes from
``/proc/self/mountinfo``: the mount whose mount point is the longest prefix of the path (the
last such line when mounts are stacked), its filesystem type after the `` - `` separator.
Outside Linux (no mountinfo) nothing is known and nothing is said.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger("tf_ship")
MOUNTINFO = Path("/proc/self/mountinfo")
NETWORK_FILESYSTEMS = frozenset(
    {
        "9p",
        "afs",
        "beegfs",
        "ceph",
        "cephfs",
        "cifs",
        "cvfs",
        "fhgfs",
        "gfs2",
        "glusterfs",
        "gpfs",
        "juicefs",
        "lustre",
        "ncpfs",
        "nfs",
        "nfs4",
        "ocfs2",
        "orangefs",
        "panfs",
        "pvfs2",
        "smb3",
        "smbfs",
        "sshfs",
        "wekafs",
    }
)
"""Filesystem types (as mountinfo names them; FUSE ones as ``fuse.<name>``) shared over a
network."""
_ESCAPES = {"\\040": " ", "\\011": "\t", "\\012": "\n", "\\134": "\\"}
_warned: set[str] = set()


def unescape(field: str) -> str:
    """A mountinfo path field with its octal escapes (space, tab, newline, backslash) undone."""
    for escape, character in _ESCAPES.items():
        field = field.replace(escape, character)
    return field


def mounts(mountinfo: str) -> list[tuple[str, str]]:
    """``(mount point, filesystem type)`` of each line of a mountinfo text, in its order."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if len(fields) > separator + 1:
            found.append((unescape(fields[4]), fields[separator + 1]))
    return found


def filesystem_type(path: str | os.PathLike[str], mountinfo: str | None = None) -> str | None:
    """The type of the filesystem holding `path` (or, if it does not exist, its nearest parent).

    `mountinfo` defaults to this process's ``/proc/self/mountinfo``; None when it is unreadable.
    """
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    where = Path(os.path.realpath(os.path.abspath(path)))  # noqa: PTH100 - no stat needed
    best: tuple[int, str] | None = None
    for point, kind in mounts(mountinfo):
        inside = where == Path(point) or Path(point) in where.parents
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), kind)
    return None if best is None else best[1]


def is_network_filesystem(kind: str | None) -> bool:
    """True for a filesystem type shared over a network (``nfs4``, ``lustre``, ``fuse.sshfs``)."""
    if kind is None:
        return False
    return kind in NETWORK_FILESYSTEMS or kind.removeprefix("fuse.") in NETWORK_FILESYSTEMS


def warn_if_network_filesystem(
    path: str | os.PathLike[str], what: str, advice: str, mountinfo: str | None = None
) -> bool:
    """Say once per path, in one line, that `what` at `path` is on a network filesystem.

    Returns True when the path is on one (whether or not the warning was given before).
    """
    kind = filesystem_type(path, mountinfo)
    if not is_network_filesystem(kind):
        return False
    key = os.path.abspath(path)  # noqa: PTH100
    if key not in _warned:
        _warned.add(key)
        logger.warning("%s %s is on %s, a network filesystem: %s", what, path, kind, advice)
    return True
