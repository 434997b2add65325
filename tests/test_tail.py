"""The tailer on real files: complete lines only, appends, truncation, replacement, cursors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from tf_ship.shipper.events import SkippedLine, SkipReason
from tf_ship.shipper.parse import LineParser
from tf_ship.shipper.tail import Cursor, Tailer


def line(step: int, model: str = "m") -> bytes:
    """One metric line with a distinct step."""
    return b"TORCHFORT::WANDB: model: %s, step: %d, loss: 0.5\n" % (model.encode(), step)


def append(path: Path, data: bytes) -> None:
    """Append bytes the way TorchFort does: O_APPEND, one write."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@attrs.define
class Drained:
    """Everything a sequence of reads produced."""

    data: bytes = b""
    notices: list[str] = attrs.field(factory=list)
    skipped: list[SkippedLine] = attrs.field(factory=list)


def drain(tailer: Tailer, *, hold_nul: bool = True, limit: int = 10_000) -> Drained:
    """Read until the tailer is at the end and delivers nothing more."""
    out = Drained()
    for _ in range(limit):
        read = tailer.read(hold_nul=hold_nul)
        out.notices.extend(read.notices)
        out.skipped.extend(read.skipped)
        if read.chunk is not None:
            assert read.chunk.data.endswith(b"\n")
            out.data += read.chunk.data
        elif read.at_end:
            return out
    pytest.fail("the tailer never reached the end")


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """Path of a log file that does not exist yet."""
    return tmp_path / "torchfort.log"


def test_missing_file_reports_not_existing(log: Path) -> None:
    """A missing log reads as 'does not exist', and is picked up once created."""
    tailer = Tailer(log)
    read = tailer.read()
    assert not read.exists
    assert read.chunk is None
    append(log, line(1))
    assert drain(tailer).data == line(1)
    tailer.close()


def test_partial_last_line_waits_for_its_newline(log: Path) -> None:
    """A partial last line is not delivered until its newline arrives, and never in halves."""
    full = line(1) + line(2)
    append(log, full[:-10])
    tailer = Tailer(log)
    assert drain(tailer).data == line(1)
    assert drain(tailer).data == b""
    append(log, full[-10:-1])
    assert drain(tailer).data == b""
    append(log, b"\n")
    assert drain(tailer).data == line(2)
    assert tailer.cursor.offset == len(full)
    assert tailer.cursor.line_number == 2
    tailer.close()


def test_partial_line_reported_at_shutdown(log: Path) -> None:
    """pending_partial() reports the incomplete last line with its line number."""
    append(log, line(1) + b"TORCHFORT::WANDB: model: m, st")
    tailer = Tailer(log)
    drain(tailer)
    partial = tailer.pending_partial()
    assert partial is not None
    assert partial.reason is SkipReason.INCOMPLETE
    assert (partial.offset, partial.line_number) == (len(line(1)), 2)
    assert partial.excerpt == b"TORCHFORT::WANDB: model: m, st"
    tailer.close()


def test_appends_are_delivered_in_order_across_small_blocks(log: Path) -> None:
    """Appended lines arrive in order, exactly once, even with a tiny read block."""
    tailer = Tailer(log, read_block=64, max_line_bytes=256)
    got = b""
    for step in range(50):
        append(log, line(step))
        if step % 7 == 0:
            got += drain(tailer).data
    got += drain(tailer).data
    assert got == b"".join(line(step) for step in range(50))
    assert tailer.cursor.line_number == 50
    tailer.close()


def test_chunks_carry_offsets_and_line_numbers(log: Path) -> None:
    """Each chunk says where it starts (offset, lines before it) and the cursor after it."""
    append(log, line(1) + line(2))
    tailer = Tailer(log)
    first = tailer.read().chunk
    assert first is not None
    assert (first.offset, first.line_number) == (0, 0)
    append(log, line(3))
    second = tailer.read().chunk
    assert second is not None
    assert (second.offset, second.line_number) == (len(line(1) + line(2)), 2)
    assert second.end.offset == log.stat().st_size
    assert second.end.line_number == 3
    tailer.close()


def test_truncation_is_noticed_and_reread_from_start(log: Path) -> None:
    """A truncated log is noticed (notice text) and its new content shipped from byte 0."""
    append(log, line(1) + line(2) + line(3))
    tailer = Tailer(log)
    drain(tailer)
    os.truncate(log, 0)
    append(log, line(9))
    out = drain(tailer)
    assert out.data == line(9)
    assert any("truncated" in notice for notice in out.notices)
    assert tailer.cursor.line_number == 1
    tailer.close()


