r"""Bad input through the whole pipeline: tailer, parser, worker, backend.

A log is built from a random interleaving of valid metric lines (names with spaces, ``": "``,
``", step: "``, non-UTF-8 bytes; any int64 step; ``%g`` values, nan and inf) and garbage
(arbitrary bytes, NUL runs, over-long lines, invalid UTF-8, ``\r``, near misses of the grammar).
Every item knows what it must give: an event, a skip with its reason, or both (a NUL run followed
by a valid line on the same line: the NULs are reported, the line is shipped). The garbage is
built so that it cannot contain a valid line by accident.

The recorded events must be exactly the valid lines, in order, and the skip counts exactly the
garbage: one-shot, and again with the log written in random pieces while a follow-mode shipper
runs. Huge lines (50 MB, with and without a newline) are skipped in bounded memory.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import attrs
import psutil  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tf_ship
from tf_ship.shipper.events import MetricEvent, SkipReason
from tf_ship.shipper.parse import INT64_MAX, INT64_MIN, LineParser
from tf_ship.shipper.ship import ShipOptions, Shipper, ShipReport
from tf_ship.shipper.tail import Tailer
from tf_ship.shipper.worker import newline_counter
from tf_ship.testing import RecordingBackend

PREFIX = b"TORCHFORT::WANDB: "
HEAD = PREFIX + b"model: "
_STEP_FIELD = re.compile(rb", step: -?[0-9]+, ")
Fields = tuple[str, str, int, float]
"""(model, metric, step, value) of one event."""


def decode(raw: bytes) -> str:
    """The contract's decoding of a name: UTF-8 when it is, Latin-1 otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@attrs.frozen
class Item:
    """One line of the generated log (without its newline) and what it must give."""

    text: bytes
    event: Fields | None = None
    reason: SkipReason | None = None
    """The reason of the one skip the line gives (with or without an event), None for none."""
    nul_split: bool = False
    """A NUL run then a valid line, the whole longer than the limit: the valid line is shipped
    all the same, the skip before it may be TOO_LONG instead of NUL_BYTES."""

    def expect(
        self, max_line_bytes: int, *, terminated: bool
    ) -> tuple[Fields | None, list[SkipReason]]:
        """What the line gives under a length limit, terminated by a newline or not (at EOF)."""
        if not terminated:
            if not self.text:
                return None, []
            if len(self.text) > max_line_bytes:
                return None, [SkipReason.TOO_LONG]
            return None, [SkipReason.INCOMPLETE]
        if len(self.text) > max_line_bytes and not self.nul_split:
            return None, [SkipReason.TOO_LONG]
        return self.event, [] if self.reason is None else [self.reason]


# -- valid lines --------------------------------------------------------------------------------

TRICKY_NAMES = [
    b"episode reward",
    b"l2 error (rel.)",
    b"a: b",
    b"x, step: 5, y",
    b"x, step: , y",
    b"loss:",
    b": ",
    b"caf\xe9",
    b"\xff\xfe",
    b"\xe2\x82",
    b"\xc3\xa9t\xc3\xa9",
    b"tab\there",
    b"cr\rinside",
    b"TORCHFORT::WANDB: model: x",
]
name_bytes = st.one_of(
    st.sampled_from(TRICKY_NAMES),
    st.text(
        st.characters(blacklist_characters="\n\x00", blacklist_categories=["Cs"]),
        min_size=1,
        max_size=16,
    ).map(str.encode),
    st.binary(min_size=1, max_size=16).map(lambda b: b.replace(b"\n", b"_").replace(b"\0", b"_")),
)
steps = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([0, -1, INT64_MIN, INT64_MAX, 2**53 + 1]),
)
value_texts = st.one_of(
    st.floats(allow_nan=False).map(lambda v: "%g" % v),  # noqa: UP031 - C++ prints like %g
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        ["nan", "-nan", "inf", "-inf", "-0", "0", "1e+300", "4.94066e-324", "1e-05", "100000"]
    ),
)


