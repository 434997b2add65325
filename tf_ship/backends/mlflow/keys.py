"""MLflow's rules for metric and param keys, the key map, and its record in run tags.

Needs no MLflow (`tf-ship inspect` previews the keys with it). What is renamed, and where the
renames are recorded: docs/backends.md (MLflow, Keys).
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from collections.abc import Iterable, Mapping

from tf_ship.backends import keys

logger = logging.getLogger("tf_ship")

MAX_KEY_LENGTH = 250
MAX_TAG_VALUE_LENGTH = 8000
KEY_MAP_TAG = "tf_ship.key_map"

_BAD_CHARACTER = re.compile(r"[^/\w.\- :]")
_DOUBLE_DOT = re.compile(r"\.(?=\.)")


def sanitize_key(name: str, limit: int = MAX_KEY_LENGTH) -> str:
    """Turn any name into one MLflow accepts as a metric or param key (maybe the same name)."""
    key = _DOUBLE_DOT.sub("_", _BAD_CHARACTER.sub("_", name))
    key = "/".join(part if part not in {"", "."} else "_" for part in key.split("/"))[:limit]
    if key.endswith(("/", "/.")) or key == ".":
        key = key[:-1] + "_"
    return key


def is_valid_key(key: str) -> bool:
    """The checks MLflow makes on a metric or param key."""
    return (
        0 < len(key) <= MAX_KEY_LENGTH
        and not _BAD_CHARACTER.search(key)
        and ".." not in key
        and posixpath.normpath(key) == key
        and not key.startswith("/")
    )


def artifact_name(model: str) -> str:
    """A file name for a model's config artifact."""
    return _DOUBLE_DOT.sub("_", re.sub(r"[^\w.\-]", "_", model)).lstrip(".") or "_"


class KeyMap(keys.KeyMap):
    """Assigns each name a valid, unique MLflow key; remembers the names it had to rename."""

    rules = keys.KeyRules("MLflow", sanitize_key, MAX_KEY_LENGTH, "not a valid or free key")


def key_map_tags(renamed: Mapping[str, str]) -> dict[str, str]:
    """The renamed names as JSON tag values of at most 8000 characters each."""
    tags: dict[str, str] = {}
    part: dict[str, str] = {}
    for name, key in renamed.items():
        trial = {**part, name: key}
        if part and len(json.dumps(trial, ensure_ascii=False)) > MAX_TAG_VALUE_LENGTH:
            tags[_key_map_tag(len(tags))] = json.dumps(part, ensure_ascii=False)
            trial = {name: key}
        part = trial
    if part:
        tags[_key_map_tag(len(tags))] = json.dumps(part, ensure_ascii=False)
    return tags


def _key_map_tag(index: int) -> str:
    return KEY_MAP_TAG if index == 0 else f"{KEY_MAP_TAG}.{index}"


def resumed_key_map(tags: Mapping[str, str], metric_keys: Iterable[str]) -> KeyMap:
    """The key map of a resumed run: the renames its tags record, then the keys it holds."""
    key_map = KeyMap()
    for tag in sorted(t for t in tags if t == KEY_MAP_TAG or t.startswith(KEY_MAP_TAG + ".")):
        try:
            part = json.loads(tags[tag])
        except ValueError:
            logger.warning("MLflow: tag %s is not JSON; ignored", tag)
            continue
        for name, key in part.items():
            key_map.reserve(str(name), str(key))
    renamed_keys = set(key_map.renamed().values())
    for key in metric_keys:
        if key not in renamed_keys:
            key_map.reserve(key, key)
    return key_map
