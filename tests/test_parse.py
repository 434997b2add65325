"""The line parser against the input contract (docs: the TorchFort metric log)."""

from __future__ import annotations

import itertools
import math
import re
import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tf_ship.shipper.events import EventColumns, FileIdentity, MetricEvent, SkipReason
from tf_ship.shipper.parse import (
    CLEAN_LINE,
    INT64_MAX,
    INT64_MIN,
    POSSESSIVE,
    LineParser,
    ParsedChunk,
    classify,
    clean_line_pattern,
)

PREFIX = b"TORCHFORT::WANDB: "
Fields = tuple[str, int, str, float]

# The contract's sample lines, byte-exact, with what each must parse to.
SAMPLES: list[tuple[bytes, tuple[str, int, str, float]]] = [
    (
        b"model: mymodel, step: 100, train_loss: 0.0243117",
        ("mymodel", 100, "train_loss", 0.0243117),
    ),
    (
        b"model: mymodel, step: 100, train_lr: 0.000999998",
        ("mymodel", 100, "train_lr", 0.000999998),
    ),
    (
        b"model: mymodel, step: 1000, l2 error (rel.): 1.23457e+06",
        ("mymodel", 1000, "l2 error (rel.)", 1.23457e06),
    ),
    (b"model: critic_0, step: 500, train_loss: 2.71828", ("critic_0", 500, "train_loss", 2.71828)),
    (b"model: actor, step: 500, train_lr: 0.0003", ("actor", 500, "train_lr", 0.0003)),
    (
        b"model: alpha, step: 500, train_loss: -0.000123456",
        ("alpha", 500, "train_loss", -0.000123456),
    ),
    (
        b"model: actor_critic, step: 40, train_loss_q: 153.274",
        ("actor_critic", 40, "train_loss_q", 153.274),
    ),
    (b"model: PPO, step: 41, kl_divergence: 0.00731", ("PPO", 41, "kl_divergence", 0.00731)),
    (
        b"model: td3_system, step: 37, episode reward: 12",
        ("td3_system", 37, "episode reward", 12.0),
    ),
    (b"model: mymodel, step: 300, train_loss: -nan", ("mymodel", 300, "train_loss", math.nan)),
    (b"model: mymodel, step: 400, train_loss: inf", ("mymodel", 400, "train_loss", math.inf)),
    (b"model: mymodel, step: 100, grad_norm: -0", ("mymodel", 100, "grad_norm", -0.0)),
    (
        b"model: mymodel, step: 9223372036854775807, big: 1e+300",
        ("mymodel", 9223372036854775807, "big", 1e300),
    ),
    (b"model: mymodel, step: -1, tiny: 4.94066e-324", ("mymodel", -1, "tiny", 5e-324)),
]


def same_value(a: float, b: float) -> bool:
    """Equal as logged values: NaN equals NaN, and the sign of zero counts."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def fields(event: MetricEvent) -> tuple[str, int, str, float]:
    """The four contract fields of an event."""
    return (event.model, event.step, event.metric, event.value)


def assert_same(got: list[MetricEvent], expected: list[tuple[str, int, str, float]]) -> None:
    """Check events field by field, values with `same_value`."""
    assert [fields(e)[:3] for e in got] == [e[:3] for e in expected]
    for event, (_, _, _, value) in zip(got, expected, strict=True):
        assert same_value(event.value, value), (event, value)


def parse(data: bytes, parser: LineParser | None = None) -> ParsedChunk:
    """Parse a chunk with a fresh parser."""
    return (parser or LineParser()).parse(data)


@pytest.mark.parametrize(("line", "expected"), SAMPLES, ids=[s[0].decode() for s in SAMPLES])
def test_contract_sample_line(line: bytes, expected: Fields) -> None:
    """Every sample line of the contract parses to exactly its fields."""
    parsed = parse(PREFIX + line + b"\n")
    assert parsed.skipped == []
    assert parsed.lines == 1
    assert_same(parsed.events, [expected])


def test_all_samples_in_one_chunk_keep_order_and_offsets() -> None:
    """The sample lines in one chunk give all events in order, each with its line's offset."""
    data = b"".join(PREFIX + line + b"\n" for line, _ in SAMPLES)
    identity = FileIdentity(1, 2)
    parsed = LineParser().parse(data, offset=1000, line_number=5, file=identity)
    assert_same(parsed.events, [expected for _, expected in SAMPLES])
    starts = [0]
    for line, _ in SAMPLES[:-1]:
        starts.append(starts[-1] + len(PREFIX) + len(line) + 1)
    assert [e.offset for e in parsed.events] == [1000 + s for s in starts]
    assert all(e.file == identity for e in parsed.events)
    assert parsed.lines == len(SAMPLES)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"nan", math.nan),
        (b"-nan", math.nan),
        (b"inf", math.inf),
        (b"-inf", -math.inf),
        (b"-0", -0.0),
        (b"0", 0.0),
        (b"4.94066e-324", 5e-324),
        (b"2.22507e-308", 2.22507e-308),
        (b"1e+300", 1e300),
        (b"1e-05", 1e-05),
        (b"100000", 100000.0),
        (b"9007199254740993", 9007199254740992.0),
    ],
)
def test_special_values(text: bytes, value: float) -> None:
    """nan, -nan, infinities, -0 (sign kept), denormals and huge values parse as floats."""
    parsed = parse(PREFIX + b"model: m, step: 1, v: " + text + b"\n")
    assert parsed.skipped == []
    (event,) = parsed.events
    assert same_value(event.value, value)


