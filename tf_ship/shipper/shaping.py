"""Shape the events before every backend: keep, drop, rename, prefix.

Applied once per distinct (model, metric) and cached, so shaping costs one dictionary lookup
per event on the hot path.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence

import attrs

from tf_ship.contract import MetricEvent, ModelConfig

_CACHE_LIMIT = 65536


def parse_renames(items: Iterable[str]) -> dict[str, str]:
    """``OLD=NEW`` strings to a mapping; raises ValueError naming a malformed one."""
    renames: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            msg = f"--rename {item!r} is not of the form OLD=NEW"
            raise ValueError(msg)
        if ("/" in old) != ("/" in new):
            msg = f"--rename {item!r}: rename a model to a model, or MODEL/METRIC to MODEL/METRIC"
            raise ValueError(msg)
        renames[old] = new
    return renames


@attrs.define
class EventShaper:
    """Keeps, drops, renames and prefixes events by their ``<model>/<metric>`` key.

    An event is kept when its key matches an `include` glob (or there are none) and no
    `exclude` glob; then it is renamed and prefixed.
    `renames` maps a model name to a new one, or ``model/metric`` to ``model/metric``; the most
    specific (``model/metric``) wins. `prefix` is put before every model name.
    """

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    renames: Mapping[str, str] = attrs.field(factory=dict)
    prefix: str = ""
    _names: dict[tuple[str, str], tuple[str, str] | None] = attrs.field(factory=dict, init=False)

    @property
    def active(self) -> bool:
        """Whether shaping changes anything at all (if not, the engine skips it)."""
        return bool(self.include or self.exclude or self.renames or self.prefix)

    def _shape(self, model: str, metric: str) -> tuple[str, str] | None:
        key = f"{model}/{metric}"
        if self.include and not any(fnmatch.fnmatchcase(key, g) for g in self.include):
            return None
        if any(fnmatch.fnmatchcase(key, g) for g in self.exclude):
            return None
        if key in self.renames:
            model, _, metric = self.renames[key].partition("/")
        else:
            model = self.renames.get(model, model)
        return self.prefix + model, metric

    def name(self, model: str, metric: str) -> tuple[str, str] | None:
        """The shaped (model, metric), or None when the event is dropped."""
        names = self._names
        try:
            return names[(model, metric)]
        except KeyError:
            shaped = self._shape(model, metric)
            if len(names) < _CACHE_LIMIT:
                names[(model, metric)] = shaped
            return shaped

    def events(self, events: Sequence[MetricEvent]) -> list[MetricEvent]:
        """The shaped events, in order."""
        shaped: list[MetricEvent] = []
        append = shaped.append
        name = self.name
        for event in events:
            new = name(event.model, event.metric)
            if new is None:
                continue
            if new == (event.model, event.metric):
                append(event)
            else:
                append(attrs.evolve(event, model=new[0], metric=new[1]))
        return shaped

    def model(self, model: str) -> str:
        """The shaped name of a model, for its config."""
        return self.prefix + self.renames.get(model, model)

    def config(self, config: ModelConfig) -> ModelConfig:
        """The config under the model's shaped name."""
        model = self.model(config.model)
        return config if model == config.model else attrs.evolve(config, model=model)
