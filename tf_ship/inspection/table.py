"""The plain-text report of ``tf-ship inspect``: the series table, configs, skipped lines."""

from __future__ import annotations

from tf_ship.inspection.report import LogReport
from tf_ship.inspection.text import (
    decoded,
    display_width,
    format_value,
    pad,
    printable,
    shorten,
    sparkline,
)

TABLE_WIDTH = 100
NAME_WIDTH = 20
"""Model and metric names longer than this are shortened in the table (never in JSON)."""
MIN_SPARK_WIDTH = 8
MAX_SPARK_WIDTH = 40
_HEADERS = ("model", "metric", "count", "steps", "last", "NaN", "inf")
_RIGHT = (False, False, True, False, True, True, True)
_GAP = "  "


def format_table(report: LogReport, width: int | None = None) -> str:  # noqa: C901, PLR0912, PLR0915 - one section after the other
    """The report as plain text: the series table, configs, skipped lines.

    `width` is the sparkline's; None fits the table into 100 columns where names allow.
    """
    lines = [
        (
            f"{report.path}: {report.lines} lines, {report.events} metric lines, "
            f"{report.skipped_count} skipped, {len(report.series)} series in "
            f"{len(report.models())} models"
        )
    ]
    ordered = report.ordered_series()
    rows = []
    for series in ordered:
        steps = f"{series.first_step}"
        if series.last_step != series.first_step or series.count > 1:
            steps += f"..{series.last_step}"
        rows.append(
            (
                shorten(printable(series.model), NAME_WIDTH),
                shorten(printable(series.metric), NAME_WIDTH),
                str(series.count),
                steps,
                format_value(series.last_value),
                str(series.nan_count),
                str(series.inf_count),
            )
        )
    widths = [
        max([display_width(header), *(display_width(row[i]) for row in rows)])
        for i, header in enumerate(_HEADERS)
    ]
    if width is None:
        free = TABLE_WIDTH - sum(widths) - len(_GAP) * len(widths)
        width = max(MIN_SPARK_WIDTH, min(MAX_SPARK_WIDTH, free))
    if rows:
        lines.append("")
        header = [pad(h, w, right=r) for h, w, r in zip(_HEADERS, widths, _RIGHT, strict=True)]
        lines.append(_GAP.join([*header, "curve"]).rstrip())
    indent = " " * 4
    for series, row in zip(ordered, rows, strict=True):
        cells = [pad(c, w, right=r) for c, w, r in zip(row, widths, _RIGHT, strict=True)]
        curve = sparkline(series.sample.columns(width))
        lines.append(_GAP.join([*cells, curve]).rstrip())
        if series.backwards:
            times = "once" if series.backwards == 1 else f"{series.backwards} times"
            lines.append(
                f"{indent}steps go backwards ({times}; a restart?): "
                f"min {series.min_step}, max {series.max_step}"
            )
        key = report.mlflow_keys[series.name]
        others = report.collisions.get(series.name)
        if key != series.name or others:
            shown = printable(key) if key != series.name else "unchanged"
            note = f"{indent}MLflow key: {shown}"
            if others:
                note += "  COLLISION with " + ", ".join(repr(printable(o)) for o in others)
            lines.append(note)
    if not rows:
        lines.extend(["", "no metric lines"])
    lines.extend(["", "configs:" if report.configs else "configs: none"])
    lines.extend(
        f"{indent}{printable(model)} -> {path.name}" for model, path in report.configs.items()
    )
    missing = report.models_without_config()
    if missing:
        lines.append("models without config: " + ", ".join(printable(m) for m in missing))
    if report.config_problems:
        lines.append("config files not used:")
        lines.extend(
            shorten(f"{indent}{problem.path.name}: {problem.error}", TABLE_WIDTH)
            for problem in report.config_problems
        )
    lines.extend(["", "skipped lines:" if report.skipped else "skipped lines: none"])
    reason_width = max((len(s.reason.value) for s in report.skipped.values()), default=0)
    count_width = max((len(str(s.count)) for s in report.skipped.values()), default=0)
    for summary in report.skipped.values():
        numbers = ", ".join(str(n) for n in summary.first_lines)
        more = ", ..." if summary.count > len(summary.first_lines) else ""
        label = "line" if summary.count == 1 else "lines"
        lines.append(
            f"{indent}{summary.reason.value:<{reason_width}}  {summary.count:>{count_width}}"
            f"  {label} {numbers}{more}"
        )
        if summary.first_excerpt.strip():
            excerpt = shorten(printable(decoded(summary.first_excerpt)), 80)
            lines.append(f"{indent}{indent}first: {excerpt}")
    return "\n".join(lines) + "\n"
