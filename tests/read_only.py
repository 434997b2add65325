"""Read-only folders for tests: a folder bind-mounted onto itself, then remounted read-only.

Permission bits are not enough where the tests run as root (root ignores them), and a read-only
mount is what a user meets (a finished run's folder mounted read-only into a container). Needs
root and mount(8); where either is missing, the tests that ask for it are skipped and say why.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False, timeout=30)


def _unmount(folder: Path) -> None:
    done = subprocess.run(["umount", str(folder)], capture_output=True, check=False, timeout=30)
    if done.returncode != 0:  # still busy (a process of a failed test): detach it
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False, timeout=30)


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], Path]]:
    """Make folders read-only for the test (``read_only(folder)``); unmounted at its end."""
    mounted: list[Path] = []

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        bound = _mount("--bind", str(folder), str(folder))
        if bound.returncode != 0:
            pytest.skip(f"a read-only bind mount needs root and mount(8): {bound.stderr.strip()}")
        mounted.append(folder)
        remounted = _mount("-o", "remount,bind,ro", str(folder))
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount {folder} read-only: {remounted.stderr.strip()}")
        return folder

    yield make
    for folder in reversed(mounted):
        _unmount(folder)
