r"""Turn complete lines of a TorchFort log into metric events, on bytes.

The grammar (see docs/log-format.md)::

    TORCHFORT::WANDB: model: <NAME>, step: <INT64>, <METRIC>: <VALUE>\\n

The step is the first ``, step: <signed int>, `` after the prefix, the value is what follows the
last ``": "``, and the metric is what lies between. One compiled regular expression scans a
whole chunk at once (much faster than line by line); whatever lies between two matches is a
line that is not a metric line, and is classified, counted and reported, never shipped.

Most chunks hold nothing but metric lines with plain names, and take a fast path first: a simpler
expression (model without ``,``, metric without ``:``, value of number characters only) that
CPython's regex engine runs about twice as fast, the values checked by ``float()`` itself, the
events built column by column. A chunk it is not sure about (a line it does not match, a value
``float()`` refuses, a step out of range, an over-long line) goes to the general path whole, so
both paths give the same events.

A NUL byte starts a line too: network filesystems show not-yet-written pages as NUL runs, and the
valid text after such a run must not be lost with it. Text before a NUL run is a half-written line
(its end is missing): it is reported, never shipped.
"""

from __future__ import annotations

import itertools
import operator
import re
import sys
from collections.abc import Callable, Sequence

import attrs

from tf_ship.contract import FileIdentity, MetricEvent
from tf_ship.shipper.events import EventColumns, SkippedLine, SkipReason
from tf_ship.shipper.options import MAX_LINE_BYTES

PREFIX = b"TORCHFORT::WANDB: "
_NAME = rb"[^\n\x00]*?"  # may be empty: the step is the FIRST step field
_VALUE = rb"[-+]?(?:[0-9]+\.?[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?|(?i:nan|inf))"
METRIC_LINE = re.compile(
    rb"(?<![^\n\x00])TORCHFORT::WANDB: model: (" + _NAME + rb"), step: (-?[0-9]+), "
    rb"([^\n\x00]+): (" + _VALUE + rb")\r?(?=\n)",
)
POSSESSIVE = sys.version_info >= (3, 11)
"""Whether `re` has possessive quantifiers (``*+``, ``++``): from Python 3.11."""


def clean_line_pattern(*, possessive: bool = POSSESSIVE) -> bytes:
    """The fast path's expression, spelled with possessive quantifiers or (Python 3.10) without.

    Both spellings match the same: each repeated class excludes the character that must follow
    it (``,`` after the model, ``,`` after the step, ``:`` after the metric, a line end after
    the value), so backtracking into a repetition can never lead to a match. Possessive ones
    only spare the engine from trying, which makes the fast path faster on 3.11+.
    """
    once = b"+" if possessive else b""
    return (
        rb"\nTORCHFORT::WANDB: model: ([^\n,]*" + once + rb"), step: (-?[0-9]+" + once + rb"), "
        rb"([^\n:]+" + once + rb"): ([-+.0-9eEnNaAiIfF]+" + once + rb")\r?(?=\n)"
    )


# The fast path's line, simpler than METRIC_LINE's: where its value is a number, METRIC_LINE
# matches the line with the same groups (see LineParser._parse_clean). Searched in b"\n" + chunk:
# the leading newline anchors each match at a line start and is a literal prefix the engine
# searches for quickly; nothing backtracks.
CLEAN_LINE = re.compile(clean_line_pattern())
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


def parse_step(raw: bytes) -> int | None:
    """The int64 a step field (``-?[0-9]+``) holds, or None when it is out of range.

    Never raises: Python refuses to convert more than 4300 digits, so leading zeros are
    dropped first and a number with more than 19 digits left is out of range anyway.
    """
    digits = raw.lstrip(b"-").lstrip(b"0")
    if len(digits) > 19:  # int64 holds at most 19 decimal digits
        return None
    step = int(digits or b"0")
    if raw.startswith(b"-"):
        step = -step
    return step if INT64_MIN <= step <= INT64_MAX else None


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
    if parse_step(step.group(1)) is None:
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

    events: Sequence[MetricEvent]
    """A list, or (the fast path) `EventColumns`, which makes the objects when first used."""
    skipped: list[SkippedLine]
    lines: int


