"""The line parser against the input contract (docs: the TorchFort metric log)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tf_ship.shipper.events import FileIdentity, MetricEvent, SkipReason
from tf_ship.shipper.parse import INT64_MAX, INT64_MIN, LineParser, ParsedChunk, classify

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