def test_negative_zero_keeps_its_sign() -> None:
    """-0 is negative zero, 0 is positive zero."""
    events = parse(
        PREFIX + b"model: m, step: 1, a: -0\n" + PREFIX + b"model: m, step: 1, a: 0\n"
    ).events
    assert math.copysign(1.0, events[0].value) == -1.0
    assert math.copysign(1.0, events[1].value) == 1.0


@pytest.mark.parametrize(
    ("line", "model", "step", "metric"),
    [
        (b"model: my model (v2), step: 7, a: b: c: 1", "my model (v2)", 7, "a: b: c"),
        (b"model: m, step: 7, x, step: 8, y: 1", "m", 7, "x, step: 8, y"),
        (b"model: m, x: 1, step: 7, loss: 1", "m, x: 1", 7, "loss"),
        (b"model: m, step: -9223372036854775808, s: 1", "m", INT64_MIN, "s"),
        (b"model: m, step: 0, ratio: 3: 1", "m", 0, "ratio: 3"),
        (b"model: \xc3\xa9t\xc3\xa9, step: 1, \xe2\x88\x82L: 1", "\u00e9t\u00e9", 1, "\u2202L"),
        (b"model: caf\xe9, step: 1, \xb5s: 1", "caf\u00e9", 1, "\u00b5s"),
        (b"model: m, step: 1, loss: 2\r", "m", 1, "loss"),
    ],
)
def test_names_split_robustly(line: bytes, model: str, step: int, metric: str) -> None:
    """Names with spaces, parentheses, ': ', ', step: ' split as specified; non-UTF-8 is Latin-1."""
    (event,) = parse(PREFIX + line + b"\n").events
    assert (event.model, event.step, event.metric) == (model, step, metric)


def test_empty_model_name_takes_the_first_step_field() -> None:
    """The step is the first ', step: N, ' after 'model: ', even when the model name is empty."""
    (event,) = parse(PREFIX + b"model: , step: 1, x, step: 2, m: 3\n").events
    assert (event.model, event.step, event.metric, event.value) == ("", 1, "x, step: 2, m", 3.0)


BAD_LINES: list[tuple[bytes, SkipReason]] = [
    (b"", SkipReason.EMPTY),
    (b"\r", SkipReason.EMPTY),
    (b"INFO: model created", SkipReason.NOT_A_METRIC_LINE),
    (b"TORCHFORT::INFO: model: m, step: 1, a: 1", SkipReason.NOT_A_METRIC_LINE),
    (b"TORCHFORT::WANDB: model: m, step: 1, train_lo", SkipReason.NOT_A_METRIC_LINE),
    (b"TORCHFORT::WANDB: model: m, step: 1, a: ", SkipReason.BAD_VALUE),
    (b"TORCHFORT::WANDB: model: m, step: 1, a: 0.024e", SkipReason.BAD_VALUE),
    (b"TORCHFORT::WANDB: model: m, step: 1, a: 1,234.57", SkipReason.BAD_VALUE),
    (b"TORCHFORT::WANDB: model: m, step: 1, a: 0,001", SkipReason.BAD_VALUE),
    (b"TORCHFORT::WANDB: model: m, step: 1, a: 12abc", SkipReason.BAD_VALUE),
    (b"TORCHFORT::WANDB: model: m, step: 9223372036854775808, a: 1", SkipReason.BAD_STEP),
    (b"TORCHFORT::WANDB: model: m, step: -9223372036854775809, a: 1", SkipReason.BAD_STEP),
    (b"TORCHFORT::WANDB: model: m, step: 1.5, a: 1", SkipReason.NOT_A_METRIC_LINE),
    (b"TORCHFORT::WANDB: model: m, step: , a: 1", SkipReason.NOT_A_METRIC_LINE),
    (b"TORCHFORT::WANDB: model: m", SkipReason.NOT_A_METRIC_LINE),
    (b"\x00\x00\x00\x00", SkipReason.NUL_BYTES),
    (b"TORCHFORT::WANDB: model: m, step: 1, a: 1\x00\x00x", SkipReason.NUL_BYTES),
    (b"\xff\xfe\x80binary\x01\x02 garbage", SkipReason.NOT_A_METRIC_LINE),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES, ids=[repr(b[0]) for b in BAD_LINES])
