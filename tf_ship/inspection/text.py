"""Terminal text: sparklines, column widths, escaped names, values as TorchFort writes them."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float]) -> str:
    """One block per value: ``▁`` for the lowest finite value to ``█`` for the highest.

    A space stands for a NaN or infinite value; ``▄`` for every value when all are equal.
    """
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return " " * len(values)
    low, high = min(finite), max(finite)
    span = high / 2 - low / 2  # halves: no overflow between -1e308 and 1e308
    top = len(BLOCKS) - 1
    blocks = []
    for value in values:
        if not math.isfinite(value):
            blocks.append(" ")
        elif span == 0:
            blocks.append(BLOCKS[top // 2])
        else:
            level = round((value / 2 - low / 2) / span * top)
            blocks.append(BLOCKS[min(max(level, 0), top)])
    return "".join(blocks)


def display_width(text: str) -> int:
    """Terminal columns `text` takes: wide East Asian characters 2, combining marks 0."""
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
        for char in text
    )


def printable(text: str) -> str:
    r"""`text` with control and other unprintable characters escaped (``\x85``)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` columns, with an ellipsis when cut."""
    if display_width(text) <= width:
        return text
    out = ""
    for char in text:
        if display_width(out + char) > width - 1:
            break
        out += char
    return out.rstrip() + "…"


def pad(text: str, width: int, *, right: bool = False) -> str:
    """`text` filled with spaces to `width` columns, on the left when `right`."""
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def format_value(value: float) -> str:
    """A value as TorchFort prints it: 6 significant digits, ``nan``, ``inf``, ``-inf``."""
    if math.isnan(value):
        return "nan"
    return f"{value:.6g}"


def decoded(raw: bytes) -> str:
    r"""Bytes of a log line as text: UTF-8, anything else escaped (``\xe9``)."""
    return raw.decode("utf-8", errors="backslashreplace")
