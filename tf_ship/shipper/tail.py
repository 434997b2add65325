"""Follow a growing log file by polling, on bytes, with a cursor that survives restarts.

Polling (not inotify) because writes made on another node of a network filesystem are invisible
to inotify. The tailer never holds more than one read block: it re-reads a partial last line on
the next poll instead of buffering it, and it never delivers half a line.

The cursor is the offset of the first byte not yet delivered, in a file named by its identity
(device, inode) and checked with a fingerprint of the bytes just before the offset, so that a
truncated, replaced or rewritten file is noticed instead of trusted.
"""

from __future__ import annotations

import errno
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import attrs

from tf_ship.contract import FileIdentity
from tf_ship.shipper.events import SkippedLine, SkipReason
from tf_ship.shipper.options import MAX_LINE_BYTES
from tf_ship.shipper.parse import INT64_MAX, INT64_MIN, METRIC_LINE

READ_BLOCK = 1 << 20
NUL_GRACE = 2.0
"""Seconds a line holding NUL bytes is held back in follow mode (see `Tailer`)."""
FINGERPRINT_BYTES = 64
EXCERPT_BYTES = 120


@attrs.frozen
class Cursor:
    """Where delivery stands: the next byte to deliver in one file, and how to recognise it."""

    file: FileIdentity | None = None
    offset: int = 0
    line_number: int = 0
    fingerprint: int = 0

    def to_json(self) -> dict[str, int | None]:
        """The cursor as plain JSON values, for the state file."""
        return {
            "device": None if self.file is None else self.file.device,
            "inode": None if self.file is None else self.file.inode,
            "offset": self.offset,
            "line_number": self.line_number,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, data: dict[str, int | None]) -> Cursor:
        """Inverse of `to_json`."""
        device, inode = data.get("device"), data.get("inode")
        identity = None if device is None or inode is None else FileIdentity(device, inode)
        return cls(
            identity,
            int(data.get("offset") or 0),
            int(data.get("line_number") or 0),
            int(data.get("fingerprint") or 0),
        )


@attrs.frozen
class Chunk:
    """Complete lines read from the log, and the cursor just after them."""

    data: bytes
    file: FileIdentity
    offset: int
    line_number: int
    end: Cursor

    @property
    def lines(self) -> int:
        """How many lines the chunk holds (its newlines, counted once by the tailer)."""
        return self.end.line_number - self.line_number


@attrs.define
class TailRead:
    """What one poll found."""

    chunk: Chunk | None = None
    skipped: list[SkippedLine] = attrs.field(factory=list)
    notices: list[str] = attrs.field(factory=list)
    at_end: bool = True
    exists: bool = True


def _identity(stat: os.stat_result) -> FileIdentity:
    return FileIdentity(stat.st_dev, stat.st_ino)


def _is_metric_line(line: bytes) -> bool:
    """Whether `line` (ending with its newline) is a metric line the parser ships."""
    match = METRIC_LINE.match(line)
    return (
        match is not None
        and match.end() == len(line) - 1
        and INT64_MIN <= int(match.group(2)) <= INT64_MAX
    )


def _fingerprint(before: bytes) -> int:
    return zlib.crc32(before[-FINGERPRINT_BYTES:])


