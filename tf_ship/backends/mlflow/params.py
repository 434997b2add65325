"""Model configs as MLflow params: flattened, cut to size, revisioned (params cannot change).

How they are named, and when a revision is logged: docs/backends.md (MLflow, Configs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from tf_ship.backends.mlflow.keys import KeyMap, sanitize_key
from tf_ship.contract import ModelConfig

logger = logging.getLogger("tf_ship")

MAX_PARAM_VALUE_LENGTH = 6000
REVISION_TAG = "tf_ship.config_revision"


def flatten_config(prefix: str, config: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Yield ``(prefix.path.to.key, text)`` for every leaf; lists become their JSON text."""
    for name, value in config.items():
        path = f"{prefix}.{name}"
        if isinstance(value, Mapping) and value:
            yield from flatten_config(path, value)
        elif isinstance(value, str):
            yield path, value
        else:
            yield path, json.dumps(value, ensure_ascii=False, default=str)


def revision_tag(model: str) -> str:
    """The tag that names the newest config revision of a model."""
    return sanitize_key(f"{REVISION_TAG}.{model}")


class ConfigParams:
    """The params a run holds, and what a config adds to them."""

    def __init__(self, held: Mapping[str, str] | None = None) -> None:
        self.held: dict[str, str] = dict(held or {})
        """Params logged (or being logged) to the run; a later config is compared with these."""
        self._reported: set[str] = set()

    def new(self, config: ModelConfig) -> tuple[int, list[tuple[str, str]]]:
        """The config's revision (the first whose params agree with it) and its params to log."""
        revision = 1
        while True:
            prefix = config.model if revision == 1 else f"{config.model}.rev{revision}"
            params = self._params_of(prefix, config)
            if all(self.held.get(k, v) == v for k, v in params.items()):
                return revision, [(k, v) for k, v in params.items() if self.held.get(k) != v]
            revision += 1

    def hold(self, params: Mapping[str, str]) -> None:
        """These params are being logged: a later config is compared with them."""
        self.held.update(params)

    def forget(self, refused: Mapping[str, str]) -> None:
        """Params the store refused are not the run's: a later config may log them again."""
        for key, value in refused.items():
            if self.held.get(key) == value:
                del self.held[key]

    def _params_of(self, prefix: str, config: ModelConfig) -> dict[str, str]:
        """A config's params under a prefix: keys made valid and unique, values cut to size."""
        keys = KeyMap(quiet=True)
        params: dict[str, str] = {}
        for name, text in flatten_config(prefix, config.config):
            key = keys.key(name)
            if key != name and name not in self._reported:
                self._reported.add(name)
                logger.warning("MLflow: param %r is logged as %r", name, key)
            if len(text) > MAX_PARAM_VALUE_LENGTH and name not in self._reported:
                self._reported.add(name)
                logger.warning(
                    "MLflow: param %r has %d characters; cut to %d",
                    name,
                    len(text),
                    MAX_PARAM_VALUE_LENGTH,
                )
            params[key] = text[:MAX_PARAM_VALUE_LENGTH]
        return params
