"""The documentation stays true to the code."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import tf_ship
from tf_ship.cli_reference import render

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current() -> None:
    """docs/cli.md is exactly what the command generates (regenerate it when options change)."""
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == render()


def test_public_api_is_exactly_all() -> None:
    """`tf_ship.__all__` names exactly the public names, and each of them resolves."""
    public = {name for name in dir(tf_ship) if not name.startswith("_")}
    modules = {n for n in public if isinstance(getattr(tf_ship, n, None), types.ModuleType)}
    assert set(tf_ship.__all__) - {"__version__"} == public - modules
    for name in tf_ship.__all__:
        assert getattr(tf_ship, name) is not None


def test_changelog_has_an_unreleased_section() -> None:
    """User-visible changes are collected under Unreleased until a release."""
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict` builds the site: no broken link or anchor, no page off the nav."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