def test_bad_line_is_skipped_with_reason_and_line_number(line: bytes, reason: SkipReason) -> None:
    """A bad line between two good ones is skipped with its reason, 1-based number and offset."""
    good = PREFIX + b"model: m, step: 1, a: 1\n"
    parsed = parse(good + line + b"\n" + good)
    assert [fields(e) for e in parsed.events] == [("m", 1, "a", 1.0)] * 2
    (skipped,) = parsed.skipped
    assert skipped.reason is reason
    assert skipped.line_number == 2
    assert skipped.offset == len(good)
    assert parsed.lines == 3


@pytest.mark.parametrize(("line", "reason"), BAD_LINES[2:], ids=[repr(b[0]) for b in BAD_LINES[2:]])
def test_classify_agrees(line: bytes, reason: SkipReason) -> None:
    """classify() gives the same reason for each bad line on its own."""
    assert classify(line) is reason


def test_line_numbers_count_from_the_chunk_start() -> None:
    """Skipped line numbers add the lines before the chunk and count from 1."""
    parsed = LineParser().parse(b"a\n\nb\n", offset=50, line_number=10)
    assert [(s.line_number, s.offset, s.reason) for s in parsed.skipped] == [
        (11, 50, SkipReason.NOT_A_METRIC_LINE),
        (12, 52, SkipReason.EMPTY),
        (13, 53, SkipReason.NOT_A_METRIC_LINE),
    ]


def test_nul_run_before_a_valid_line_keeps_the_line() -> None:
    """A NUL run followed by a valid line on the same line: the event is kept, the NULs reported."""
    data = b"\x00" * 4096 + PREFIX + b"model: m, step: 3, loss: 0.5\n"
    parsed = parse(data)
    assert [fields(e) for e in parsed.events] == [("m", 3, "loss", 0.5)]
    assert parsed.events[0].offset == 4096
    assert [(s.reason, s.line_number, s.offset) for s in parsed.skipped] == [
        (SkipReason.NUL_BYTES, 1, 0)
    ]


def test_truncated_line_then_nuls_then_valid_line() -> None:
    """A cut-off line, a NUL gap and a valid line: the valid line survives, the rest is reported."""
    data = PREFIX + b"model: m, step: 1, lo" + b"\x00" * 100 + PREFIX + b"model: m, step: 2, a: 1\n"
    parsed = parse(data)
    assert [fields(e) for e in parsed.events] == [("m", 2, "a", 1.0)]
    assert [s.reason for s in parsed.skipped] == [SkipReason.NUL_BYTES]


def test_too_long_lines_are_skipped() -> None:
    """A metric line longer than max_line_bytes is skipped as TOO_LONG, so is a long bad line."""
    parser = LineParser(max_line_bytes=100)
    long_metric = PREFIX + b"model: m, step: 1, " + b"x" * 100 + b": 1\n"
    long_bad = b"y" * 200 + b"\n"
    good = PREFIX + b"model: m, step: 2, a: 1\n"
    parsed = parser.parse(long_metric + long_bad + good)
    assert [fields(e) for e in parsed.events] == [("m", 2, "a", 1.0)]
    assert [(s.reason, s.line_number) for s in parsed.skipped] == [
        (SkipReason.TOO_LONG, 1),
        (SkipReason.TOO_LONG, 2),
    ]


def test_name_cache_is_bounded_and_reused() -> None:
    """Names are decoded once and reused; the cache does not grow without bound."""
    parser = LineParser()
    a = parser.parse(PREFIX + b"model: m, step: 1, a: 1\n").events[0]
    b = parser.parse(PREFIX + b"model: m, step: 2, a: 2\n").events[0]
    assert a.model is b.model
    data = b"".join(PREFIX + b"model: m%d, step: 1, a: 1\n" % i for i in range(70000))
    assert len(parser.parse(data).events) == 70000
    assert len(parser._names) <= 65536


# -- properties -------------------------------------------------------------------------------