def model_is_unambiguous(model: bytes, step: int) -> bool:
    """True when the first step field after the prefix is the one that follows `model`.

    A model name holding ``", step: N, "`` itself is read differently by the grammar (the
    first step field wins): not a name TorchFort users write, and not what this item claims.
    """
    found = _STEP_FIELD.search(model + b", step: %d, " % step)
    return found is not None and found.start() == len(model)


@st.composite
def valid_items(draw: st.DrawFn) -> Item:
    """A metric line as TorchFort writes it (sometimes with CRLF), and its event."""
    model = draw(st.one_of(st.just(b""), name_bytes))
    metric = draw(name_bytes)
    step = draw(steps)
    value = draw(value_texts)
    if not model_is_unambiguous(model, step):
        model = b"m"
    crlf = draw(st.booleans()) and draw(st.booleans())
    text = b"%s%s, step: %d, %s: %s%s" % (
        HEAD,
        model,
        step,
        metric,
        value.encode(),
        b"\r" if crlf else b"",
    )
    return Item(text, (decode(model), decode(metric), step, float(value)))


@st.composite
def nul_then_valid(draw: st.DrawFn, max_line_bytes: int) -> Item:
    """A NUL run (after some half-written text or none) and then a valid line, on one line.

    A NUL starts a line: the valid line is shipped whatever the length of the NUL run, and the
    text up to it is one skip. When the whole line is longer than the limit, that skip is
    TOO_LONG or NUL_BYTES depending on where the tailer's read blocks fall (it is TOO_LONG
    whenever the part before the valid line is itself too long).
    """
    valid = draw(valid_items())
    before = draw(st.one_of(st.just(b""), st.just(HEAD + b"m, step: 1, lo"), safe_bytes(20)))
    nuls = b"\0" * draw(
        st.one_of(st.integers(1, 64), st.integers(max_line_bytes - 64, 3 * max_line_bytes))
    )
    text = before + nuls + valid.text
    if len(before + nuls) > max_line_bytes:
        return Item(text, valid.event, SkipReason.TOO_LONG, nul_split=True)
    return Item(text, valid.event, SkipReason.NUL_BYTES, nul_split=len(text) > max_line_bytes)


# -- garbage ------------------------------------------------------------------------------------


def defuse(data: bytes) -> bytes:
    """Make bytes unable to start a metric line (they never hold a newline or NUL already)."""
    return b"#" + data if data.startswith(b"T") else data