@attrs.define
class LineParser:
    """Parses chunks of complete lines; keeps a cache of decoded names across chunks."""

    max_line_bytes: int = MAX_LINE_BYTES.default
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
        lines: int | None = None,
    ) -> ParsedChunk:
        """Parse `chunk`, which must end with a newline, found at byte `offset` of the file.

        `line_number` is the number of lines before the chunk; reported line numbers are 1-based.
        `lines` is the chunk's number of newlines when the caller counted them already (the
        tailer does), so that a large chunk is not counted twice.
        """
        if lines is None:
            lines = chunk.count(b"\n")
        if chunk.endswith(b"\n") and b"\x00" not in chunk:
            events = self._parse_clean(chunk, offset, file, lines)
            if events is not None:
                return ParsedChunk(events, [], lines)
        return self._parse_any(chunk, offset, line_number, file, lines)

    def _parse_clean(
        self, chunk: bytes, offset: int, file: FileIdentity | None, lines: int
    ) -> EventColumns | None:
        r"""The events of a chunk whose lines are all valid metric lines; None when unsure.

        The chunk ends with a newline and holds no NUL byte (which would start a line for
        METRIC_LINE, not for CLEAN_LINE).

        Each match of CLEAN_LINE starts at a newline of ``b"\n" + chunk`` and ends before the
        next one; the text split off around the matches is empty between them and is the final
        newline after the last only when the matches cover every line. METRIC_LINE matches such
        a line with the same groups when ``float()`` reads its value: the model holds no ``,``,
        so the ``, step: `` after it is the first step field; the metric and the value hold no
        ``:``, so the ``": "`` between them is the last one; over the value's characters
        ``float()`` reads exactly the grammar's <VALUE> (no ``_``, whitespace or "infinity" can
        occur). A value it refuses sends the chunk to the general path, as do an out-of-range
        step and an over-long line.
        """
        # split, not findall: a flat list, without a tuple per line for the collector to track
        parts = CLEAN_LINE.split(b"\n" + chunk)
        if len(parts) != 5 * lines + 1 or not lines or parts[-1] != b"\n" or any(parts[0:-1:5]):
            return None  # some text lies outside the matches: a line CLEAN_LINE does not take
        raw_models, raw_steps = parts[1::5], parts[2::5]
        raw_metrics, raw_values = parts[3::5], parts[4::5]
        try:
            values = list(map(float, raw_values))
        except ValueError:
            return None
        try:
            steps = list(map(int, raw_steps))
        except ValueError:  # more than 4300 digits: the general path says whether in range
            return None
        if min(steps) < INT64_MIN or max(steps) > INT64_MAX:
            return None
        lengths = list(map(len, chunk.split(b"\n")))
        lengths.pop()  # after the last newline
        if len(chunk) > self.max_line_bytes and max(lengths) > self.max_line_bytes:
            return None
        try:  # names seen before: no set of this chunk's names to build
            models = list(map(self._names.__getitem__, raw_models))
            metrics = list(map(self._names.__getitem__, raw_metrics))
        except KeyError:
            names = {raw: self._name(raw) for raw in {*raw_models, *raw_metrics}}
            models = list(map(names.__getitem__, raw_models))
            metrics = list(map(names.__getitem__, raw_metrics))
        starts = itertools.accumulate(
            map(operator.add, lengths, itertools.repeat(1)), initial=offset
        )
        offsets = list(starts)
        offsets.pop()  # where the line after the last one would start
        return EventColumns(models, metrics, steps, values, file, offsets)

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
            step = parse_step(raw_step)
            if end - start > max_len:
                skipped.append(_skipped(SkipReason.TOO_LONG, chunk, start, offset, line_number))
            elif step is not None:
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