_STEP_FIELD = re.compile(rb", step: -?[0-9]+, ")
_VALUE = re.compile(
    rb"[-+]?(?:[0-9]+\.?[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf)",
    re.IGNORECASE,
)

names = st.text(
    st.characters(blacklist_characters="\n\x00", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=30,
)
steps = st.integers(INT64_MIN, INT64_MAX)
values = st.one_of(
    st.floats(allow_nan=False).map(lambda v: "%g" % v),  # noqa: UP031 - C++ formats like %g
    st.sampled_from(["nan", "-nan", "inf", "-inf", "-0", "0"]),
)


@st.composite
def valid_lines(draw: st.DrawFn) -> tuple[bytes, tuple[str, int, str, float]]:
    """A metric line as TorchFort writes it, and what it must parse to."""
    model, metric, step, value = draw(names), draw(names), draw(steps), draw(values)
    line = b"%smodel: %s, step: %d, %s: %s" % (
        PREFIX,
        model.encode(),
        step,
        metric.encode(),
        value.encode(),
    )
    first = _STEP_FIELD.search(line)
    # A model name that itself holds ", step: N, " is ambiguous by the grammar: not TorchFort's.
    if first is None or first.start() != len(PREFIX) + len(b"model: ") + len(model.encode()):
        line = b"%smodel: m, step: %d, %s: %s" % (PREFIX, step, metric.encode(), value.encode())
        model = "m"
    return line + b"\n", (model, step, metric, float(value))


def oracle(line: bytes) -> tuple[str, int, str, float] | None:
    """A plain reading of the contract's grammar for one line (without its newline)."""
    head = PREFIX + b"model: "
    if not line.startswith(head) or b"\x00" in line:
        return None
    line = line.removesuffix(b"\r")
    rest = line[len(head) :]
    step = _STEP_FIELD.search(rest)
    if step is None:
        return None
    number = int(rest[step.start() + len(b", step: ") : step.end() - 2])
    tail = rest[step.end() :]
    metric, sep, value = tail.rpartition(b": ")
    if not sep or not metric or _VALUE.fullmatch(value) is None:
        return None
    if not INT64_MIN <= number <= INT64_MAX:
        return None
    try:
        model_text, metric_text = rest[: step.start()].decode(), metric.decode()
    except UnicodeDecodeError:
        return None
    return (model_text, number, metric_text, float(value))


@given(st.lists(valid_lines(), max_size=40))
def test_property_valid_lines_parse_to_their_events(lines: list[tuple[bytes, Fields]]) -> None:
    """Any list of valid lines parses to exactly those events, in order, with nothing skipped."""
    parsed = parse(b"".join(line for line, _ in lines))
    assert parsed.skipped == []
    assert_same(parsed.events, [expected for _, expected in lines])


@given(st.lists(valid_lines(), min_size=1, max_size=40), st.data())
def test_property_chunking_at_line_boundaries_changes_nothing(
    lines: list[tuple[bytes, Fields]], data: st.DataObject
) -> None:
    """The same lines cut into chunks at any line boundaries give the same events and offsets."""
    whole = b"".join(line for line, _ in lines)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(lines) - 1))) if len(lines) > 1 else set())
    parser = LineParser()
    events: list[MetricEvent] = []
    offset = count = 0
    for start, stop in zip([0, *cuts], [*cuts, len(lines)], strict=True):
        chunk = b"".join(line for line, _ in lines[start:stop])
        parsed = parser.parse(chunk, offset=offset, line_number=count)
        events.extend(parsed.events)
        offset += len(chunk)
        count += parsed.lines
    assert_same(events, [expected for _, expected in lines])
    assert [e.offset for e in events] == [e.offset for e in LineParser().parse(whole).events]
    assert count == len(lines)


garbage_bytes = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"").replace(b"\x00", b""))
token_garbage = st.lists(
    st.sampled_from(
        [
            b"TORCHFORT::WANDB: ",
            b"model: ",
            b", step: ",
            b"-1",
            b"12",
            b", ",
            b": ",
            b"x",
            b" ",
            b"nan",
            b"1,5",
            b"e+",
            b"\xff",
            b"\r",
            b"TORCHFORT::INFO: ",
        ]
    ),
    max_size=12,
).map(b"".join)


