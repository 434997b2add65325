"""The curves of ``tf-ship inspect --plot``: a panel per series, drawn with matplotlib's Agg."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tf_ship.inspection.report import InspectError, LogReport, Series
from tf_ship.inspection.text import printable, shorten

FEW_POINTS = 50
"""Curves with at most this many points are drawn with markers."""
PLOT_COLUMNS = 3
"""Panels side by side; one row of them per three series."""
PANEL_INCHES = (4.0, 2.6)
MAX_FIGURE_INCHES = 600.0
"""Agg draws at most 2**16 pixels a side: very many series get flatter panels."""


def plot_figure(report: LogReport) -> Any:  # noqa: ANN401 - a matplotlib Figure
    """Every series in a panel of its own, against its step (integer ticks), model by model.

    One panel per metric, so that a learning rate near 1e-4 is not a flat line under a loss near
    1. Needs matplotlib (``pip install "tf-ship[plot]"``); draws with the Agg canvas, so it
    needs no display and leaves matplotlib's global backend alone.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
        from matplotlib.ticker import MaxNLocator  # noqa: PLC0415
    except ImportError as error:
        msg = 'plotting needs matplotlib: pip install "tf-ship[plot]"'
        raise InspectError(msg) from error
    series_list = report.ordered_series()
    columns = max(1, min(PLOT_COLUMNS, len(series_list)))
    rows = max(1, -(-len(series_list) // columns))
    width, height = PANEL_INCHES
    figure = Figure(
        figsize=(width * columns, min(height * rows, MAX_FIGURE_INCHES)), layout="constrained"
    )
    FigureCanvasAgg(figure)
    if not series_list:
        figure.text(0.5, 0.5, f"{report.path.name}: no metric lines", ha="center")
        return figure
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for axis, series in zip(axes, series_list, strict=False):
        _draw_series(axis, series)
        axis.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10], integer=True))
    for axis in axes[len(series_list) :]:
        axis.set_visible(False)
    return figure


def _draw_series(axis: Any, series: Series) -> None:  # noqa: ANN401 - a matplotlib Axes
    steps, values = series.sample.curve()
    few = len(steps) <= FEW_POINTS  # markers, or lone points would not show
    axis.plot(steps, values, linewidth=1, marker="o" if few else None, markersize=3)
    finite = [v for v in values if not math.isnan(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
        axis.set_yscale("log")
    if not finite:
        note = f"no finite value ({series.nan_count} NaN, {series.inf_count} inf)"
        axis.text(0.5, 0.5, note, ha="center", va="center", transform=axis.transAxes)
    axis.set_title(shorten(printable(series.name), 60), loc="left", fontsize="medium")
    axis.set_xlabel("step")
    axis.grid(visible=True, alpha=0.3)


def write_plot(report: LogReport, path: Path) -> None:
    """Write `plot_figure` to a PNG file."""
    figure = plot_figure(report)
    try:
        figure.savefig(path, format="png", dpi=100)
    except OSError as error:
        msg = f"cannot write {path}: {error.strerror or error}"
        raise InspectError(msg) from error
