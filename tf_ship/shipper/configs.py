"""Find and read the `config_<name>.yaml` files TorchFort writes beside its log.

Files are matched to models by their `identifier` key, read as the raw scalar text (so that
`identifier: 1` or `identifier: true` still match a model named `1` or `true`), never by file
name: TorchFort's file name sanitizing makes different models collide. Files are written in
place and not atomically, so a parse error is retried when the file changes; one that stays
broken is reported once. Loading is safe: no object construction, no aliases (no YAML bombs),
and a size limit.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from stat import S_ISREG
from typing import Any

import attrs
import yaml

from tf_ship.contract import ModelConfig
from tf_ship.errors import TfShipError

logger = logging.getLogger("tf_ship")

CONFIG_GLOB = "config_*.yaml"
MAX_CONFIG_BYTES = 4 << 20
BROKEN_REPORT_AFTER = 2.0
_FLOAT_1_2 = re.compile(
    r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
)


class ConfigError(ValueError, TfShipError):
    """A config file that cannot be used (too large, not YAML, not a mapping, no identifier)."""


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, minus aliases, plus YAML 1.2 floats such as ``1e-3``."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: ANN401 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases are not allowed in a config", event.start_mark
            )
        return super().compose_node(parent, index)


_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def load_config(text: bytes) -> tuple[str, dict[str, Any]]:
    """Parse a config file's bytes into (identifier, config without identifier)."""
    if len(text) > MAX_CONFIG_BYTES:
        msg = f"larger than {MAX_CONFIG_BYTES} bytes"
        raise ConfigError(msg)
    try:
        # the reader refuses control characters (a NUL page of a half-written file) at once
        loader = _ConfigLoader(text.decode("utf-8", errors="replace"))
    except yaml.YAMLError as error:
        raise ConfigError(str(error).replace("\n", " ")) from error
    try:
        node = loader.get_single_node()
        if not isinstance(node, yaml.MappingNode):
            msg = "not a YAML mapping"
            raise ConfigError(msg)
        identifier = None
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "identifier":
                if not isinstance(value, yaml.ScalarNode):
                    msg = "identifier is not a scalar"
                    raise ConfigError(msg)
                identifier = value.value
        if identifier is None:
            msg = "no identifier key"
            raise ConfigError(msg)
        data = loader.construct_document(node)
    except yaml.YAMLError as error:
        raise ConfigError(str(error).replace("\n", " ")) from error
    except RecursionError as error:  # PyYAML recurses once per nesting level
        msg = "nested too deeply"
        raise ConfigError(msg) from error
    finally:
        loader.dispose()
    config = {str(key): value for key, value in data.items() if key != "identifier"}
    return identifier, config


@attrs.frozen
class _FileState:
    signature: tuple[int, int, int]
    first_seen: float
    model: str | None = None
    reported: bool = False


@attrs.define
class ConfigCatalog:
    """The configs in a log directory, re-read when files appear or change.

    Shared by every backend worker; `configs()` is cheap and rescans at most every
    `rescan_interval` seconds unless forced.
    """

    logdir: Path
    rescan_interval: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _files: dict[Path, _FileState] = attrs.field(factory=dict, init=False)
    _configs: dict[str, ModelConfig] = attrs.field(factory=dict, init=False)
    _last_scan: float | None = attrs.field(default=None, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def configs(self, *, force: bool = False) -> Mapping[str, ModelConfig]:
        """The current config of each model (by identifier), rescanning when due."""
        with self._lock:
            now = self.clock()
            due = self._last_scan is None or now - self._last_scan >= self.rescan_interval
            if force or due:
                self._last_scan = now
                self._scan(now)
            return dict(self._configs)

    def _scan(self, now: float) -> None:
        try:
            paths = sorted(self.logdir.glob(CONFIG_GLOB))
        except OSError:
            return
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            known = self._files.get(path)
            if known is not None and known.signature == signature:
                if known.model is None and not known.reported:
                    self._retry_broken(path, known, now)
                continue
            self._files[path] = _FileState(signature, now)
            self._read(path, stat.st_mtime_ns)

    def _retry_broken(self, path: Path, known: _FileState, now: float) -> None:
        """A file that failed to parse and has not changed since: report it once it settled."""
        if now - known.first_seen < BROKEN_REPORT_AFTER:
            return
        try:
            self._load(path, known.signature[2])
        except (ConfigError, OSError) as error:
            logger.warning("config file %s is unusable: %s", path, error)
            self._files[path] = attrs.evolve(known, reported=True)
        else:
            self._files[path] = attrs.evolve(known, model=self._model_of(path))

    def _read(self, path: Path, mtime_ns: int) -> None:
        try:
            self._load(path, mtime_ns)
        except (ConfigError, OSError) as error:
            if time.time() - mtime_ns / 1e9 >= BROKEN_REPORT_AFTER:
                # unchanged for a while already (written before tf-ship started): not being
                # written now, so report it at once; a one-shot run may end before a rescan
                logger.warning("config file %s is unusable: %s", path, error)
                self._files[path] = attrs.evolve(self._files[path], reported=True)
            else:
                logger.debug("config file %s not readable yet: %s", path, error)
            return
        self._files[path] = attrs.evolve(self._files[path], model=self._model_of(path))

    def _model_of(self, path: Path) -> str | None:
        for model, config in self._configs.items():
            if config.path == path:
                return model
        return None

    def _load(self, path: Path, mtime_ns: int) -> None:
        # O_NONBLOCK: opening a FIFO named like a config must not wait for a writer forever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as stream:
            if not S_ISREG(os.fstat(fd).st_mode):
                msg = "not a regular file"
                raise ConfigError(msg)
            text = stream.read(MAX_CONFIG_BYTES + 1)
        identifier, config = load_config(text)
        previous = self._configs.get(identifier)
        version = 0 if previous is None else previous.version + 1
        self._configs[identifier] = ModelConfig(identifier, config, path, version, mtime_ns)
