"""How log events become wandb history rows: keys, x-axes and packing (docs/backends.md, wandb)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from tf_ship.backends.base import group_by_model_step
from tf_ship.contract import MetricEvent

STEP = "step"
_STEP_LIKE = re.compile(r"(?:.*/)?step(?: \(metric\))*", re.DOTALL)


def step_key(model: str) -> str:
    """The key of a model's x-axis: ``<model>/step``."""
    return f"{model}/{STEP}"


def metric_key(model: str, metric: str) -> str:
    """The key a metric is logged under: ``<model>/<metric>``, never the x-axis key.

    A key ending in ``/step`` is always an x-axis (rows hold the x-axes of several models, and
    readers count a row's events by that): ``step`` becomes ``step (metric)``, ``a/step``
    ``a/step (metric)``, and a name that already looks like that gets one more `` (metric)``,
    so that different metrics never share a key.
    """
    if _STEP_LIKE.fullmatch(metric):
        metric += " (metric)"
    return f"{model}/{metric}"


def _related(model: str, other: str) -> bool:
    """True when one model's keys could be taken for the other's (``a`` and ``a/b``)."""
    return model == other or model.startswith(f"{other}/") or other.startswith(f"{model}/")


@attrs.define
class Row:
    """One ``run.log`` call: the values of one (model, step) of each model it holds."""

    values: dict[str, Any] = attrs.field(factory=dict)
    keys_by_model: dict[str, list[str]] = attrs.field(factory=dict)
    """The metric keys of each model, in log order (for the x-axis definitions)."""
    events: list[MetricEvent] = attrs.field(factory=list)

    def takes(self, model: str, related: dict[tuple[str, str], bool]) -> bool:
        """True when `model` can join: not there yet, and no model whose keys could mix in.

        `related` remembers the answer for each pair of models (a batch has a handful).
        """
        for other in self.keys_by_model:
            pair = (model, other)
            mixes = related.get(pair)
            if mixes is None:
                mixes = related[pair] = _related(model, other)
            if mixes:
                return False
        return True


def rows(batch: Sequence[MetricEvent]) -> Iterator[Row]:
    """Pack consecutive (model, step) groups into rows, at most one group of each model per row.

    wandb's cost is per ``run.log`` call, so the groups of different models that follow each
    other share a row (each under its own ``<model>/step``), which halves the calls for two
    models. Log order is kept: a model that is already in the row (or a model whose keys could
    be taken for its keys) starts the next row, and so does a metric that repeats within one
    (model, step), so that no value overwrites another. Keys and the models' relations are
    worked out once per batch: a batch has a handful of them for thousands of events.
    """
    keys: dict[tuple[str, str], str] = {}
    axes: dict[str, str] = {}
    related: dict[tuple[str, str], bool] = {}
    row = Row()
    for model, step, events in group_by_model_step(batch):
        x_axis = axes.get(model)
        if x_axis is None:
            x_axis = axes[model] = step_key(model)
        group: list[str] = []
        for event in events:
            pair = (model, event.metric)
            key = keys.get(pair)
            if key is None:
                key = keys[pair] = metric_key(model, event.metric)
            if group and key in row.values:  # a repeat within this (model, step)
                row.values[x_axis] = step
                yield row
                row, group = Row(), []
            if not group:
                if row.keys_by_model and not row.takes(model, related):
                    yield row
                    row = Row()
                row.keys_by_model[model] = group
            row.values[key] = event.value
            group.append(key)
            row.events.append(event)
        row.values[x_axis] = step
    if row.events:
        yield row


def _wandb_own(key: str) -> bool:
    """True for wandb's own keys (``_step``, ``_runtime``, ``_timestamp``)."""
    return key.startswith("_") and "/" not in key


def metric_items(row: Mapping[str, Any]) -> dict[str, Any]:
    """A history row without wandb's own keys."""
    return {k: v for k, v in row.items() if not _wandb_own(k)}


def events_in_row(row: Iterable[str]) -> int:
    """How many log events a history row (or its keys) written by this backend holds.

    All keys but wandb's own and the x-axes (the keys ending in ``/step``, see `metric_key`).
    """
    return sum(1 for key in row if not _wandb_own(key) and not key.endswith("/step"))


__all__ = ["Row", "events_in_row", "metric_items", "metric_key", "rows", "step_key"]
