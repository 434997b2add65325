"""A reader of the transaction log a wandb run writes (``run-<id>.wandb``): wandb ships none.

The format, as wandb-core writes it (``core/internal/stream/store.go`` and the LevelDB-style
``core/pkg/leveldb/record.go`` of the wandb sources)::

    file   := header block*
    header := ":W&B"  magic: uint16 LE = 0xBEE1  version: uint8 = 0      (7 bytes)
    block  := chunk* zeros?                    32 KiB; the header counts in the first block
    chunk  := crc: uint32 LE  length: uint16 LE  type: uint8  payload[length]
    type   := 1 full | 2 first | 3 middle | 4 last

A record too long for the rest of its block is split into first, middle... and last chunks;
fewer than 7 bytes left at a block's end are zeros. The checksum is zlib's CRC-32 of the type
byte and the payload; each record is one serialized ``wandb_internal_pb2.Record``. When
wandb-core writes the file (and so why a live run's file lags): docs/delivery.md.
"""

from __future__ import annotations

import importlib
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")
IDENT = b":W&B"
MAGIC = 0xBEE1
VERSION = 0
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4

WandbRecord = Any
"""A ``wandb.proto.wandb_internal_pb2.Record`` (wandb's protobuf classes carry no types)."""


class TransactionLogError(ValueError):
    """The file is not a wandb transaction log, or it is damaged."""


def _parse_int(text: str) -> int | float:
    return -0.0 if text == "-0" else int(text)


def decode_json(text: str) -> Any:  # noqa: ANN401 - any JSON value
    """Decode one ``value_json``: NaN and infinities as floats, ``-0`` as ``-0.0``."""
    return json.loads(text, parse_int=_parse_int)


def iter_payloads(data: bytes, *, strict: bool = True) -> Iterator[bytes]:
    """Yield the bytes of each record in a transaction log's content.

    With `strict`, any damage raises `TransactionLogError`: a bad chunk (checksum, type, a
    length past its block), chunks out of order, a torn end. Without it, recovery works as in
    wandb's own reader: the rest of a block with a bad chunk is skipped, a continuation chunk
    without its beginning is skipped, a record interrupted by a new one is dropped, and a torn
    end is ignored, and so is a file shorter than its header (wandb before 0.22 writes the header
    with the first full block: a session that died before has an empty file).
    """
    if _never_written(data) and not strict:
        return iter(())
    return _payloads(data, strict=strict)


def _payloads(data: bytes, *, strict: bool) -> Iterator[bytes]:
    _check_header(data)
    pieces: list[bytes] | None = None  # the chunks of a record begun and not yet ended
    for position, kind, payload in _chunks(data, strict=strict):
        if kind is None:  # a damaged block: the record in progress is lost
            pieces = None
            continue
        if _out_of_order(position, kind, inside=pieces is not None, strict=strict):
            pieces = None
            if kind in (MIDDLE, LAST):
                continue
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pieces = [payload]
        elif pieces is not None:
            pieces.append(payload)
            if kind == LAST:
                yield b"".join(pieces)
                pieces = None
    if pieces is not None and strict:
        msg = "the last record is torn (its last chunk is missing)"
        raise TransactionLogError(msg)


def _never_written(data: bytes) -> bool:
    """True for the content of a log whose writer wrote not even the whole header."""
    return len(data) < HEADER.size and HEADER.pack(IDENT, MAGIC, VERSION).startswith(data)


def _check_header(data: bytes) -> None:
    if len(data) < HEADER.size:
        msg = f"{len(data)} bytes: too short for the {HEADER.size}-byte header"
        raise TransactionLogError(msg)
    if HEADER.unpack_from(data) != (IDENT, MAGIC, VERSION):
        msg = f"not a wandb transaction log (header {data[: HEADER.size]!r})"
        raise TransactionLogError(msg)


def _out_of_order(position: int, kind: int, *, inside: bool, strict: bool) -> bool:
    """True when a chunk does not fit the record in progress (strictly: raise)."""
    problem = None
    if inside and kind in (FULL, FIRST):
        problem = "a record begins before the previous one ended"
    elif not inside and kind in (MIDDLE, LAST):
        problem = "a record continues that never began"
    if problem is not None and strict:
        msg = f"{problem} at byte {position}"
        raise TransactionLogError(msg)
    return problem is not None


def _chunks(data: bytes, *, strict: bool) -> Iterator[tuple[int, int | None, bytes]]:
    """Yield (offset, type, payload) of each chunk after the header.

    A damaged chunk yields type None (unless `strict`, which raises) and the rest of its block
    is skipped.
    """
    position = HEADER.size
    while position < len(data):
        block_end = (position // BLOCK_SIZE + 1) * BLOCK_SIZE
        if block_end - position < CHUNK_HEADER.size or _zeros(data, position):
            position = block_end  # the zero trailer of a block
            continue
        problem = _chunk_problem(data, position, block_end)
        if problem is not None:
            if strict:
                msg = f"{problem} at byte {position}"
                raise TransactionLogError(msg)
            yield position, None, b""
            position = block_end
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, position)
        start = position + CHUNK_HEADER.size
        yield position, kind, data[start : start + length]
        position = start + length


def _zeros(data: bytes, position: int) -> bool:
    """True when the chunk header at `position` is all zeros (unused space of a block)."""
    return data[position : position + CHUNK_HEADER.size] == bytes(CHUNK_HEADER.size)


