"""Find a backend class by name: built-in, installed plugin, or ``package.module:Class``.

Built-ins are declared by their specs (`tf_ship.backends.specs`), which name the factory by
import path: it is imported only when chosen, so that `tf-ship --help` never pays for a tracker
SDK. A plugin declares a spec too (entry-point group `tf_ship.specs`,
`tf_ship.backends.plugin_specs`), or only its class under the entry-point group
`tf_ship.backends`; a spec wins over a class of the same name.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from tf_ship.backends.plugin_specs import plugin_specs
from tf_ship.backends.specs import builtin_specs
from tf_ship.contract import Backend
from tf_ship.errors import TfShipError

ENTRY_POINT_GROUP = "tf_ship.backends"
BUILTIN_BACKENDS: Mapping[str, str] = {spec.name: spec.factory for spec in builtin_specs()}
"""Built-in backend name -> ``module:attr`` of its factory."""

BackendFactory = Callable[..., Backend]


class UnknownBackendError(LookupError, TfShipError):
    """No built-in, plugin or importable class has that name."""


def plugin_backends() -> dict[str, str]:
    """Installed plugins: name -> ``module:attr`` (a spec's factory, else its class's)."""
    classes = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**classes, **{spec.name: spec.factory for spec in plugin_specs()}}


def available_backends() -> dict[str, str]:
    """Every backend name that `--backend` accepts without an import path."""
    return {**plugin_backends(), **BUILTIN_BACKENDS}


def import_object(path: str) -> Any:  # noqa: ANN401 - whatever the path names
    """Import ``package.module:attr`` (attr may be dotted)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        msg = f"{path!r} is not of the form package.module:Class"
        raise UnknownBackendError(msg)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        msg = f"cannot import {module_name!r} for backend {path!r}: {error}"
        raise UnknownBackendError(msg) from error
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as error:
            msg = f"{module_name!r} has no attribute {attribute!r}"
            raise UnknownBackendError(msg) from error
    return target


def backend_factory(name: str) -> BackendFactory:
    """The class (or factory) for a backend name or import path."""
    if name in BUILTIN_BACKENDS:
        return import_object(BUILTIN_BACKENDS[name])  # type: ignore[no-any-return]
    plugins = plugin_backends()
    if name in plugins:
        return import_object(plugins[name])  # type: ignore[no-any-return]
    if ":" in name:
        return import_object(name)  # type: ignore[no-any-return]
    names = sorted(available_backends())
    close = difflib.get_close_matches(name.lower(), names, n=1, cutoff=0.6)
    hint = f": did you mean {close[0]!r}?" if close else ""
    known = ", ".join(names)
    msg = f"unknown backend {name!r}{hint} (known: {known}; or give package.module:Class)"
    raise UnknownBackendError(msg)


def create_backend(name: str, options: Mapping[str, Any] | None = None) -> Backend:
    """Build a backend from its name and keyword options."""
    factory = backend_factory(name)
    try:
        backend = factory(**dict(options or {}))
    except TypeError as error:
        msg = f"backend {name!r} does not accept these options {sorted(options or {})}: {error}"
        raise UnknownBackendError(msg) from error
    if not isinstance(backend, Backend):
        msg = f"{name!r} did not build a backend (it lacks open/log_config/log_metrics/flush/close)"
        raise UnknownBackendError(msg)
    return backend
