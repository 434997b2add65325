"""Tracker SDKs are imported one at a time: side by side they share the interpreter lock.

Importing wandb, mlflow or tensorboardX is seconds of pure Python work. Started together in their
backends' threads, the imports take turns on the interpreter lock every few milliseconds, and
each one ends about when the last one does; taken one after the other, the first backend ships
while the next imports (docs/performance.md, fan-out). A turn is awaited at most
`TURN_TIMEOUT`: an import that hangs holds the others back that long, not forever.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

TURN_TIMEOUT = 30.0
"""Seconds a backend waits for another backend's import before it imports anyway."""
_TURN = threading.Lock()


@contextlib.contextmanager
def import_turn() -> Iterator[None]:
    """Hold the SDK import turn (waiting at most `TURN_TIMEOUT` for it) while importing."""
    held = _TURN.acquire(timeout=TURN_TIMEOUT)
    try:
        yield
    finally:
        if held:
            _TURN.release()