def safe_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes without newline or NUL that cannot start a metric line."""
    return st.binary(max_size=max_size).map(
        lambda b: defuse(b.replace(b"\n", b"").replace(b"\0", b""))
    )


def reason_of_plain(text: bytes) -> SkipReason:
    """The reason for a line without NUL that is not a metric line."""
    return SkipReason.EMPTY if not text.strip(b"\r") else SkipReason.NOT_A_METRIC_LINE


arbitrary_garbage = safe_bytes(120).map(lambda t: Item(t, None, reason_of_plain(t)))


@st.composite
def nul_garbage(draw: st.DrawFn) -> Item:
    """NUL runs mixed with text, where nothing after the last NUL can be a metric line."""
    parts = draw(
        st.lists(
            st.tuples(safe_bytes(20), st.integers(1, 300).map(lambda n: b"\0" * n)),
            min_size=1,
            max_size=3,
        )
    )
    tail = draw(st.one_of(safe_bytes(20), st.just(HEAD + b"m, step: 1, loss")))
    text = b"".join(a + b for a, b in parts) + tail
    return Item(text, None, SkipReason.NUL_BYTES)


near_misses = st.sampled_from(
    [
        Item(HEAD + b"m, step: 1, loss: 1,234.57", None, SkipReason.BAD_VALUE),
        Item(HEAD + b"m, step: 1, loss: 0,001", None, SkipReason.BAD_VALUE),
        Item(HEAD + b"m, step: 1, loss: abc", None, SkipReason.BAD_VALUE),
        Item(HEAD + b"m, step: 1, loss: 1\r\r", None, SkipReason.BAD_VALUE),
        Item(HEAD + b"m, step: 9223372036854775808, loss: 1", None, SkipReason.BAD_STEP),
        Item(HEAD + b"m, step: -9223372036854775809, loss: 1", None, SkipReason.BAD_STEP),
        Item(HEAD + b"m, step: 1.5, loss: 1", None, SkipReason.NOT_A_METRIC_LINE),
        Item(HEAD + b"m, step: 1, loss", None, SkipReason.NOT_A_METRIC_LINE),
        Item(HEAD + b"m, step: 1, : 1", None, SkipReason.NOT_A_METRIC_LINE),
        Item(b"TORCHFORT::INFO: model: m, step: 1, loss: 1", None, SkipReason.NOT_A_METRIC_LINE),
        Item(b" " + HEAD + b"m, step: 1, loss: 1", None, SkipReason.NOT_A_METRIC_LINE),
        Item(b"\r" + HEAD + b"m, step: 1, loss: 1", None, SkipReason.NOT_A_METRIC_LINE),
        Item(b"", None, SkipReason.EMPTY),
        Item(b"\r", None, SkipReason.EMPTY),
        Item(b"\r\r", None, SkipReason.EMPTY),
    ]
)


@st.composite
def sized_lines(draw: st.DrawFn, max_line_bytes: int) -> Item:
    """A line of a length around the limit, or past it.

    Either a metric line padded in its metric name (valid at the limit, too long past it) or a
    long line of plain text.
    """
    length = draw(
        st.one_of(
            st.integers(max_line_bytes - 2, max_line_bytes + 2),
            st.integers(max_line_bytes + 1, 3 * max_line_bytes),
        )
    )
    if draw(st.booleans()):
        head = HEAD + b"m, step: 7, "
        tail = b": 1.5"
        pad = max(1, length - len(head) - len(tail))
        text = head + b"p" * pad + tail
        return Item(text, ("m", "p" * pad, 7, 1.5))
    return Item(b"x" * length, None, reason_of_plain(b"x"))


@st.composite
def logs(draw: st.DrawFn) -> tuple[list[Item], bool, int]:
    """Items of a log, whether the last one has its newline, and the line length limit."""
    max_line_bytes = draw(st.integers(220, 600))
    items = draw(
        st.lists(
            st.one_of(
                valid_items(),
                valid_items(),
                nul_then_valid(max_line_bytes),
                arbitrary_garbage,
                nul_garbage(),
                near_misses,
                sized_lines(max_line_bytes),
            ),
            max_size=40,
        )
    )
    # a NUL-split line cut off at EOF may be one skip or two (the NUL run, then the incomplete
    # rest), depending on the read blocks: give it its newline
    terminated = draw(st.booleans()) or not items or items[-1].nul_split
    return items, terminated, max_line_bytes


def build(items: list[Item], *, terminated: bool) -> bytes:
    """The bytes of the log."""
    data = b"".join(item.text + b"\n" for item in items)
    return data if terminated else data[:-1]


@attrs.frozen
class Skips:
    """The skips a log must give.

    Exact counts by reason, plus `either` skips that may be counted as TOO_LONG or NUL_BYTES.
    """

    exact: collections.Counter[SkipReason]
    either: int

    def check(self, got: dict[SkipReason, int]) -> None:
        """Compare with a report's counts."""
        got = {reason: count for reason, count in got.items() if count}
        flexible = (SkipReason.TOO_LONG, SkipReason.NUL_BYTES)
        rigid = {r: c for r, c in got.items() if r not in flexible}
        assert rigid == {r: c for r, c in self.exact.items() if r not in flexible and c}
        too_long, nul = got.get(SkipReason.TOO_LONG, 0), got.get(SkipReason.NUL_BYTES, 0)
        want_long, want_nul = self.exact[SkipReason.TOO_LONG], self.exact[SkipReason.NUL_BYTES]
        assert too_long + nul == want_long + want_nul, (got, self)
        assert want_long <= too_long <= want_long + self.either, (got, self)


