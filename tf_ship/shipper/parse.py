r"""Turn complete lines of a TorchFort log into metric events, on bytes.

The grammar (see docs/log-format.md)::

    TORCHFORT::WANDB: model: <NAME>, step: <INT64>, <METRIC>: <VALUE>\\n

The step is the first ``, step: <signed int>, `` after the prefix, the value is what follows the
last ``": "``, and the metric is what lies between. One compiled regular expression scans a
whole chunk at once (much faster than line by line); whatever lies between two matches is a
line that is not a metric line, and is classified, counted and reported, never shipped.
When every line of a chunk is a valid metric line (the usual case), the events are built column
by column instead, which gives the same events about twice as fast.

A NUL byte starts a line too: network filesystems show not-yet-written pages as NUL runs, and the
valid text after such a run must not be lost with it. Text before a NUL run is a half-written line
(its end is missing): it is reported, never shipped.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Callable

import attrs

from tf_ship.shipper.events import (
    FileIdentity,
    MetricEvent,
    SkippedLine,
    SkipReason,
    metric_events,
)

PREFIX = b"TORCHFORT::WANDB: "
_NAME = rb"[^\n\x00]*?"  # may be empty: the step is the FIRST step field
_VALUE = rb"[-+]?(?:[0-9]+\.?[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?|(?i:nan|inf))"
METRIC_LINE = re.compile(
    rb"(?<![^\n\x00])TORCHFORT::WANDB: model: (" + _NAME + rb"), step: (-?[0-9]+), "
    rb"([^\n\x00]+): (" + _VALUE + rb")\r?(?=\n)",
)
_STEP_FIELD = re.compile(rb", step: (-?[0-9]+), ")
_VALUE_ONLY = re.compile(_VALUE + rb"\r?")
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
EXCERPT_BYTES = 120
_NAME_CACHE_LIMIT = 65536


def decode_name(raw: bytes) -> str:
    """Decode a model or metric name: UTF-8 when it is, Latin-1 (which never fails) otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def classify(line: bytes) -> SkipReason:  # noqa: PLR0911 - one return per reason
    """Say why a line (without its newline) is not a valid metric line."""
    if not line.strip(b"\r"):
        return SkipReason.EMPTY
    if b"\x00" in line:
        return SkipReason.NUL_BYTES
    if not line.startswith(PREFIX + b"model: "):
        return SkipReason.NOT_A_METRIC_LINE
    step = _STEP_FIELD.search(line)
    if step is None:
        return SkipReason.NOT_A_METRIC_LINE
    if not INT64_MIN <= int(step.group(1)) <= INT64_MAX:
        return SkipReason.BAD_STEP
    head, sep, value = line.rpartition(b": ")
    if not sep or len(head) <= step.end():
        return SkipReason.NOT_A_METRIC_LINE
    if _VALUE_ONLY.fullmatch(value) is None:
        return SkipReason.BAD_VALUE
    return SkipReason.NOT_A_METRIC_LINE  # pragma: no cover - a line the regex accepts


@attrs.define
class ParsedChunk:
    """What one chunk of complete lines held."""

    events: list[MetricEvent]
    skipped: list[SkippedLine]
    lines: int


