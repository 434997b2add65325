"""Doubles for JSON, which has no NaN or infinity: those are written as strings.

Two spellings: tf-ship's own JSON (``tf-ship inspect --json``, the jsonl backend; see
docs/backends.md) and protobuf's, which MLflow's REST API reads.
"""

from __future__ import annotations

import math

NonFinite = tuple[str, str, str]
"""How NaN, +inf and -inf are written."""
PLAIN: NonFinite = ("nan", "inf", "-inf")
PROTOBUF: NonFinite = ("NaN", "Infinity", "-Infinity")


def json_number(value: float, spelling: NonFinite = PLAIN) -> float | str:
    """A finite double as it is; NaN and infinities as the strings of `spelling`."""
    if math.isfinite(value):
        return value
    nan, infinity, negative_infinity = spelling
    if math.isnan(value):
        return nan
    return infinity if value > 0 else negative_infinity


def protobuf_json_number(value: float) -> float | str:
    """A double as protobuf's JSON writes it: ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""
    return json_number(value, PROTOBUF)
