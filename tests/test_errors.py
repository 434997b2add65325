"""One error tree: every exception class tf-ship defines has `TfShipError` as its root."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import tf_ship
from tf_ship import errors
from tf_ship.errors import TfShipError

NOT_RAISED_TO_USERS = {"TransactionLogError"}
"""Raised by the reader of wandb's transaction log, which only tests use."""


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a tf_ship module, by name."""
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(tf_ship.__path__, "tf_ship."):
        if module_info.name == "tf_ship.__main__":
            continue  # runs the command line
        module = importlib.import_module(module_info.name)
        found.update(
            (name, value)
            for name, value in vars(module).items()
            if inspect.isclass(value)
            and issubclass(value, BaseException)
            and value.__module__ == module.__name__
        )
    return found


def test_every_error_has_the_common_root() -> None:
    """``except TfShipError`` catches whatever tf-ship raises on purpose."""
    classes = exception_classes()
    assert "InspectError" in classes
    outside = sorted(
        name
        for name, cls in classes.items()
        if not issubclass(cls, TfShipError) and name not in NOT_RAISED_TO_USERS
    )
    assert outside == []


def test_the_tree_in_the_docstring_names_every_error() -> None:
    """errors.py draws each error of the tree."""
    doc = errors.__doc__ or ""
    missing = sorted(
        name
        for name, cls in exception_classes().items()
        if issubclass(cls, TfShipError) and name not in doc.split()
    )
    assert missing == []
