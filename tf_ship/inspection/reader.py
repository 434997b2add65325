"""Read a log once, through the engine's own tailer and parser, into a `LogReport`.

The tailer runs in its finished-file mode (the file as it was when opened, NUL bytes never held
back, as ``tf-ship --no-follow`` reads it at its end), so every line gets the verdict shipping
gives it: shipped, or skipped for the same reason. Memory stays bounded: one read block at a
time.
"""

from __future__ import annotations

from pathlib import Path

from tf_ship.inspection.report import InspectError, LogReport
from tf_ship.shipper.events import SkipReason
from tf_ship.shipper.parse import LineParser
from tf_ship.shipper.places import LOG_NAME
from tf_ship.shipper.tail import READ_BLOCK, Tailer

CHUNK_BYTES = READ_BLOCK
"""Bytes read at a time (at least one more than the longest line): the shipper's own, since
where a read ends can change the reason a line is skipped for."""


def resolve_log(log_or_dir: Path) -> Path:
    """The log file: `log_or_dir` itself, or ``torchfort.log`` in it when it is a directory."""
    path = log_or_dir / LOG_NAME if log_or_dir.is_dir() else log_or_dir
    if not path.is_file():
        what = f"no {LOG_NAME} in" if log_or_dir.is_dir() else "no such log file:"
        msg = f"{what} {log_or_dir}"
        raise InspectError(msg)
    return path


def read_log(report: LogReport, *, chunk_bytes: int, max_line_bytes: int) -> None:
    """Add every line of the log at ``report.path`` to `report`: events, skipped lines, counts.

    Raises `InspectError` when the file cannot be read, or changed below what was read already
    (truncated or rewritten while being read: the report would mix two files).
    """
    path = report.path
    tailer = Tailer(path, read_block=chunk_bytes, max_line_bytes=max_line_bytes, finished=True)
    parser = LineParser(max_line_bytes=max_line_bytes)
    try:
        while not _read_block(report, tailer, parser):
            pass
        partial = tailer.pending_partial()
        if partial is not None:
            report.add_skipped(partial)
            if partial.reason is SkipReason.INCOMPLETE:
                report.incomplete = partial
        report.lines = tailer.cursor.line_number
        report.bytes_read = tailer.end or 0
    except OSError as error:
        msg = f"cannot read {path}: {error.strerror or error}"
        raise InspectError(msg) from error
    finally:
        tailer.close()


def _read_block(report: LogReport, tailer: Tailer, parser: LineParser) -> bool:
    """Add what one read of the tailer finds, as the shipper's worker does; True at the end."""
    read = tailer.read()
    if not read.exists:
        msg = f"no such log file: {report.path}"
        raise InspectError(msg)
    if read.notices:  # the tailer would start again from the start of the file
        msg = f"{report.path} was truncated or rewritten while it was read: inspect it again"
        raise InspectError(msg)
    for line in read.skipped:
        report.add_skipped(line)
    chunk = read.chunk
    if chunk is not None:
        parsed = parser.parse(chunk.data, offset=chunk.offset, line_number=chunk.line_number)
        report.add_events(parsed.events)
        for line in parsed.skipped:
            report.add_skipped(line)
    return read.at_end
