"""Help for testing backends: the conformance kit, and backends that record, fail or hang.

- `check_backend(factory)` drives a backend through the whole contract (`tf_ship.contract`) and
  raises `ConformanceError` naming the obligation it broke (see docs/writing-a-backend.md).
- `RecordingBackend`, `FailingBackend` and `HangingBackend` are real backends for tests of code
  around tf-ship: give them to `tf_ship.ship` or ``--backend tf_ship.testing:RecordingBackend``.
"""

from tf_ship.testing.conformance import ConformanceError, StoredEvent, check_backend
from tf_ship.testing.doubles import FailingBackend, HangingBackend, RecordingBackend

__all__ = [
    "ConformanceError",
    "FailingBackend",
    "HangingBackend",
    "RecordingBackend",
    "StoredEvent",
    "check_backend",
]
