"""The built-in backends' specs: one module per backend in this package, each with a ``SPEC``.

Found by listing the package, so that a new built-in backend needs its spec module here and
nothing else in the command line. Importing them imports no tracker SDK.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from tf_ship.backends.spec import BackendSpec


@cache
def builtin_specs() -> tuple[BackendSpec, ...]:
    """Every built-in backend's spec, by name."""
    specs = []
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda found: found.name):
        spec = importlib.import_module(f"{__name__}.{module.name}").SPEC
        if not isinstance(spec, BackendSpec) or spec.name != module.name:
            msg = f"{__name__}.{module.name}.SPEC must be the BackendSpec named {module.name!r}"
            raise TypeError(msg)
        specs.append(spec)
    return tuple(specs)
