"""MLflow calls that must not hold metrics back: tried now, again later, reported if never done.

A config that cannot be recorded right now (an artifact store that is down) must not keep the
model's metrics waiting for the engine's retries: docs/backends.md (MLflow, Configs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import attrs

from tf_ship.backends.base import FatalBackendError, PermanentBackendError
from tf_ship.backends.mlflow.errors import first_line

logger = logging.getLogger("tf_ship")
FIRST_DELAY = 2.0
MAX_DELAY = 60.0


@attrs.define
class DeferredCall:
    """One call, what it records (for messages), and what to undo when it is refused."""

    what: str
    call: Callable[[], None]
    on_refused: Callable[[], None] | None = None
    last_error: str = ""


@attrs.define
class Deferred:
    """Calls made in order; those that failed for now are tried again after a delay."""

    label: str
    """Prefix of every message, e.g. ``MLflow``."""
    clock: Callable[[], float] = time.monotonic
    calls: list[DeferredCall] = attrs.field(factory=list)
    _due: float = 0.0
    _delay: float = FIRST_DELAY

    def add(
        self, what: str, call: Callable[[], None], on_refused: Callable[[], None] | None = None
    ) -> None:
        """Queue a call behind the others."""
        self.calls.append(DeferredCall(what, call, on_refused))

    def run(self, *, now: bool = False) -> None:
        """Make the queued calls, unless waiting after a failure (`now` does not wait)."""
        if not self.calls or (not now and self.clock() < self._due):
            return
        while self.calls:
            item = self.calls[0]
            try:
                item.call()
            except FatalBackendError:
                raise
            except PermanentBackendError as error:
                logger.warning("%s: %s not recorded: %s", self.label, item.what, error)
                if item.on_refused is not None:
                    item.on_refused()
            except Exception as error:  # noqa: BLE001 - any other error may pass: try later
                if not item.last_error:
                    logger.warning(
                        "%s: %s not recorded yet (%s: %s); metrics go on, tried again in %g s",
                        self.label,
                        item.what,
                        type(error).__name__,
                        first_line(error),
                        self._delay,
                    )
                item.last_error = f"{type(error).__name__}: {first_line(error)}"
                self._due = self.clock() + self._delay
                self._delay = min(self._delay * 2, MAX_DELAY)
                return
            self.calls.pop(0)
        self._delay = FIRST_DELAY

    def abandon(self) -> None:
        """Report every call still queued as not recorded, and forget them."""
        for item in self.calls:
            reason = item.last_error or "the run ended first"
            logger.warning("%s: %s not recorded (%s)", self.label, item.what, reason)
        self.calls.clear()