def test_truncation_then_regrowth_past_the_cursor_is_noticed(log: Path) -> None:
    """Truncated and rewritten past the old cursor before the next poll: the fingerprint notices."""
    append(log, line(1))
    tailer = Tailer(log)
    drain(tailer)
    os.truncate(log, 0)
    append(log, line(7) + line(8))
    out = drain(tailer)
    assert out.data == line(7) + line(8)
    assert any("rewritten" in notice for notice in out.notices)
    tailer.close()


def test_truncation_then_regrowth_to_the_same_size_is_noticed(log: Path) -> None:
    """Truncated and rewritten to exactly the old size: still noticed, the new line shipped."""
    append(log, line(1))
    tailer = Tailer(log)
    drain(tailer)
    os.truncate(log, 0)
    append(log, line(2))
    assert len(line(2)) == len(line(1))
    out = drain(tailer)
    assert out.data == line(2)
    assert out.notices
    tailer.close()


def test_replacement_delivers_old_rest_then_new_file(log: Path, tmp_path: Path) -> None:
    """Replaced by rename: the old file's remaining complete lines, then the new file from 0."""
    append(log, line(1))
    tailer = Tailer(log)
    assert drain(tailer).data == line(1)
    append(log, line(2) + b"TORCHFORT::WANDB: half")
    new = tmp_path / "new.log"
    new.write_bytes(line(100) + line(101))
    new.replace(log)
    out = drain(tailer)
    assert out.data == line(2) + line(100) + line(101)
    assert any("replaced" in notice for notice in out.notices)
    assert [s.reason for s in out.skipped] == [SkipReason.INCOMPLETE]
    assert out.skipped[0].excerpt == b"TORCHFORT::WANDB: half"
    assert tailer.cursor.offset == len(line(100) + line(101))
    assert tailer.cursor.line_number == 2
    append(log, line(102))
    assert drain(tailer).data == line(102)
    tailer.close()


