"""The SDK import turn: one tracker SDK import at a time, and a hung one holds no one for long."""

from __future__ import annotations

import threading
import time

import pytest

from tf_ship.backends import imports
from tf_ship.backends.imports import import_turn


def test_imports_take_turns_in_the_order_they_asked() -> None:
    """A second import waits for the first to end; then it runs, and the turn is free again."""
    events: list[str] = []
    first_inside = threading.Event()
    let_first_go = threading.Event()

    def first() -> None:
        with import_turn():
            events.append("first in")
            first_inside.set()
            let_first_go.wait(10)
            events.append("first out")

    def second() -> None:
        with import_turn():
            events.append("second in")

    one = threading.Thread(target=first)
    one.start()
    assert first_inside.wait(10)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.2)
    assert two.is_alive()  # waiting for the turn, not importing beside the first
    let_first_go.set()
    one.join(10)
    two.join(10)
    assert events == ["first in", "first out", "second in"]
    with import_turn():  # released by both
        pass


def test_an_import_that_hangs_holds_the_others_back_only_until_the_turn_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After TURN_TIMEOUT the next backend imports anyway (and releases nothing it did not get)."""
    monkeypatch.setattr(imports, "TURN_TIMEOUT", 0.2)
    holding = threading.Event()
    release = threading.Event()

    def hung() -> None:
        with import_turn():
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hung)
    thread.start()
    assert holding.wait(10)
    started = time.monotonic()
    with import_turn():
        waited = time.monotonic() - started
    assert 0.2 <= waited < 5
    release.set()
    thread.join(10)
    with import_turn():  # the hung holder's release left the turn free
        pass


def test_a_failed_import_frees_the_turn() -> None:
    """An ImportError inside the turn reaches the backend, and the next import is not held."""
    with pytest.raises(ImportError), import_turn():
        import tf_ship_no_such_sdk  # type: ignore[import-not-found]  # noqa: F401, PLC0415
    assert imports._TURN.acquire(blocking=False)
    imports._TURN.release()