def expected(
    items: list[Item], *, terminated: bool, max_line_bytes: int
) -> tuple[list[Fields], Skips]:
    """The events the log must give, in order, and its skips."""
    events: list[Fields] = []
    skips: collections.Counter[SkipReason] = collections.Counter()
    either = 0
    for index, item in enumerate(items):
        last = index == len(items) - 1
        event, reasons = item.expect(max_line_bytes, terminated=terminated or not last)
        if event is not None:
            events.append(event)
        if item.nul_split and reasons == [SkipReason.NUL_BYTES]:
            either += 1
        skips.update(reasons)
    return events, Skips(skips, either)


def same_value(a: float, b: float) -> bool:
    """Equal as logged values: NaN equals NaN, and the sign of zero counts."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def check_events(got: list[MetricEvent], want: list[Fields]) -> None:
    """The recorded events are exactly the expected ones, in order, values NaN-aware."""
    assert [(e.model, e.metric, e.step) for e in got] == [w[:3] for w in want]
    for event, fields in zip(got, want, strict=True):
        assert same_value(event.value, fields[3]), (event, fields)


@contextlib.contextmanager
def read_block(size: int) -> Iterator[None]:
    """Make every worker's tailer read `size`-byte blocks (never less than the limit + 1).

    Small blocks exercise the tailer's own long-line and partial-line paths too.
    """
    with mock.patch("tf_ship.shipper.worker.Tailer", functools.partial(Tailer, read_block=size)):
        yield


BLOCKS = st.sampled_from([1, 64, 1 << 20])
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(logs(), st.integers(1, 4), BLOCKS)
def test_one_shot_ships_exactly_the_valid_lines(
    log: tuple[list[Item], bool, int], batch_size: int, block: int
) -> None:
    """One-shot ship of a random log: exactly the valid lines, in order.

    Every bad line is counted once under its reason.
    """
    items, terminated, max_line_bytes = log
    data = build(items, terminated=terminated)
    want_events, want_skips = expected(items, terminated=terminated, max_line_bytes=max_line_bytes)
    backend = RecordingBackend()
    with tempfile.TemporaryDirectory() as directory, read_block(block):
        path = Path(directory) / "torchfort.log"
        path.write_bytes(data)
        report = tf_ship.ship(
            path,
            {"rec": backend},
            follow=False,
            batch_size=batch_size,
            max_line_bytes=max_line_bytes,
        )
    assert report.ok, report.summary()
    check_events(backend.flushed, want_events)
    assert backend.events == backend.flushed
    assert all(size <= batch_size for size in backend.batches)
    want_skips.check(report.skipped)


def run_follow(
    path: Path, options: ShipOptions, backend: RecordingBackend
) -> tuple[Shipper, threading.Thread, list[ShipReport]]:
    """Start a follow-mode shipper on a thread; its report lands in the returned list."""
    shipper = Shipper(path, {"rec": backend}, options)
    reports: list[ShipReport] = []
    thread = threading.Thread(target=lambda: reports.append(shipper.run()), daemon=True)
    thread.start()
    return shipper, thread, reports


@settings(FUZZ, max_examples=20)
@given(logs(), st.integers(1, 4), BLOCKS, st.data())
def test_follow_mode_with_random_write_pieces_gives_the_same(
    log: tuple[list[Item], bool, int], batch_size: int, block: int, data: st.DataObject
) -> None:
    """The log written in random pieces while following gives the same as one-shot.

    Lines are cut anywhere (NUL runs and long lines split too) while a follow-mode shipper
    runs; after a drain, the events and skips are those of the one-shot ship.
    """
    items, terminated, max_line_bytes = log
    content = build(items, terminated=terminated)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(content) - 1)), max_size=30)))
    pieces = [content[a:b] for a, b in zip([0, *cuts], [*cuts, len(content)], strict=True)]
    want_events, want_skips = expected(items, terminated=terminated, max_line_bytes=max_line_bytes)
    backend = RecordingBackend()
    options = ShipOptions(
        follow=True, poll_interval=0.01, batch_size=batch_size, max_line_bytes=max_line_bytes
    )
    with tempfile.TemporaryDirectory() as directory, read_block(block):
        path = Path(directory) / "torchfort.log"
        path.write_bytes(b"")
        shipper, thread, reports = run_follow(path, options, backend)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            for piece in pieces:
                os.write(fd, piece)
                time.sleep(0)  # let the shipper's thread run between pieces (not a wait)
        finally:
            os.close(fd)
        shipper.request_drain("test over")
        thread.join(30)
        assert not thread.is_alive(), "the shipper did not drain within 30 s"
    report = reports[0]
    assert report.ok, report.summary()
    check_events(backend.flushed, want_events)
    want_skips.check(report.skipped)


@settings(FUZZ, max_examples=40)
@given(logs(), st.sampled_from([1, 64, 4096]), st.sampled_from(["clean", "fuzzed"]), st.data())
def test_lines_between_line_starts_of_any_chunk_are_its_newlines(
    log: tuple[list[Item], bool, int], block: int, kind: str, data: st.DataObject
) -> None:
    """Line numbers inside a chunk come out as counting its newlines would give them.

    A clean chunk's newlines are counted once, by the tailer (`Chunk.lines`), and the cursors of
    its batches come from the events' offsets; any other chunk is counted in its bytes. Either
    way the parse is the same as with the parser's own count, and the lines between any two
    line starts are the bytes' newlines.
    """
    items, terminated, max_line_bytes = log
    content = (
        numbered(0, 3 * len(items) + 1) if kind == "clean" else build(items, terminated=terminated)
    )
    parser = LineParser(max_line_bytes=max_line_bytes)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "torchfort.log"
        path.write_bytes(content)
        tailer = Tailer(path, read_block=block, max_line_bytes=max_line_bytes)
        try:
            read = tailer.read(hold_nul=False)
            while not read.at_end or read.chunk is not None:
                chunk = read.chunk
                if chunk is not None:
                    assert chunk.lines == chunk.data.count(b"\n")
                    where = {"offset": chunk.offset, "line_number": chunk.line_number}
                    parsed = parser.parse(chunk.data, **where, lines=chunk.lines)
                    # compared as text: a nan value is not equal to itself
                    assert repr(parsed) == repr(parser.parse(chunk.data, **where))
                    starts = [0] + [i + 1 for i, byte in enumerate(chunk.data[:-1]) if byte == 10]
                    newlines = newline_counter(chunk, parsed)
                    first = data.draw(st.sampled_from(starts))
                    later = data.draw(st.sampled_from([s for s in starts if s >= first]))
                    assert newlines(first, later) == chunk.data.count(b"\n", first, later)
                    assert newlines(0, starts[-1]) == len(starts) - 1
                read = tailer.read(hold_nul=False)
        finally:
            tailer.close()


@pytest.mark.parametrize("run", [100, (1 << 20) - 1, 1 << 20, 3 << 20])
@pytest.mark.parametrize("before", [b"", HEAD + b"m, step: 9, lo"])
def test_nul_run_of_any_length_keeps_the_valid_line_after_it(
    tmp_path: Path, run: int, before: bytes
) -> None:
    """A NUL run of any length (also past a read block), then a valid line: the line ships.

    The run is one skip; it used to take the valid line after it with it.
    """
    path = tmp_path / "torchfort.log"
    path.write_bytes(numbered(0, 1) + before + b"\0" * run + numbered(1, 3))
    backend = RecordingBackend()
    report = tf_ship.ship(path, {"rec": backend}, follow=False, max_line_bytes=300)
    assert [e.step for e in backend.flushed] == [0, 1, 2]
    assert sum(report.skipped.values()) == 1


def test_lines_read_counts_lines_the_tailer_skipped(tmp_path: Path) -> None:
    """'read N lines' counts every line, also one the tailer skipped as too long.

    Such a line is longer than a read block and never reaches the parser.
    """
    path = tmp_path / "torchfort.log"
    path.write_bytes(numbered(0, 2) + b"x" * 5000 + b"\n" + numbered(2, 4))
    backend = RecordingBackend()
    with read_block(64):
        report = tf_ship.ship(path, {"rec": backend}, follow=False, max_line_bytes=300)
    assert [e.step for e in backend.flushed] == [0, 1, 2, 3]
    assert report.skipped == {SkipReason.TOO_LONG: 1}
    assert report.lines_read == 5


# -- huge lines ---------------------------------------------------------------------------------

HUGE = 50 * 2**20
TF_SHIP = [sys.executable, "-m", "tf_ship"]


def numbered(start: int, stop: int) -> bytes:
    """Valid lines whose steps are their sequence numbers."""
    return b"".join(HEAD + b"m, step: %d, loss: %g\n" % (i, i / 7) for i in range(start, stop))


def write_huge(stream: object, fill: bytes) -> None:
    """Write HUGE bytes of `fill` in 1 MiB pieces (never 50 MB in memory at once)."""
    piece = fill * (2**20 // len(fill))
    for _ in range(HUGE // len(piece)):
        stream.write(piece)  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fill", "newline"),
    [(b"x", True), (b"x", False), (HEAD + b"m, step: 1, ", True)],
    ids=["text-with-newline", "text-at-eof-without-newline", "metric-prefix-with-newline"],
)
def test_fifty_megabyte_line_in_bounded_memory(
    tmp_path: Path,
    fill: bytes,
    newline: bool,  # noqa: FBT001 - a parameter of the test
) -> None:
    """A 50 MB line is skipped in bounded memory, and every valid line arrives.

    The line lies between valid lines, or at the end without its newline; it is one skip
    (too long, or incomplete at EOF), and the peak RSS of `tf-ship` stays under 150 MB.
    """
    log = tmp_path / "torchfort.log"
    out = tmp_path / "out.jsonl"
    with log.open("wb") as stream:
        stream.write(numbered(0, 100))
        write_huge(stream, fill)
        if newline:
            stream.write(b"\n")
            stream.write(numbered(100, 200))
    child = subprocess.Popen(
        [
            *TF_SHIP,
            "--log-file",
            str(log),
            "--no-follow",
            "-b",
            "jsonl",
            "--jsonl-path",
            str(out),
            "--no-state",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    process = psutil.Process(child.pid)
    peak = 0
    deadline = time.monotonic() + 60
    while child.poll() is None:
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("tf-ship did not finish a 50 MB line within 60 s")
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)  # the sampling period of the RSS, not a synchronization
    assert child.stderr is not None
    stderr = child.stderr.read().decode()
    child.stderr.close()
    assert child.wait() == 0, stderr
    steps = [
        int(line.split(b'"step": ')[1].split(b",")[0]) for line in out.read_bytes().splitlines()
    ]
    assert steps == list(range(200 if newline else 100))
    skips = re.findall(r"^  skipped (\d+): (.*)$", stderr, re.MULTILINE)
    assert len(skips) == 1, stderr
    assert skips[0][0] == "1", stderr
    assert skips[0][1] in {SkipReason.TOO_LONG.value, SkipReason.INCOMPLETE.value}, stderr
    if newline:
        assert skips[0][1] == SkipReason.TOO_LONG.value
    sys.stdout.write(
        f"\n50 MB line ({'newline' if newline else 'EOF'}): peak RSS {peak / 2**20:.0f} MiB\n"
    )
    assert peak < 150 * 2**20
