"""Shared fixtures: each tracker's real service lives in a plugin module of its own."""

from __future__ import annotations

pytest_plugins: list[str] = ["mlflow_server", "read_only"]