@attrs.define
class LineParser:
    """Parses chunks of complete lines; keeps a cache of decoded names across chunks."""

    max_line_bytes: int = 1 << 20
    _names: dict[bytes, str] = attrs.field(factory=dict, init=False)

    def _name(self, raw: bytes) -> str:
        name = self._names.get(raw)
        if name is None:
            name = decode_name(raw)
            if len(self._names) < _NAME_CACHE_LIMIT:
                self._names[raw] = name
        return name

    def parse(
        self,
        chunk: bytes,
        *,
        offset: int = 0,
        line_number: int = 0,
        file: FileIdentity | None = None,
    ) -> ParsedChunk:
        """Parse `chunk`, which must end with a newline, found at byte `offset` of the file.

        `line_number` is the number of lines before the chunk; reported line numbers are 1-based.
        """
        lines = chunk.count(b"\n")
        if chunk.endswith(b"\n") and b"\x00" not in chunk:
            events = self._parse_clean(chunk, offset, file, lines)
            if events is not None:
                return ParsedChunk(events, [], lines)
        return self._parse_any(chunk, offset, line_number, file, lines)

    def _parse_clean(
        self, chunk: bytes, offset: int, file: FileIdentity | None, lines: int
    ) -> list[MetricEvent] | None:
        """The events of a chunk whose lines are all valid metric lines; None for any other.

        Without NUL bytes each line holds at most one match, which starts at the line's start
        and ends at its newline: as many matches as lines means every line is a metric line.
        """
        found = METRIC_LINE.findall(chunk)
        if len(found) != lines:
            return None
        if not found:
            return []
        lengths = list(map(len, chunk.split(b"\n")))
        lengths.pop()  # after the last newline
        if max(lengths) > self.max_line_bytes:
            return None
        raw_models, raw_steps, raw_metrics, raw_values = zip(*found, strict=True)
        steps = list(map(int, raw_steps))
        if min(steps) < INT64_MIN or max(steps) > INT64_MAX:
            return None
        names = {raw: self._name(raw) for raw in {*raw_models, *raw_metrics}}
        starts = itertools.accumulate(
            map(operator.add, lengths, itertools.repeat(1)), initial=offset
        )
        return metric_events(
            map(names.__getitem__, raw_models),
            map(names.__getitem__, raw_metrics),
            steps,
            map(float, raw_values),
            files=itertools.repeat(file),
            offsets=starts,
            count=lines,
        )

    def _parse_any(
        self,
        chunk: bytes,
        offset: int,
        line_number: int,
        file: FileIdentity | None,
        lines: int,
    ) -> ParsedChunk:
        """Match by match: any chunk, whatever its lines hold."""
        events: list[MetricEvent] = []
        skipped: list[SkippedLine] = []
        append = events.append
        name = self._name
        max_len = self.max_line_bytes
        next_line = 0  # where the line after the previous match starts
        for match in METRIC_LINE.finditer(chunk):
            start = match.start()
            if start != next_line:
                _skip_gap(chunk, next_line, start, offset, line_number, max_len, skipped.append)
            end = match.end()
            next_line = end + 1
            raw_model, raw_step, raw_metric, raw_value = match.groups()
            step = int(raw_step)
            if end - start > max_len:
                skipped.append(_skipped(SkipReason.TOO_LONG, chunk, start, offset, line_number))
            elif INT64_MIN <= step <= INT64_MAX:
                append(
                    MetricEvent(
                        name(raw_model),
                        name(raw_metric),
                        step,
                        float(raw_value),
                        file,
                        offset + start,
                    )
                )
            else:
                skipped.append(_skipped(SkipReason.BAD_STEP, chunk, start, offset, line_number))
        if next_line < len(chunk):
            _skip_gap(chunk, next_line, len(chunk), offset, line_number, max_len, skipped.append)
        return ParsedChunk(events, skipped, lines)


def _skipped(
    reason: SkipReason, chunk: bytes, start: int, offset: int, line_number: int
) -> SkippedLine:
    number = line_number + chunk.count(b"\n", 0, start) + 1
    line_end = chunk.find(b"\n", start, start + EXCERPT_BYTES)
    excerpt = chunk[start : start + EXCERPT_BYTES if line_end < 0 else line_end]
    return SkippedLine(reason, offset + start, number, excerpt)


def _skip_gap(  # noqa: PLR0913, PLR0917 - a hot path: positional on purpose
    chunk: bytes,
    start: int,
    stop: int,
    offset: int,
    line_number: int,
    max_len: int,
    report: Callable[[SkippedLine], None],
) -> None:
    """Report what lies between two metric lines: whole bad lines and a bad prefix before NULs."""
    position = start
    while position < stop:
        newline = chunk.find(b"\n", position, stop)
        piece_end = stop if newline < 0 else newline
        piece = chunk[position:piece_end]
        if newline < 0 and not piece:
            break
        if len(piece) > max_len:
            reason = SkipReason.TOO_LONG
        else:
            reason = classify(piece.rstrip(b"\x00") if piece.strip(b"\x00") else piece)
            if b"\x00" in piece:
                reason = SkipReason.NUL_BYTES
        report(_skipped(reason, chunk, position, offset, line_number))
        if newline < 0:
            break
        position = newline + 1