@given(
    st.lists(
        st.one_of(
            valid_lines().map(lambda v: (v[0], v[1], True)),
            st.one_of(garbage_bytes, token_garbage).map(lambda g: (g + b"\n", None, False)),
        ),
        max_size=40,
    )
)
def test_property_garbage_never_disturbs_valid_lines(
    items: list[tuple[bytes, Fields | None, bool]],
) -> None:
    """Garbage lines interleaved never lose or alter a valid line; each is skipped unless valid."""
    expected: list[tuple[str, int, str, float]] = []
    bad_numbers: list[int] = []
    for number, (line, fields_, is_valid) in enumerate(items, start=1):
        if is_valid:
            assert fields_ is not None
            expected.append(fields_)
            continue
        reading = oracle(line[:-1])
        if reading is None:
            bad_numbers.append(number)
        else:
            expected.append(reading)
    parsed = parse(b"".join(line for line, _, _ in items))
    assert_same(parsed.events, expected)
    assert [s.line_number for s in parsed.skipped] == bad_numbers
    assert parsed.lines == len(items)


# -- the fast path gives what the general path gives ----------------------------------------------


def fast(chunk: bytes, parser: LineParser | None = None) -> list[MetricEvent] | None:
    """The fast path's events for a chunk (None: it leaves the chunk to the general path)."""
    return (parser or LineParser())._parse_clean(chunk, 0, None, chunk.count(b"\n"))


def exact(events: list[MetricEvent]) -> list[tuple[object, ...]]:
    """Events as comparable tuples: values by bit pattern (NaN equals itself, -0.0 is not 0.0)."""
    return [
        (e.model, e.metric, e.step, struct.pack("<d", e.value), e.file, e.offset) for e in events
    ]


def float_accepts(text: bytes) -> bool:
    """Whether float() reads the text."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def line(
    value: bytes = b"1", *, model: bytes = b"m", step: bytes = b"1", metric: bytes = b"a"
) -> bytes:
    """A metric line with these fields, newline included."""
    return PREFIX + b"model: " + model + b", step: " + step + b", " + metric + b": " + value + b"\n"


VALUE_CHARACTERS = bytes(c for c in range(256) if CLEAN_LINE.match(b"\n" + line(bytes([c]))))


GREEDY_CLEAN_LINE = re.compile(clean_line_pattern(possessive=False))
"""The fast path's expression as Python 3.10 spells it, compiled on any Python."""
PIECES = [
    *(b"\n", b"\r", PREFIX + b"model: ", b", step: ", b": ", b", ", b",", b":", b" ", b"\x00"),
    *(b"-", b"+", b".", b"7", b"0", b"e", b"E", b"n", b"a", b"N", b"i", b"f", b"x", b"\xff"),
]
"""Bits of metric lines, near-misses included, for text that stresses both spellings."""


def matches(
    pattern: re.Pattern[bytes], text: bytes
) -> list[tuple[tuple[int, int], tuple[bytes, ...]]]:
    """Where `pattern` matches in `text`, with its groups."""
    return [(match.span(), match.groups()) for match in pattern.finditer(text)]


def test_the_fast_path_is_spelled_for_the_running_python() -> None:
    """Possessive quantifiers from Python 3.11 on (the faster spelling), greedy ones before."""
    assert (sys.version_info >= (3, 11)) is POSSESSIVE
    assert CLEAN_LINE.pattern == clean_line_pattern(possessive=POSSESSIVE)
    assert (b"++" in CLEAN_LINE.pattern) == POSSESSIVE
    assert b"++" not in GREEDY_CLEAN_LINE.pattern
    assert b"*+" not in GREEDY_CLEAN_LINE.pattern


@pytest.mark.skipif(not POSSESSIVE, reason="Python 3.10's re has no possessive quantifiers")
@given(
    st.lists(
        st.one_of(st.sampled_from(PIECES), valid_lines().map(lambda case: b"\n" + case[0])),
        max_size=40,
    ).map(b"".join)
)
def test_property_both_spellings_of_the_fast_path_agree(text: bytes) -> None:
    """Python 3.10's greedy spelling matches exactly where and what the possessive one does."""
    possessive = re.compile(clean_line_pattern(possessive=True))
    assert matches(GREEDY_CLEAN_LINE, text) == matches(possessive, text)


def test_fast_path_values_are_made_of_number_characters() -> None:
    r"""The fast path's value is digits, '.', signs, 'e' and the letters of nan and inf, any case.

    Without '_', whitespace, 't' and 'y', float() cannot read "1_0", " 1", "1\r\r" or
    "infinity", which the grammar refuses.
    """
    assert sorted(VALUE_CHARACTERS) == sorted(b"0123456789.+-eEnNaAiIfF")


