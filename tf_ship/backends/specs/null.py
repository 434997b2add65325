"""The null backend (`tf_ship.backends.null`) as the command line sees it."""

from __future__ import annotations

from tf_ship.backends.spec import BackendSpec

SPEC = BackendSpec(name="null", factory="tf_ship.backends.null:NullBackend")
