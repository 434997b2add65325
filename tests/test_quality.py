"""Lint and types are part of the test suite, so CI checks them with the same command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:  # pragma: no cover - the test extra installs both
        pytest.fail(f"{name} is not installed next to {sys.executable}: pip install -e .[test]")
    return found


def test_ruff_is_clean() -> None:
    """`ruff check` finds nothing in the package, the tests and the benchmarks."""
    folders = [f for f in ("tf_ship", "tests", "benchmarks", "examples") if (ROOT / f).is_dir()]
    result = subprocess.run(
        [_tool("ruff"), "check", *folders],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    """`mypy` (strict, configured in pyproject.toml) finds no type error in the package."""
    result = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