def test_float_accepts_exactly_the_grammar_values_over_those_characters() -> None:
    """Every text of up to 4 of those characters: float() reads it iff <VALUE> matches it.

    Digits behave alike in both, so two of them stand for all ten.
    """
    alphabet = b"07.+-eEnNaAiIfF"
    assert set(alphabet) <= set(VALUE_CHARACTERS)
    for length in range(1, 5):
        for chars in itertools.product(alphabet, repeat=length):
            text = bytes(chars)
            assert float_accepts(text) == (_VALUE.fullmatch(text) is not None), text


@given(
    st.one_of(
        st.lists(st.sampled_from(list(VALUE_CHARACTERS)), min_size=1, max_size=16).map(bytes),
        st.from_regex(_VALUE, fullmatch=True),
    )
)
def test_property_float_accepts_exactly_the_grammar_values(text: bytes) -> None:
    """Longer texts of the fast path's value characters: float() and <VALUE> agree."""
    assert float_accepts(text) == (_VALUE.fullmatch(text) is not None)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"nan", math.nan),
        (b"-nan", -math.nan),
        (b"NaN", math.nan),
        (b"+NAN", math.nan),
        (b"inf", math.inf),
        (b"-InF", -math.inf),
        (b"1e999", math.inf),
        (b"-1e999", -math.inf),
        (b".5", 0.5),
        (b"5.", 5.0),
        (b"1.e5", 1e5),
        (b"-.5E-3", -0.0005),
        (b"+1", 1.0),
        (b"-0", -0.0),
        (b"00.10", 0.1),
        (b"4.94066e-324", 5e-324),
    ],
)
def test_fast_path_reads_edge_values(text: bytes, value: float) -> None:
    """Odd but valid values take the fast path and give the general path's exact float."""
    chunk = line(b"0") + line(text)
    events = fast(chunk)
    assert events is not None
    assert exact(events) == exact(LineParser()._parse_any(chunk, 0, 0, None, 2).events)
    assert same_value(events[1].value, value)


@pytest.mark.parametrize(
    "text",
    [b"1..2", b"e5", b"nana", b"1e", b"+", b"-", b".", b"5e+", b"nan1", b"--1", b"in", b".e1"],
)
def test_fast_path_gives_up_on_values_float_refuses(text: bytes) -> None:
    """A value of number characters that is no number: the chunk goes to the general path."""
    chunk = line(b"1") + line(text)
    assert CLEAN_LINE.findall(b"\n" + chunk)[1][3] == text
    assert fast(chunk) is None
    parsed = parse(chunk)
    assert [fields(e) for e in parsed.events] == [("m", 1, "a", 1.0)]
    assert [(s.reason, s.line_number) for s in parsed.skipped] == [(SkipReason.BAD_VALUE, 2)]


@pytest.mark.parametrize(
    "text", [b"1_0", b" 1.0", b"1.0 ", b"infinity", b"-Infinity", b"\x0b1", b"1\r\r"]
)
def test_values_float_reads_but_the_grammar_refuses_are_skipped(text: bytes) -> None:
    """float() reads these, the grammar does not: never on the fast path, always skipped."""
    assert float_accepts(text)
    chunk = line(b"1") + line(text)
    assert CLEAN_LINE.findall(b"\n" + chunk)[1:] == []
    parsed = parse(chunk)
    assert [fields(e) for e in parsed.events] == [("m", 1, "a", 1.0)]
    assert [(s.reason, s.line_number) for s in parsed.skipped] == [(SkipReason.BAD_VALUE, 2)]


@pytest.mark.parametrize(
    ("step", "events"),
    [
        (b"%d" % INT64_MAX, 3),
        (b"%d" % INT64_MIN, 3),
        (b"-0", 3),
        (b"007", 3),
        (b"%d" % (INT64_MAX + 1), 2),
        (b"%d" % (INT64_MIN - 1), 2),
        (b"1" + b"0" * 30, 2),
        (b"1" * 5000, 2),  # more digits than Python converts: out of range, not a crash
        (b"-" + b"0" * 5000 + b"7", 3),  # leading zeros: -7
        (b"0" * 5000 + b"1" * 20, 2),
        (b"+1", 2),
        (b"1_0", 2),
    ],
)
def test_fast_path_steps_match_the_general_path(step: bytes, events: int) -> None:
    """int64 steps at and beyond the limits, signs, leading zeros: both paths agree.

    A chunk with a line the fast path cannot ship is left to the general path whole.
    """
    chunk = line(model=b"a") + line(step=step) + line(model=b"b")
    parsed = parse(chunk)
    assert exact(parsed.events) == exact(LineParser()._parse_any(chunk, 0, 0, None, 3).events)
    assert len(parsed.events) == events
    assert (fast(chunk) is not None) == (events == 3 and len(step) < 4300)
    reason = SkipReason.BAD_STEP if step.lstrip(b"-").isdigit() else SkipReason.NOT_A_METRIC_LINE
    assert [s.reason for s in parsed.skipped] == [reason] * (3 - events)
    if events == 2:
        assert classify(line(step=step).rstrip(b"\n")) is reason


