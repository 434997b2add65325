"""SwanLab's rules for metric keys, and a map that gives every name a key SwanLab keeps as is.

SwanLab (0.10) strips spaces, tabs, line breaks, dots and slashes from both ends of a key, drops
a key holding any other control character, cuts keys at 512 characters and refuses its own
``__swanlab__.`` prefix. Each of these could merge two names into one key or lose a metric, so
names are changed here first, visibly: see docs/backends.md (SwanLab).
"""

from __future__ import annotations

import hashlib
import re

from tf_ship.backends import keys

MAX_KEY_LENGTH = 512
EDGE_CHARACTERS = " \t\n\r./"
"""What SwanLab strips from both ends of a key."""
SYSTEM_PREFIX = "__swanlab__."
STEP = "step"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_STEP_LIKE = re.compile(r"(?:.*/)?step(?: \(metric\))*", re.DOTALL)


def step_name(model: str) -> str:
    """The name of a model's x-axis: ``<model>/step``."""
    return f"{model}/{STEP}"


def metric_name(model: str, metric: str) -> str:
    """``<model>/<metric>``, never an x-axis name: ``step`` becomes ``step (metric)``.

    ``a/step`` becomes ``a/step (metric)``, and a name that already looks like that gets one
    more `` (metric)``, so that different metrics never share a name.
    """
    if _STEP_LIKE.fullmatch(metric):
        metric += " (metric)"
    return f"{model}/{metric}"


def is_kept(key: str) -> bool:
    """True when SwanLab stores `key` unchanged."""
    return (
        0 < len(key) <= MAX_KEY_LENGTH
        and not _CONTROL.search(key)
        and key.strip(EDGE_CHARACTERS) == key
        and not key.startswith(SYSTEM_PREFIX)
    )


def sanitize_key(name: str) -> str:
    """A key SwanLab keeps as is: control characters and stripped edges become ``_``.

    A name over MAX_KEY_LENGTH characters is cut and ends in ``~`` and a hash of the name.
    """
    key = _CONTROL.sub("_", name)
    body = key.strip(EDGE_CHARACTERS)
    if not body:
        key = "_" * max(len(key), 1)
    else:
        start = len(key) - len(key.lstrip(EDGE_CHARACTERS))
        key = "_" * start + body + "_" * (len(key) - start - len(body))
    if key.startswith(SYSTEM_PREFIX):
        key = "_" + key
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        key = key[: MAX_KEY_LENGTH - 9] + "~" + digest
    return key


class KeyMap(keys.KeyMap):
    """Assigns each name a unique key SwanLab keeps; remembers every assignment.

    A name that SwanLab keeps is its own key, unless another name took it already: then, as
    for a name that had to change, ``_2``, ``_3``, ... is appended. Every renamed name is
    reported once.
    """

    rules = keys.KeyRules("SwanLab", sanitize_key, MAX_KEY_LENGTH, "SwanLab would change it")


__all__ = ["KeyMap", "is_kept", "metric_name", "sanitize_key", "step_name"]