def _chunk_problem(data: bytes, position: int, block_end: int) -> str | None:
    """What is wrong with the chunk at `position` itself, or None."""
    if position + CHUNK_HEADER.size > len(data):
        return "torn chunk header"
    crc, length, kind = CHUNK_HEADER.unpack_from(data, position)
    end = position + CHUNK_HEADER.size + length
    problem = None
    if end > block_end:
        problem = f"chunk of {length} bytes crosses its block"
    elif end > len(data):
        problem = "torn chunk"
    elif kind not in (FULL, FIRST, MIDDLE, LAST):
        problem = f"unknown chunk type {kind}"
    elif zlib.crc32(data[position + CHUNK_HEADER.size - 1 : end]) != crc:
        problem = "checksum mismatch"
    return problem


def read_records(path: str | Path, *, strict: bool = True) -> list[WandbRecord]:
    """Every record of the transaction log at `path`, in order (see `iter_payloads`)."""
    protos: Any = importlib.import_module("wandb.proto.wandb_internal_pb2")  # optional extra
    records = []
    for payload in iter_payloads(Path(path).read_bytes(), strict=strict):
        record = protos.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def item_key(item: Any) -> str:  # noqa: ANN401 - a protobuf item
    """The key of a history, summary or config item: ``key``, or ``nested_key`` joined by dots."""
    return str(item.key) if item.key else ".".join(item.nested_key)


def item_value(item: Any) -> Any:  # noqa: ANN401 - a protobuf item, any JSON value
    """The value of a history item: its ``value_json``, or its typed value when that is unset.

    Typed values (the ``value`` oneof) exist from wandb 0.2x on; older items have JSON only.
    """
    if item.value_json:
        return decode_json(item.value_json)
    if "value" not in item.DESCRIPTOR.oneofs_by_name:
        return None
    kind = item.WhichOneof("value")
    if kind is None or kind == "none":
        return None
    if kind == "json":
        return decode_json(item.json)
    return getattr(item, kind)


def history_rows(path: str | Path, *, strict: bool = True) -> list[dict[str, Any]]:
    """The history rows of a run, in order, each a dict of key to decoded value.

    Rows hold wandb's own keys too (``_step``, ``_runtime``, ``_timestamp``).
    """
    return [
        {item_key(item): item_value(item) for item in record.history.item}
        for record in read_records(path, strict=strict)
        if record.WhichOneof("record_type") == "history"
    ]


class TransactionLogTail:
    """Reads a transaction log that is still being written, a complete record at a time.

    Each call of `new_records` reads only what was appended since the last call and returns the
    records completed by it; a chunk that is not (yet) whole, or fails its checksum because it
    is being written, is read again next time.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._position = 0
        self._pieces: list[bytes] | None = None

    def new_payloads(self) -> list[bytes]:
        """The bytes of each record completed since the last call."""
        try:
            with self.path.open("rb") as stream:
                if self._position == 0:
                    header = stream.read(HEADER.size)
                    if len(header) < HEADER.size:
                        return []
                    _check_header(header)
                    self._position = HEADER.size
                stream.seek(self._position)
                data = stream.read()
        except FileNotFoundError:
            return []
        return self._consume(data)

    def _consume(self, data: bytes) -> list[bytes]:
        start = self._position
        end_of_data = start + len(data)
        payloads: list[bytes] = []
        position = start
        while True:
            block_end = (position // BLOCK_SIZE + 1) * BLOCK_SIZE
            if block_end - position < CHUNK_HEADER.size:
                if end_of_data < block_end:
                    break
                position = block_end
                continue
            if position + CHUNK_HEADER.size > end_of_data:
                break
            local = position - start
            if data[local : local + CHUNK_HEADER.size] == bytes(CHUNK_HEADER.size):
                if end_of_data < block_end:
                    break  # not written yet, or a trailer still to come
                position = block_end
                continue
            crc, length, kind = CHUNK_HEADER.unpack_from(data, local)
            end = position + CHUNK_HEADER.size + length
            if end > end_of_data or end > block_end:
                break
            if zlib.crc32(data[local + CHUNK_HEADER.size - 1 : end - start]) != crc:
                break  # being written: read it again next time
            self._take(kind, data[local + CHUNK_HEADER.size : end - start], payloads)
            position = end
        self._position = position
        return payloads

    def _take(self, kind: int, payload: bytes, payloads: list[bytes]) -> None:
        if kind == FULL:
            self._pieces = None
            payloads.append(payload)
        elif kind == FIRST:
            self._pieces = [payload]
        elif self._pieces is not None:
            self._pieces.append(payload)
            if kind == LAST:
                payloads.append(b"".join(self._pieces))
                self._pieces = None

    def _new_histories(self) -> list[Any]:
        protos: Any = importlib.import_module("wandb.proto.wandb_internal_pb2")
        histories = []
        for payload in self.new_payloads():
            record = protos.Record()
            record.ParseFromString(payload)
            if record.WhichOneof("record_type") == "history":
                histories.append(record.history)
        return histories

    def new_history_count(self) -> int:
        """How many history rows the records completed since the last call hold."""
        return len(self._new_histories())


__all__ = [
    "BLOCK_SIZE",
    "CHUNK_HEADER",
    "FIRST",
    "FULL",
    "HEADER",
    "LAST",
    "MIDDLE",
    "TransactionLogError",
    "TransactionLogTail",
    "decode_json",
    "history_rows",
    "item_key",
    "item_value",
    "iter_payloads",
    "read_records",
]