@pytest.mark.parametrize(
    ("model", "metric"),
    [
        (b"", b"a"),
        (b"my model (v2)", b"l2 error (rel.)"),
        (b"caf\xe9", b"\xb5s"),
        (b"m\r", b" a, b "),
        (b"a: b", b"a"),
    ],
)
def test_fast_path_reads_names(model: bytes, metric: bytes) -> None:
    """Empty, spaced, non-UTF-8 names, ':' in the model, ', ' in the metric: as read in general."""
    chunk = line(b"2", model=model, metric=metric) + line()
    events = fast(chunk)
    assert events is not None
    assert exact(events) == exact(LineParser()._parse_any(chunk, 0, 0, None, 2).events)


@pytest.mark.parametrize(
    ("model", "metric"),
    [
        (b"a, b", b"a"),
        (b"m, step: 3", b"a"),
        (b"m, step: x", b"a"),
        (b"m", b"a: b"),
        (b"m", b"a:b"),
        (b"m", b"x, step: 8, y"),
    ],
)
def test_fast_path_leaves_names_with_separators(model: bytes, metric: bytes) -> None:
    """A ',' in the model or a ':' in the metric: the general path splits the names."""
    chunk = line(b"2", model=model, metric=metric) + line()
    assert fast(chunk) is None
    parsed = parse(chunk)
    assert len(parsed.events) == 2
    assert exact(parsed.events) == exact(LineParser()._parse_any(chunk, 0, 0, None, 2).events)


def test_fast_path_reads_crlf_lines_with_their_offsets() -> None:
    r"""Lines ending in \r\n take the fast path; the \r is neither in the value nor lost."""
    chunk = line(b"1\r") + line(b"2\r") + line(b"3")
    events = fast(chunk)
    assert events is not None
    assert [(e.value, e.offset) for e in events] == [
        (1.0, 0),
        (2.0, len(line(b"1\r"))),
        (3.0, 2 * len(line(b"1\r"))),
    ]


def test_fast_path_with_a_full_name_cache() -> None:
    """Once the name cache is full, names outside it are still decoded right."""
    parser = LineParser()
    parser.parse(b"".join(line(model=b"m%d" % i) for i in range(70000)))
    events = fast(line(model=b"new\xe9") + line(model=b"m0") + line(model=b"m69999"), parser)
    assert events is not None
    assert [e.model for e in events] == ["new\u00e9", "m0", "m69999"]


def test_fast_path_over_long_line() -> None:
    """A line longer than max_line_bytes sends the chunk to the general path, which skips it.

    The limit is on the line without its newline: a line of exactly the limit is shipped.
    """
    parser = LineParser(max_line_bytes=len(line()) - 1)
    chunk = line() + line(metric=b"ab") + line()
    assert fast(chunk, parser) is None
    assert fast(line() + line(), parser) is not None
    parsed = parser.parse(chunk)
    assert [(s.reason, s.line_number) for s in parsed.skipped] == [(SkipReason.TOO_LONG, 2)]
    assert len(parsed.events) == 2


plain_models = st.binary(max_size=12).map(lambda b: b.translate(None, b"\n\x00,"))
plain_metrics = st.binary(min_size=1, max_size=12).map(
    lambda b: b.translate(None, b"\n\x00:") or b"v"
)
plain_values = st.one_of(
    st.floats().filter(lambda v: not math.isnan(v)).map(lambda v: b"%g" % v),
    st.floats().filter(lambda v: not math.isnan(v)).map(lambda v: repr(v).encode()),
    st.sampled_from([b"nan", b"-nan", b"NaN", b"-inf", b"1e999", b".5", b"5.", b"+1", b"-0"]),
)


@st.composite
def plain_lines(draw: st.DrawFn) -> bytes:
    """A valid metric line the fast path reads: no ',' in the model, no ':' in the metric."""
    return (
        PREFIX
        + b"model: "
        + draw(plain_models)
        + b", step: %d, " % draw(steps)
        + draw(plain_metrics)
        + b": "
        + draw(plain_values)
        + draw(st.sampled_from([b"\n", b"\n", b"\r\n"]))
    )


