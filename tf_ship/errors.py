"""The root of every error tf-ship raises on purpose, so that one ``except`` catches them all.

Each error keeps the standard base it always had (``except ValueError`` still catches a
`StateError`), and has `TfShipError` as a second base::

    TfShipError
    ├── BackendError                 tf_ship.contract: raised by a backend on purpose
    │   ├── PermanentBackendError    the tracker refused something for good: not retried
    │   └── FatalBackendError        the backend cannot go on at all: stopped at once
    ├── BackendFailedError           tf_ship.shipper.worker: a backend failed past its retries
    ├── CallTimeoutError             tf_ship.shipper.worker (a TimeoutError): a backend call
    │                                took too long; retried like an outage
    ├── UnknownBackendError          tf_ship.backends.registry (a LookupError): no such backend
    ├── LogNotFoundError             tf_ship.shipper.ship (a FileNotFoundError): no log came
    ├── ConfigError                  tf_ship.shipper.configs (a ValueError): an unusable config
    ├── StateError                   tf_ship.shipper.state (a ValueError): an unreadable state file
    ├── LockError                    tf_ship.shipper.lock (a RuntimeError): no lock on the state
    │   └── LockHeldError            another running process holds it
    ├── PlaceError                   tf_ship.shipper.places: a place tf-ship cannot write to
    ├── InspectError                 tf_ship.inspection: the log cannot be inspected
    ├── StartupError                 tf_ship.cli_options (a click.ClickException): fix, then rerun
    └── ConformanceError             tf_ship.testing (an AssertionError): a backend broke the
                                     contract
"""

from __future__ import annotations

__all__ = ["TfShipError"]


class TfShipError(Exception):
    """Root of the errors tf-ship raises on purpose; each also keeps its standard base."""
