"""The MLflow key each ``<model>/<metric>`` becomes, and which names collide.

From the MLflow backend's own `KeyMap` (assigned in order of first appearance, as a fresh MLflow
run would), without importing MLflow.
"""

from __future__ import annotations

from tf_ship.backends.mlflow.keys import KeyMap, sanitize_key
from tf_ship.inspection.report import LogReport


def assign_mlflow_keys(report: LogReport) -> None:
    """Each name's MLflow key, as a fresh run assigns them, and who collides with whom."""
    keys = KeyMap(quiet=True)
    owner: dict[str, str] = {}
    for series in report.series.values():
        name = series.name
        key = keys.key(name)
        report.mlflow_keys[name] = key
        owner[key] = name
    for name, key in report.mlflow_keys.items():
        base = sanitize_key(name)
        holder = owner.get(base)
        if key != base and holder is not None and holder != name:
            report.collisions.setdefault(name, []).append(holder)
            report.collisions.setdefault(holder, []).append(name)
