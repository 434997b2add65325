"""A map that gives every metric name a unique key a tracker keeps as it is, and remembers it.

Each tracker brings its own `KeyRules` (`tf_ship.backends.mlflow.keys`, `swanlab.keys`); the map
is the same for all: a name keeps its key for good, a name the tracker would change or whose key
is taken gets ``_2``, ``_3``, ... appended, and each rename is reported once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import ClassVar

import attrs

logger = logging.getLogger("tf_ship")


@attrs.frozen
class KeyRules:
    """One tracker's rules for keys."""

    tracker: str
    """Its name, at the start of every message."""
    sanitize: Callable[[str], str]
    """Any name to a key the tracker keeps (the name itself when it keeps it)."""
    max_length: int
    why: str
    """Why a name is renamed, for the message."""


class KeyMap:
    """Assigns each name a unique key that `rules` allow; a subclass names the tracker's rules."""

    rules: ClassVar[KeyRules]

    def __init__(self, known: Mapping[str, str] | None = None, *, quiet: bool = False) -> None:
        self.quiet = quiet
        """Assign without reporting renames (for a preview, or for params reported elsewhere)."""
        self.keys: dict[str, str] = {}
        """Name -> key, for every name seen (and the names of earlier sessions)."""
        self._taken: set[str] = set()
        self._renamed: dict[str, str] = {}
        for name, key in (known or {}).items():
            self.reserve(name, key)

    def reserve(self, name: str, key: str) -> None:
        """Record a name's key from an earlier session."""
        self.keys[name] = key
        self._taken.add(key)
        if key != name:
            self._renamed[name] = key
        else:
            self._renamed.pop(name, None)

    def key(self, name: str) -> str:
        """The key of `name`; a new name gets a sanitized key, suffixed when already taken."""
        key = self.keys.get(name)
        if key is not None:
            return key
        rules = self.rules
        base = rules.sanitize(name)
        key, number = base, 1
        while key in self._taken:
            number += 1
            suffix = f"_{number}"
            key = rules.sanitize(base[: rules.max_length - len(suffix)] + suffix)
        self.reserve(name, key)
        if key != name and not self.quiet:
            logger.warning("%s: %r is logged as %r (%s)", rules.tracker, name, key, rules.why)
        return key

    def renamed(self) -> dict[str, str]:
        """The names whose key differs from the name, in order of appearance."""
        return dict(self._renamed)

    def renamed_count(self) -> int:
        """How many names were renamed (cheaper than ``len(renamed())``)."""
        return len(self._renamed)
