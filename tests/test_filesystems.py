"""Network filesystems are recognised from mountinfo; a local one says nothing.

The MLflow backend says once, in one line, that its SQLite store lies on one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tf_ship.shipper import filesystems
from tf_ship.shipper.filesystems import (
    filesystem_type,
    is_network_filesystem,
    mounts,
    warn_if_network_filesystem,
)

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 27 0:40 / /home rw,relatime shared:7 - nfs4 fs1:/export/home rw,vers=4.2
32 27 0:41 / /lustre/scratch rw,relatime - lustre 10.0.0.1@o2ib:/scratch rw,flock
33 27 0:42 / /gpfs rw,relatime shared:9 master:3 - gpfs projects rw
34 31 0:43 / /home/alice/local\\040disk rw,relatime - ext4 /dev/sdb1 rw
35 27 0:44 / /mnt/remote rw,nosuid - fuse.sshfs alice@login:/data rw,user_id=1000
36 27 0:45 / /scratch rw,relatime - xfs /dev/nvme0n1 rw
37 36 0:46 / /scratch rw,relatime - nfs fs2:/scratch rw
38 27 0:47 / /mnt/fuse rw,relatime - fuse.portal portal rw
"""
"""Mounts as a cluster node shows them: NFS homes with a local disk inside, Lustre, GPFS,
sshfs, a local /scratch covered by an NFS mount, a local FUSE filesystem."""


def test_mountinfo_lines_are_parsed() -> None:
    """Mount point (escapes undone) and type of each line, optional fields skipped."""
    found = mounts(MOUNTINFO)
    assert found[2] == ("/home", "nfs4")
    assert found[4] == ("/gpfs", "gpfs")
    assert found[5] == ("/home/alice/local disk", "ext4")
    assert found[6] == ("/mnt/remote", "fuse.sshfs")


@pytest.mark.parametrize(
    ("path", "kind", "network"),
    [
        ("/home/alice/job/mlflow.db", "nfs4", True),
        ("/home", "nfs4", True),
        ("/homework/mlflow.db", "ext4", False),
        ("/lustre/scratch/alice/run/mlflow.db", "lustre", True),
        ("/gpfs/project/mlflow.db", "gpfs", True),
        ("/home/alice/local disk/mlflow.db", "ext4", False),
        ("/mnt/remote/mlflow.db", "fuse.sshfs", True),
        ("/scratch/mlflow.db", "nfs", True),
        ("/mnt/fuse/mlflow.db", "fuse.portal", False),
        ("/opt/job/mlflow.db", "ext4", False),
    ],
)
def test_filesystem_of_a_path(path: str, kind: str, *, network: bool) -> None:
    """The longest mount point holding the path decides; the last of stacked mounts wins."""
    assert filesystem_type(path, MOUNTINFO) == kind
    assert is_network_filesystem(kind) is network


def test_unreadable_mountinfo_knows_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No mountinfo (not Linux): no type, no warning."""
    monkeypatch.setattr(filesystems, "MOUNTINFO", tmp_path / "missing")
    assert filesystem_type(tmp_path) is None
    assert not warn_if_network_filesystem(tmp_path / "x.db", "store", "advice")


def test_this_machines_local_filesystem_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The test's own temporary folder is local here: nothing is said."""
    kind = filesystem_type(tmp_path)
    assert kind is None or not is_network_filesystem(kind)
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        assert not warn_if_network_filesystem(tmp_path / "mlflow.db", "store", "advice")
    assert caplog.records == []


def test_warning_is_given_once_per_path(caplog: pytest.LogCaptureFixture) -> None:
    """A path on NFS is reported the first time only."""
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        for _ in range(3):
            assert warn_if_network_filesystem(
                "/home/bob/once.db", "The store", "use a server", MOUNTINFO
            )
    assert [r.getMessage() for r in caplog.records] == [
        "The store /home/bob/once.db is on nfs4, a network filesystem: use a server"
    ]


def test_mlflow_sqlite_store_on_nfs_is_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``sqlite:///`` store in a folder mounted over NFS: one line with the safe choices."""
    pytest.importorskip("mlflow")
    from tf_ship.backends.mlflow import MlflowBackend  # noqa: PLC0415
    from tf_ship.shipper.events import RunInfo, RunStatus  # noqa: PLC0415

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"{MOUNTINFO}40 27 0:50 / {tmp_path} rw,relatime - nfs4 fs1:/jobs rw\n", encoding="utf-8"
    )
    monkeypatch.setattr(filesystems, "MOUNTINFO", mountinfo)
    store = tmp_path / "job" / "mlflow.db"
    store.parent.mkdir()
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        for _ in range(2):
            backend = MlflowBackend(f"sqlite:///{store}", "tf-ship-tests")
            backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
            backend.close(RunStatus.FINISHED)
    expected = (
        f"MLflow's SQLite store {store} is on nfs4, a network filesystem: SQLite can lock up "
        "or corrupt its file there; use a tracking server (--mlflow-tracking-uri "
        "http://HOST:PORT) or a file on node-local scratch (--mlflow-tracking-uri "
        "sqlite:////tmp/mlflow.db)"
    )
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [expected]