@attrs.define
class Tailer:
    """Reads complete lines from `path` as they are appended.

    `nul_grace` is how long a line holding NUL bytes is held back in follow mode: on a network
    filesystem such bytes are often pages that the writer's node has not flushed yet, and a
    second look finds the real text. `clock` is injectable for tests.

    `finished` reads a finished file (``tf-ship inspect``): the file as it was when opened, up to
    its size then (`end`), never a file that replaced it, NUL bytes never held back. Lines are
    judged as when shipping, so that inspecting a log tells what shipping it does.
    """

    path: Path
    cursor: Cursor = attrs.field(factory=Cursor)
    read_block: int = READ_BLOCK
    max_line_bytes: int = MAX_LINE_BYTES.default
    nul_grace: float = NUL_GRACE
    clock: Callable[[], float] = time.monotonic
    finished: bool = False
    end: int | None = attrs.field(default=None, init=False)
    """With `finished`: the file's size when it was opened, where reading ends."""
    _fd: int | None = attrs.field(default=None, init=False)
    _identity: FileIdentity | None = attrs.field(default=None, init=False)
    _discarding: bool = attrs.field(default=False, init=False)
    _nul_since: float | None = attrs.field(default=None, init=False)
    _resumed: bool = attrs.field(default=False, init=False)
    generation: int = attrs.field(default=0, init=False)

    def close(self) -> None:
        """Release the file descriptor."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self, *, hold_nul: bool = True) -> TailRead:  # noqa: C901, PLR0911, PLR0912 - one state machine
        """Poll the file once and deliver at most one block of complete lines."""
        result = TailRead()
        if self._fd is None and not self._open(result):
            result.exists = False
            return result
        assert self._fd is not None  # noqa: S101 - narrowed for the type checker
        size = self._size()
        offset = self.cursor.offset
        if size < offset:
            result.notices.append(
                f"{self.path} was truncated ({size} bytes, cursor at {offset}): "
                "shipping from its start"
            )
            self._restart_from_zero()
            offset = 0
        elif size >= offset and offset > 0 and not self._still_same_bytes():
            result.notices.append(
                f"{self.path} was rewritten below the cursor (offset {offset}): "
                "shipping from its start"
            )
            self._restart_from_zero()
            offset = 0
        if size == offset:
            if self._switch_if_replaced(result, pending=0):
                return self._read_new_file(result, hold_nul=hold_nul)
            return result
        # at least one byte more than the longest line, so that a too-long line is seen as such
        window = max(self.read_block, self.max_line_bytes + 1)
        data = os.pread(self._fd, min(window, size - offset), offset)
        # a too-long line is skipped in this call, one block at a time, as far as the file goes
        while self._discarding or (b"\n" not in data and len(data) > self.max_line_bytes):
            if not self._discarding:
                result.skipped.append(self._too_long(data))
                self._discarding = True
            self._skip_long_line(data, at_eof=offset + len(data) >= size)
            if self._discarding and self.cursor.offset == offset:
                return result  # text after a NUL at the end of the file: wait for its end
            offset = self.cursor.offset
            if offset >= size or not data:
                return result
            data = os.pread(self._fd, min(window, size - offset), offset)
        last_newline = data.rfind(b"\n")
        if last_newline < 0:
            if self._switch_if_replaced(result, pending=len(data)):
                return self._read_new_file(result, hold_nul=hold_nul)
            result.at_end = offset + len(data) >= size
            return result
        complete = data[: last_newline + 1]
        if hold_nul and not self.finished:
            complete = self._hold_back_nul(complete)
        if complete:
            start, lines = self.cursor.offset, self.cursor.line_number
            self._advance(complete, complete.count(b"\n"))
            assert self._identity is not None  # noqa: S101 - set by _open
            result.chunk = Chunk(complete, self._identity, start, lines, self.cursor)
        result.at_end = self.cursor.offset + (len(data) - len(complete)) >= size
        if not complete:
            result.at_end = True
        return result

    def _read_new_file(self, result: TailRead, *, hold_nul: bool) -> TailRead:
        """Read the file that replaced the old one, keeping what was found in the old one."""
        following = self.read(hold_nul=hold_nul)
        following.notices[:0] = result.notices
        following.skipped[:0] = result.skipped
        return following

    def _open(self, result: TailRead) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise
        self._fd = fd
        stat = os.fstat(fd)
        self._identity = _identity(stat)
        if self.finished:
            self.end = stat.st_size
        saved = self.cursor
        if saved.file is not None and saved.offset > 0:
            if saved.file != self._identity:
                result.notices.append(f"{self.path} is a new file since the cursor was saved")
                self._restart_from_zero()
            elif os.fstat(fd).st_size < saved.offset or not self._still_same_bytes():
                result.notices.append(f"{self.path} changed below the saved cursor")
                self._restart_from_zero()
            else:
                self._resumed = True
        self.cursor = attrs.evolve(self.cursor, file=self._identity)
        return True

    def _size(self) -> int:
        """The file's size; in finished mode, never beyond `end`."""
        assert self._fd is not None  # noqa: S101 - narrowed for the type checker
        size = os.fstat(self._fd).st_size
        return size if self.end is None else min(size, self.end)

    def _still_same_bytes(self) -> bool:
        """Check the bytes before the cursor against its fingerprint (cheap: one small read)."""
        assert self._fd is not None  # noqa: S101
        offset = self.cursor.offset
        length = min(offset, FINGERPRINT_BYTES)
        before = os.pread(self._fd, length, offset - length)
        return _fingerprint(before) == self.cursor.fingerprint

    def _restart_from_zero(self) -> None:
        self.generation += 1
        self.cursor = Cursor(self._identity, 0, 0, _fingerprint(b""))
        self._discarding = False
        self._nul_since = None

    def cursor_at(self, offset: int, line_number: int) -> Cursor:
        """A cursor at a line start before the tailer's own cursor (for a stop mid-chunk)."""
        assert self._fd is not None  # noqa: S101
        length = min(offset, FINGERPRINT_BYTES)
        before = os.pread(self._fd, length, offset - length)
        return Cursor(self._identity, offset, line_number, _fingerprint(before))

    def _advance(self, consumed: bytes, lines: int) -> None:
        cursor = self.cursor
        offset = cursor.offset + len(consumed)
        if len(consumed) >= FINGERPRINT_BYTES:
            fingerprint = _fingerprint(consumed)
        else:
            assert self._fd is not None  # noqa: S101
            length = min(offset, FINGERPRINT_BYTES)
            fingerprint = _fingerprint(os.pread(self._fd, length, offset - length))
        self.cursor = Cursor(self._identity, offset, cursor.line_number + lines, fingerprint)

    def _skip_long_line(self, data: bytes, *, at_eof: bool) -> None:
        """Move the cursor over the part of a too-long line that `data` (read at it) holds.

        The line ends after its newline, or at its last NUL byte when what follows is a valid
        metric line: a NUL starts a line (as for the parser), and the text after a NUL run of any
        length must not be lost with it. Text after a NUL that may be such a line is read again
        from its start, and waited for at the end of the file.
        """
        newline = data.find(b"\n")
        end = len(data) if newline < 0 else newline
        start = data.rfind(b"\x00", 0, end) + 1  # where text after the last NUL starts
        if not start and not self._nul_before(self.cursor.offset):
            start = end  # no NUL before the end of this block's part of the line
        if 0 < end - start <= self.max_line_bytes:
            if newline < 0 and (start or at_eof):
                self._advance(data[:start], 0)
                return
            if newline >= 0 and _is_metric_line(data[start : newline + 1]):
                self._advance(data[:start], 0)
                self._discarding = False
                return
        if newline < 0:
            self._advance(data, 0)
        else:
            self._advance(data[: newline + 1], 1)  # the end of the skipped line
            self._discarding = False

    def _nul_before(self, offset: int) -> bool:
        assert self._fd is not None  # noqa: S101
        return offset > 0 and os.pread(self._fd, 1, offset - 1) == b"\x00"

    def _hold_back_nul(self, complete: bytes) -> bytes:
        nul = complete.find(b"\x00")
        if nul < 0:
            self._nul_since = None
            return complete
        now = self.clock()
        if self._nul_since is None:
            self._nul_since = now
        if now - self._nul_since >= self.nul_grace:
            self._nul_since = None
            return complete
        return complete[: complete.rfind(b"\n", 0, nul) + 1]

    def _too_long(self, data: bytes) -> SkippedLine:
        return SkippedLine(
            SkipReason.TOO_LONG,
            self.cursor.offset,
            self.cursor.line_number + 1,
            data[:EXCERPT_BYTES],
        )

    def _switch_if_replaced(self, result: TailRead, *, pending: int) -> bool:
        """At the end of the old file, move to a new file at the same path, if there is one."""
        if self.finished:
            return False
        try:
            current = _identity(self.path.stat())
        except FileNotFoundError:
            return False  # deleted: the writer may still append to the open file
        if current == self._identity:
            return False
        if pending:
            assert self._fd is not None  # noqa: S101
            partial = os.pread(self._fd, min(pending, EXCERPT_BYTES), self.cursor.offset)
            result.skipped.append(
                SkippedLine(
                    SkipReason.INCOMPLETE,
                    self.cursor.offset,
                    self.cursor.line_number + 1,
                    partial,
                )
            )
        # the new file's identity makes each replacement's notice distinct (they are deduplicated)
        result.notices.append(
            f"{self.path} was replaced by a new file ({current}): shipping it from its start"
        )
        self.close()
        self.cursor = Cursor()
        self.generation += 1
        self._discarding = False
        self._nul_since = None
        return True

    def pending_partial(self) -> SkippedLine | None:
        """The incomplete last line, if any, for the final report at shutdown."""
        if self._fd is None:
            return None
        size = self._size()
        if size <= self.cursor.offset or self._discarding:
            return None
        partial = os.pread(
            self._fd, min(size - self.cursor.offset, EXCERPT_BYTES), self.cursor.offset
        )
        # over the limit already: too long, as when a read finds it alone in a block
        too_long = size - self.cursor.offset > self.max_line_bytes
        reason = SkipReason.TOO_LONG if too_long else SkipReason.INCOMPLETE
        return SkippedLine(reason, self.cursor.offset, self.cursor.line_number + 1, partial)
