"""Look at a TorchFort metric log without any tracker: what ``tf-ship inspect`` shows.

`inspect_log` reads the log once, through the engine's own tailer and parser (`reader`), so every
line gets the verdict shipping gives it, into a `LogReport` of bounded size (`report`,
`downsample`); it adds the configs beside the log (`configs`) and the MLflow key of each name
(`mlflow_keys`). `format_table` (`table`) and `write_plot` (`plot`) show the report.
"""

from __future__ import annotations

from pathlib import Path

from tf_ship.inspection.configs import find_configs
from tf_ship.inspection.downsample import SAMPLE_BUCKETS, Downsample
from tf_ship.inspection.mlflow_keys import assign_mlflow_keys
from tf_ship.inspection.plot import plot_figure, write_plot
from tf_ship.inspection.reader import CHUNK_BYTES, read_log, resolve_log
from tf_ship.inspection.report import ConfigProblem, InspectError, LogReport, Series, SkipSummary
from tf_ship.inspection.table import format_table
from tf_ship.inspection.text import display_width, format_value, printable, shorten, sparkline
from tf_ship.shipper.options import MAX_LINE_BYTES

__all__ = [
    "ConfigProblem",
    "Downsample",
    "InspectError",
    "LogReport",
    "Series",
    "SkipSummary",
    "display_width",
    "format_table",
    "format_value",
    "inspect_log",
    "plot_figure",
    "printable",
    "resolve_log",
    "shorten",
    "sparkline",
    "write_plot",
]


def inspect_log(
    log_or_dir: Path,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    max_line_bytes: int = MAX_LINE_BYTES.default,
    sample_buckets: int = SAMPLE_BUCKETS,
) -> LogReport:
    """Read a log (a ``torchfort.log`` file or its directory) once and report what it holds.

    Reads what the file holds when opened (a live log is not followed); the configs are looked
    for in the log's directory.
    """
    report = LogReport(resolve_log(log_or_dir), sample_buckets=sample_buckets)
    read_log(report, chunk_bytes=chunk_bytes, max_line_bytes=max_line_bytes)
    # reasons in the order of their first line
    ordered = sorted(report.skipped.values(), key=lambda summary: summary.first_lines[0])
    report.skipped = {summary.reason: summary for summary in ordered}
    assign_mlflow_keys(report)
    find_configs(report)
    return report