def test_deleted_file_keeps_being_read(log: Path) -> None:
    """A log deleted while open is still read: the writer may keep appending to it."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line(1))
        tailer = Tailer(log)
        assert drain(tailer).data == line(1)
        log.unlink()
        os.write(fd, line(2))
        out = drain(tailer)
        assert out.data == line(2)
        assert out.notices == []
    finally:
        os.close(fd)
    tailer.close()


@pytest.mark.parametrize("read_block", [64, 1 << 20])
@pytest.mark.parametrize("newline", [True, False])
def test_too_long_line_is_skipped_and_next_lines_delivered(
    log: Path,
    read_block: int,
    newline: bool,  # noqa: FBT001 - a parameter of the test
) -> None:
    """A line over max_line_bytes is one TOO_LONG skip (tailer or parser); later lines still come.

    The tailer skips a long line it cannot hold in one read; one that fits in a block goes to
    the parser, which skips it: either way exactly one TOO_LONG with the right line number.
    """
    long_line = b"TORCHFORT::WANDB: model: m, step: 1, " + b"x" * 2000
    append(log, line(0) + long_line + (b": 1\n" if newline else b""))
    tailer = Tailer(log, read_block=read_block, max_line_bytes=512)
    parser = LineParser(max_line_bytes=512)
    out = drain(tailer)
    if not newline:
        append(log, b": 1\n")
    append(log, line(2) + line(3))
    out2 = drain(tailer)
    parsed = parser.parse(out.data + out2.data)
    skipped = out.skipped + out2.skipped + parsed.skipped
    assert [(s.reason, s.line_number, s.offset) for s in skipped] == [
        (SkipReason.TOO_LONG, 2, len(line(0)))
    ]
    assert [e.step for e in parsed.events] == [0, 2, 3]
    assert tailer.cursor.line_number == 4
    tailer.close()


def test_line_longer_than_default_limit_does_not_stall(log: Path) -> None:
    """With default settings a line over max_line_bytes is skipped instead of re-read forever."""
    append(log, b"y" * ((1 << 20) + 10) + b"\n" + line(1))
    tailer = Tailer(log)
    out = drain(tailer, limit=50)
    assert out.data == line(1)
    assert [s.reason for s in out.skipped] == [SkipReason.TOO_LONG]
    tailer.close()


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        """The current fake time."""
        return self.now


def test_nul_line_held_back_until_grace_expires(log: Path) -> None:
    """A line holding NULs is held back for nul_grace seconds, then delivered as it is."""
    clock = FakeClock()
    nul_line = b"\x00" * 20 + line(2)
    append(log, line(1) + nul_line + line(3))
    tailer = Tailer(log, nul_grace=2.0, clock=clock)
    assert drain(tailer).data == line(1)
    clock.now += 1.0
    assert drain(tailer).data == b""
    clock.now += 1.5
    assert drain(tailer).data == nul_line + line(3)
    tailer.close()


def test_nul_gap_filled_in_before_grace_is_delivered_clean(log: Path) -> None:
    """NULs that turn into text within the grace period are delivered as the real text."""
    clock = FakeClock()
    append(log, line(1) + b"\x00" * len(line(2)) + line(3))
    tailer = Tailer(log, nul_grace=2.0, clock=clock)
    assert drain(tailer).data == line(1)
    fd = os.open(log, os.O_WRONLY)
    try:
        os.pwrite(fd, line(2), len(line(1)))
    finally:
        os.close(fd)
    clock.now += 0.5
    assert drain(tailer).data == line(2) + line(3)
    tailer.close()


def test_nul_not_held_when_draining(log: Path) -> None:
    """hold_nul=False (draining) delivers NUL lines at once."""
    append(log, b"\x00\x00" + line(1))
    tailer = Tailer(log, clock=FakeClock())
    assert drain(tailer, hold_nul=False).data == b"\x00\x00" + line(1)
    tailer.close()


def test_cursor_json_round_trip(log: Path) -> None:
    """Cursor.to_json/from_json round-trips, also for an empty cursor."""
    append(log, line(1))
    tailer = Tailer(log)
    drain(tailer)
    cursor = tailer.cursor
    assert cursor.file is not None
    assert Cursor.from_json(cursor.to_json()) == cursor
    assert Cursor.from_json(Cursor().to_json()) == Cursor()
    tailer.close()


def test_resume_from_saved_cursor_same_file(log: Path) -> None:
    """A new tailer given a saved cursor resumes after it, with no notice."""
    append(log, line(1) + line(2))
    first = Tailer(log)
    drain(first)
    saved = Cursor.from_json(first.cursor.to_json())
    first.close()
    append(log, line(3))
    second = Tailer(log, saved)
    out = drain(second)
    assert out.data == line(3)
    assert out.notices == []
    assert second.cursor.line_number == 3
    second.close()


def test_resume_after_content_changed_restarts_with_notice(log: Path) -> None:
    """A saved cursor over different content (rewritten in place) restarts from 0 with a notice."""
    append(log, line(1) + line(2))
    first = Tailer(log)
    drain(first)
    saved = first.cursor
    first.close()
    log.write_bytes(line(5) + line(6) + line(7))
    second = Tailer(log, saved)
    out = drain(second)
    assert out.data == line(5) + line(6) + line(7)
    assert out.notices
    second.close()


def test_resume_on_a_different_file_restarts_with_notice(log: Path, tmp_path: Path) -> None:
    """A saved cursor for another inode restarts the new file from 0 with a notice."""
    append(log, line(1) + line(2))
    first = Tailer(log)
    drain(first)
    saved = first.cursor
    new = tmp_path / "other"
    new.write_bytes(line(1) + line(2) + line(3))
    new.replace(log)
    first.close()
    second = Tailer(log, saved)
    out = drain(second)
    assert out.data == line(1) + line(2) + line(3)
    assert any("new file" in notice for notice in out.notices)
    second.close()


def test_resume_on_a_shorter_file_restarts(log: Path) -> None:
    """A saved cursor beyond the end of the file restarts from 0 with a notice."""
    append(log, line(1) + line(2))
    first = Tailer(log)
    drain(first)
    saved = first.cursor
    first.close()
    os.truncate(log, 0)
    append(log, line(4))
    second = Tailer(log, saved)
    out = drain(second)
    assert out.data == line(4)
    assert out.notices
    second.close()


# -- model-based test -------------------------------------------------------------------------


@attrs.define
class Epoch:
    """Content of one file between truncations or replacements, as its complete lines."""

    file: int
    lines: list[bytes] = attrs.field(factory=list)


class TailerMachine(RuleBasedStateMachine):
    """Random appends (split at random points), truncations and replacements against a model.

    The model is the list of complete lines of each content epoch. Every line is unique (its
    step is a sequence number), so any delivered line tells where it belongs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.path = self.dir / "torchfort.log"
        self.path.write_bytes(b"")
        self.tailer = Tailer(self.path)
        self.seq = 0
        self.files = 0
        self.epochs = [Epoch(0)]
        self.pending = b""  # the line being written
        self.written = 0  # how much of it is in the file
        self.where: dict[bytes, tuple[int, int]] = {}
        self.delivered: set[bytes] = set()
        self.cur_epoch = 0
        self.next_pos = 0
        self.noticed = False  # a notice came since the last delivered line

    @initialize(read_block=st.integers(16, 300), max_line=st.integers(100, 400))
    def setup(self, read_block: int, max_line: int) -> None:
        """A tailer with random block sizes, opened on the empty log."""
        self.tailer = Tailer(self.path, read_block=read_block, max_line_bytes=max_line)
        assert self.tailer.read().chunk is None

    def teardown(self) -> None:
        """Drain to the end and check everything arrived, then clean up."""
        try:
            self.final_drain()
        finally:
            self.tailer.close()
            self.tmp.cleanup()

    def _new_line(self, model: str) -> bytes:
        self.seq += 1
        return b"TORCHFORT::WANDB: model: %s, step: %d, x: 1\n" % (model.encode(), self.seq)

    def _record(self, data: bytes) -> None:
        epoch = self.epochs[-1]
        self.where[data] = (len(self.epochs) - 1, len(epoch.lines))
        epoch.lines.append(data)

    @rule(model=st.text("ab c", min_size=1, max_size=6), amount=st.integers(1, 120))
    def write(self, model: str, amount: int) -> None:
        """Write the next `amount` bytes of the line being written (starting one if needed)."""
        if not self.pending:
            self.pending, self.written = self._new_line(model), 0
        piece = self.pending[self.written : self.written + amount]
        append(self.path, piece)
        self.written += len(piece)
        if self.written == len(self.pending):
            self._record(self.pending)
            self.pending = b""

    @rule()
    def truncate(self) -> None:
        """Truncate the log to zero; a half-written line is lost with it."""
        os.truncate(self.path, 0)
        self.pending = b""
        self.epochs.append(Epoch(self.files))

    @rule(count=st.integers(0, 3))
    def replace(self, count: int) -> None:
        """Write a new file with some complete lines and rename it over the log."""
        self.files += 1
        self.epochs.append(Epoch(self.files))
        lines = [self._new_line("r") for _ in range(count)]
        for data in lines:
            self._record(data)
        new = self.dir / "new"
        new.write_bytes(b"".join(lines))
        new.replace(self.path)
        self.pending = b""

    @rule()
    def read(self) -> None:
        """One poll; what it delivered must fit the model."""
        result = self.tailer.read()
        self._check(result.chunk.data if result.chunk else b"", result.notices)

    def _check(self, data: bytes, notices: list[str]) -> None:
        self.noticed = self.noticed or bool(notices)
        assert data == b"" or data.endswith(b"\n")
        for delivered in data.splitlines(keepends=True):
            assert delivered in self.where, f"not a line written whole: {delivered!r}"
            assert delivered not in self.delivered, f"delivered twice: {delivered!r}"
            self.delivered.add(delivered)
            epoch, pos = self.where[delivered]
            if epoch != self.cur_epoch:
                assert epoch > self.cur_epoch, f"went back to old content: {delivered!r}"
                assert pos == 0, f"new content not shipped from its start: {delivered!r}"
                assert self.noticed or self.next_pos == 0, "content changed without a notice"
                old_file = self.epochs[self.cur_epoch].file
                if self.epochs[epoch].file != old_file:
                    last = max(i for i, e in enumerate(self.epochs) if e.file == old_file)
                    if self.epochs[last].lines:
                        assert (self.cur_epoch, self.next_pos) == (
                            last,
                            len(self.epochs[last].lines),
                        ), "the replaced file's last lines were not delivered first"
                self.cur_epoch, self.next_pos = epoch, 0
            assert pos == self.next_pos, f"out of order: {delivered!r}"
            self.next_pos = pos + 1
            self.noticed = False

    @invariant()
    def only_whole_lines_delivered(self) -> None:
        """Delivered lines are a subset of the complete lines written."""
        assert self.delivered <= self.where.keys()

    def final_drain(self) -> None:
        """Read to the end: every line of the current content was delivered exactly once."""
        for _ in range(10_000):
            result = self.tailer.read()
            self._check(result.chunk.data if result.chunk else b"", result.notices)
            if result.chunk is None and result.at_end:
                break
        last = self.epochs[-1]
        if last.lines:
            assert (self.cur_epoch, self.next_pos) == (len(self.epochs) - 1, len(last.lines))


TailerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_tailer_state_machine = TailerMachine.TestCase


def test_finished_mode_reads_the_file_as_it_was_when_opened(log: Path) -> None:
    """`inspect`'s mode: no bytes appended after the open, no replacement, NUL lines at once."""
    append(log, line(1) + b"\x00\x00" + line(2))
    tailer = Tailer(log, finished=True, nul_grace=3600.0)
    first = tailer.read()
    assert tailer.end == len(line(1) + b"\x00\x00" + line(2))
    append(log, line(3))
    replacement = log.with_name("next.log")
    replacement.write_bytes(line(4))
    replacement.replace(log)
    rest = drain(tailer)
    assert first.chunk is not None
    assert first.chunk.data + rest.data == line(1) + b"\x00\x00" + line(2)
    assert rest.notices == []
    assert tailer.pending_partial() is None
    tailer.close()
