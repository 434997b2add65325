"""Filters, renames and prefixes applied before every backend."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tf_ship.shipper.events import MetricEvent, ModelConfig
from tf_ship.shipper.shaping import EventShaper, parse_renames


def ev(model: str, metric: str, step: int = 1, value: float = 1.0) -> MetricEvent:
    """A metric event without a source."""
    return MetricEvent(model, metric, step, value)


EVENTS = [
    ev("mymodel", "train_loss"),
    ev("mymodel", "train_lr"),
    ev("critic_0", "train_loss"),
    ev("actor", "train_lr"),
]


def keys(events: list[MetricEvent]) -> list[str]:
    """The ``model/metric`` keys, in order."""
    return [e.key for e in events]


def test_include_keeps_only_matching_keys() -> None:
    """--include globs select on model/metric."""
    shaper = EventShaper(include=["*/train_loss"])
    assert keys(shaper.events(EVENTS)) == ["mymodel/train_loss", "critic_0/train_loss"]


def test_exclude_drops_matching_keys_after_include() -> None:
    """--exclude wins over --include."""
    shaper = EventShaper(include=["mymodel/*", "actor/*"], exclude=["*/train_lr"])
    assert keys(shaper.events(EVENTS)) == ["mymodel/train_loss"]


def test_rename_model_and_single_metric() -> None:
    """A model rename applies to all its metrics; a model/metric rename is more specific."""
    renames = parse_renames(["mymodel=net", "critic_0/train_loss=critic/loss"])
    shaper = EventShaper(renames=renames)
    assert keys(shaper.events(EVENTS)) == [
        "net/train_loss",
        "net/train_lr",
        "critic/loss",
        "actor/train_lr",
    ]


def test_prefix_goes_before_every_model_and_config() -> None:
    """--prefix names a run's models apart; configs follow the same name."""
    shaper = EventShaper(prefix="run1.", renames={"mymodel": "net"})
    assert keys(shaper.events(EVENTS[:1])) == ["run1.net/train_loss"]
    config = shaper.config(ModelConfig("mymodel", {"a": 1}))
    assert config.model == "run1.net"
    assert config.config == {"a": 1}


def test_events_keep_step_value_and_source() -> None:
    """Shaping changes names only."""
    event = MetricEvent("m", "x", -5, float("inf"), None, 1234)
    (shaped,) = EventShaper(prefix="p/").events([event])
    assert (shaped.step, shaped.value, shaped.offset) == (-5, float("inf"), 1234)


@pytest.mark.parametrize("bad", ["noequals", "=new", "old=", "model=a/b"])
def test_malformed_renames_are_refused(bad: str) -> None:
    """A rename that is not OLD=NEW of the same kind is a clear error."""
    with pytest.raises(ValueError, match="--rename"):
        parse_renames([bad])


def test_inactive_shaper_says_so() -> None:
    """Without options nothing is shaped, and the engine can skip the call."""
    assert not EventShaper().active
    assert EventShaper(prefix="x").active


names = st.text(st.characters(blacklist_characters="\n\x00/"), min_size=1, max_size=8)


@given(st.lists(st.tuples(names, names), max_size=30), st.lists(names, max_size=3))
def test_exclude_everything_of_a_model_drops_exactly_its_events(
    pairs: list[tuple[str, str]], dropped: list[str]
) -> None:
    """Excluding ``model/*`` drops exactly that model's events, whatever the names."""
    events = [ev(m, k) for m, k in pairs]
    globs = [f"{m.replace('[', '[[]').replace('*', '[*]').replace('?', '[?]')}/*" for m in dropped]
    kept = EventShaper(exclude=globs).events(events)
    assert keys(kept) == [e.key for e in events if e.model not in dropped]


def test_command_line_filters_renames_and_prefixes(tmp_path: Path) -> None:
    """--include/--exclude/--rename/--prefix reach every backend, configs included."""
    out = tmp_path / "out.jsonl"
    result = subprocess.run(
        [
            sys.executable, "-m", "tf_ship", "--example", "--no-follow", "-b", "jsonl",
            "--jsonl-path", str(out), "--include", "mymodel/*", "--exclude", "*/train_lr",
            "--rename", "mymodel=net", "--prefix", "run1.",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    metrics = collections.Counter(r["metric"] for r in records if "metric" in r)
    assert metrics == {"train_loss": 200, "l2 error (rel.)": 20}
    assert {r["model"] for r in records} == {"run1.net"}
    assert [r["model"] for r in records if "config" in r] == ["run1.net"]


def test_malformed_rename_is_a_usage_error() -> None:
    """A bad --rename exits 2 with the reason."""
    result = subprocess.run(
        [sys.executable, "-m", "tf_ship", "--example", "--no-follow", "-b", "null",
         "--rename", "justone"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "OLD=NEW" in result.stderr