@st.composite
def tricky_lines(draw: st.DrawFn) -> bytes:
    """A line near the fast path's edge: valid or not, read by the fast path or not."""
    model = draw(
        st.one_of(
            plain_models,
            st.sampled_from([b"", b"a, b", b"a: b", b"m, step: 3", b"m, step: x", b"caf\xe9"]),
        )
    )
    step = draw(
        st.one_of(
            st.integers(INT64_MIN - 2, INT64_MIN + 2).map(b"%d".__mod__),
            st.integers(INT64_MAX - 2, INT64_MAX + 2).map(b"%d".__mod__),
            st.integers(-(10**25), 10**25).map(b"%d".__mod__),
            st.sampled_from([b"+1", b"007", b"-0", b"1.5", b"", b"-", b" 1", b"1_0"]),
        )
    )
    metric = draw(
        st.one_of(
            plain_metrics,
            st.sampled_from([b"", b"a: b", b"a:b", b"a:", b"x, step: 8, y", b" ", b"\r"]),
        )
    )
    value = draw(
        st.one_of(
            plain_values,
            st.lists(st.sampled_from(list(VALUE_CHARACTERS)), max_size=6).map(bytes),
            st.sampled_from(
                [b"1_0", b" 1.0", b"infinity", b"1..2", b"e5", b"nana", b"1,5", b"1\r", b"1 "]
            ),
        )
    )
    end = draw(st.sampled_from([b"\n", b"\r\n", b"\r\r\n"]))
    text = PREFIX + b"model: " + model + b", step: " + step + b", " + metric + b": " + value + end
    other = st.sampled_from(
        [b"\n", b"\r\n", b"garbage\n", PREFIX + b"model: m\n", b"x" + line(), b"\x00" + line()]
    )
    return draw(st.one_of(st.just(text), other))


@given(
    st.lists(plain_lines(), max_size=20),
    st.lists(st.tuples(st.integers(0, 20), tricky_lines()), max_size=3),
    st.sampled_from([1 << 20, 100, 60]),
    st.integers(0, 2**40),
    st.integers(0, 2**20),
)
def test_property_fast_path_gives_what_the_general_path_gives(
    plain: list[bytes],
    tricky: list[tuple[int, bytes]],
    max_line_bytes: int,
    offset: int,
    line_number: int,
) -> None:
    """Any chunk parses exactly as the general path alone parses it, offsets and NaN bits included.

    When the fast path reads a chunk, it gives the general path's events; it reads every chunk of
    plain metric lines.
    """
    lines = list(plain)
    for position, text in tricky:
        lines.insert(position, text)
    chunk = b"".join(lines)
    count = chunk.count(b"\n")
    identity = FileIdentity(7, 8)
    general = LineParser(max_line_bytes)._parse_any(chunk, offset, line_number, identity, count)
    parsed = LineParser(max_line_bytes).parse(
        chunk, offset=offset, line_number=line_number, file=identity
    )
    assert exact(parsed.events) == exact(general.events)
    assert parsed.skipped == general.skipped
    assert parsed.lines == general.lines == count
    if b"\x00" in chunk:
        return
    events = LineParser(max_line_bytes)._parse_clean(chunk, offset, identity, count)
    if events is not None:
        assert general.skipped == []
        assert exact(events) == exact(general.events)
    elif plain and not tricky and max(map(len, lines)) <= max_line_bytes:
        pytest.fail("the fast path left a chunk of plain metric lines to the general path")


def test_the_fast_paths_events_behave_as_a_list_of_metric_events() -> None:
    """Columns inside, a plain sequence of `MetricEvent` outside: items, slices, equality."""
    file = FileIdentity(1, 2)
    lines = [
        b"TORCHFORT::WANDB: model: m, step: %d, %s: %d.5\n" % (step, metric, step)
        for step in range(3)
        for metric in (b"loss", b"lr")
    ]
    chunk = b"".join(lines)
    offsets = list(itertools.accumulate(map(len, lines), initial=100))[:-1]
    expected = [
        MetricEvent("m", metric, step, step + 0.5, file, offsets[2 * step + i])
        for step in range(3)
        for i, metric in enumerate(("loss", "lr"))
    ]
    events = LineParser().parse(chunk, offset=100, file=file).events
    assert isinstance(events, EventColumns)  # the fast path's kind
    assert len(events) == 6
    assert events[0] == expected[0]
    assert events[-1] == expected[-1]
    assert type(events[3]) is MetricEvent
    assert events[1:4] == expected[1:4]
    assert events[::2] == expected[::2]
    assert events[4:][0] == expected[4]
    assert list(events) == expected
    assert events == expected
    assert expected == events
    assert events != expected[:5]
    assert all(type(event) is MetricEvent for event in events)
    assert [event.key for event in events[2:4]] == ["m/loss", "m/lr"]
