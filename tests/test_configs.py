"""Config files beside the log: safe loading, matching by identifier, retries, rewrites."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from tf_ship.shipper.configs import MAX_CONFIG_BYTES, ConfigCatalog, ConfigError, load_config

EXAMPLE = b"""general:
  enable_wandb_hook: 1
  report_frequency: 100
model:
  type: mlp
  parameters:
    dropout: 0.0
    layer_sizes: [1024, 1024]
loss:
  type: MSE
optimizer:
  type: adam
  parameters:
    learning_rate: 1e-3
    beta1: 0.9
lr_scheduler:
  type: cosine_annealing
  parameters:
    T_max: 100000
identifier: mymodel"""

BILLION_LAUGHS = b"""a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
identifier: bomb"""


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        """The current fake time."""
        return self.now


def test_example_config_loads_with_yaml_1_2_floats() -> None:
    """The contract's example: 1e-3 is the float 0.001, flow sequences kept, identifier removed."""
    identifier, config = load_config(EXAMPLE)
    assert identifier == "mymodel"
    assert "identifier" not in config
    assert list(config) == ["general", "model", "loss", "optimizer", "lr_scheduler"]
    assert config["optimizer"]["parameters"]["learning_rate"] == 0.001
    assert isinstance(config["optimizer"]["parameters"]["learning_rate"], float)
    assert config["optimizer"]["parameters"]["beta1"] == 0.9
    assert config["model"]["parameters"]["layer_sizes"] == [1024, 1024]
    assert config["model"]["parameters"]["dropout"] == 0.0
    assert config["lr_scheduler"]["parameters"]["T_max"] == 100000
    assert config["general"]["enable_wandb_hook"] == 1


def test_bundled_example_configs_load() -> None:
    """Every config bundled with the example loads, and its identifier is its model."""
    from tf_ship.cli import EXAMPLE_DIR  # noqa: PLC0415

    identifiers = {load_config(p.read_bytes())[0] for p in EXAMPLE_DIR.glob("config_*.yaml")}
    assert "mymodel" in identifiers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"identifier: 1", "1"),
        (b"identifier: true", "true"),
        (b"identifier: 1e-3", "1e-3"),
        (b"identifier: 007", "007"),
        (b"identifier: null", "null"),
        (b'identifier: "my model"', "my model"),
        (b"identifier: my model", "my model"),
    ],
)
def test_identifier_is_compared_as_text(text: bytes, expected: str) -> None:
    """Identifiers that YAML would load as int, bool, float or null are kept as their text."""
    identifier, config = load_config(b"general:\n  report_frequency: 1\n" + text)
    assert identifier == expected
    assert config == {"general": {"report_frequency": 1}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"general: [1, 2\nidentifier: x", ""),
        (b"- 1\n- 2", "mapping"),
        (b"just text", "mapping"),
        (b"", "mapping"),
        (b"general: 1", "identifier"),
        (b"identifier: [a, b]", "scalar"),
        (BILLION_LAUGHS, "alias"),
        (b"? [1, 2]\n: x\nidentifier: y", ""),
        (b"a: !!python/object/apply:os.system ['true']\nidentifier: x", ""),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\nidentifier: x", ""),
    ],
    ids=[
        "malformed",
        "list",
        "scalar",
        "empty",
        "no-identifier",
        "identifier-list",
        "billion-laughs",
        "unhashable-key",
        "python-tag",
        "deep-nesting",
    ],
)
def test_unusable_configs_raise_config_error(text: bytes, message: str) -> None:
    """Malformed, hostile or non-mapping YAML raises ConfigError quickly, never anything else."""
    started = time.monotonic()
    with pytest.raises(ConfigError, match=message or None):
        load_config(text)
    assert time.monotonic() - started < 5


def test_oversized_config_is_refused() -> None:
    """A config over the size limit is refused without being parsed."""
    with pytest.raises(ConfigError, match="larger"):
        load_config(b"identifier: x\npad: '" + b"x" * MAX_CONFIG_BYTES + b"'")


def test_latin1_bytes_do_not_crash() -> None:
    """A config with bytes that are not UTF-8 still loads."""
    identifier, config = load_config(b"name: caf\xe9\nidentifier: m")
    assert identifier == "m"
    assert config["name"].startswith("caf")


# -- the catalog ------------------------------------------------------------------------------


def write(path: Path, data: bytes) -> None:
    """Write in place, as TorchFort does (truncate and rewrite), with a fresh mtime."""
    path.write_bytes(data)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_catalog_matches_by_identifier_not_file_name(tmp_path: Path) -> None:
    """A config is filed under its identifier, whatever the file is called."""
    write(tmp_path / "config_something_else.yaml", EXAMPLE)
    configs = ConfigCatalog(tmp_path).configs()
    assert list(configs) == ["mymodel"]
    assert configs["mymodel"].path == tmp_path / "config_something_else.yaml"
    assert configs["mymodel"].version == 0


def test_half_written_file_is_retried_then_picked_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A half-written config is retried on the next scan and picked up once complete, no warning."""
    clock = FakeClock()
    path = tmp_path / "config_mymodel.yaml"
    write(path, EXAMPLE[:60])
    catalog = ConfigCatalog(tmp_path, rescan_interval=1.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        assert catalog.configs() == {}
        clock.now += 0.5
        write(path, EXAMPLE)
        assert catalog.configs() == {}  # not due yet
        clock.now += 0.6
        configs = catalog.configs()
    assert configs["mymodel"].config["loss"] == {"type": "MSE"}
    assert caplog.records == []


def test_forced_scan_sees_a_new_file_at_once(tmp_path: Path) -> None:
    """configs(force=True) rescans even before the interval is over."""
    catalog = ConfigCatalog(tmp_path, rescan_interval=100.0, clock=FakeClock())
    assert catalog.configs() == {}
    write(tmp_path / "config_mymodel.yaml", EXAMPLE)
    assert catalog.configs() == {}
    assert "mymodel" in catalog.configs(force=True)


def test_rewritten_file_gives_a_new_version(tmp_path: Path) -> None:
    """A config rewritten (a restarted run) replaces the old one with a higher version."""
    path = tmp_path / "config_mymodel.yaml"
    write(path, EXAMPLE)
    catalog = ConfigCatalog(tmp_path)
    first = catalog.configs(force=True)["mymodel"]
    write(path, EXAMPLE.replace(b"1e-3", b"5e-4"))
    second = catalog.configs(force=True)["mymodel"]
    assert second.version == first.version + 1
    assert second.config["optimizer"]["parameters"]["learning_rate"] == 0.0005
    assert second.written_ns > first.written_ns
    assert catalog.configs(force=True)["mymodel"] == second  # unchanged file: same version


@pytest.mark.parametrize(
    "text",
    [
        b"general: [1, 2\nidentifier: x",
        BILLION_LAUGHS,
        b"- 1\n- 2",
        b"a: " + b"[" * 5000 + b"]" * 5000 + b"\nidentifier: x",
    ],
    ids=["malformed", "billion-laughs", "not-a-mapping", "deep-nesting"],
)
def test_broken_file_warns_once_and_others_still_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: bytes
) -> None:
    """A file that stays broken is reported once with a clear warning; other configs still load."""
    clock = FakeClock()
    write(tmp_path / "config_bad.yaml", text)
    write(tmp_path / "config_mymodel.yaml", EXAMPLE)
    catalog = ConfigCatalog(tmp_path, rescan_interval=0.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        for _ in range(5):
            configs = catalog.configs()
            clock.now += 1.0
    assert list(configs) == ["mymodel"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "config_bad.yaml" in warnings[0]
    assert "unusable" in warnings[0]


def test_oversized_file_warns_and_does_not_hang(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A config file over the size limit is reported, not read whole."""
    clock = FakeClock()
    (tmp_path / "config_huge.yaml").write_bytes(
        b"identifier: x\npad: " + b"x" * (MAX_CONFIG_BYTES + 10)
    )
    catalog = ConfigCatalog(tmp_path, rescan_interval=0.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="tf_ship"):
        for _ in range(4):
            assert catalog.configs() == {}
            clock.now += 1.0
    assert any("larger" in r.getMessage() for r in caplog.records)


def test_colliding_file_names_keep_both_models(tmp_path: Path) -> None:
    """'my model' and 'mymodel' share config_mymodel.yaml: each keeps its config, by identifier."""
    path = tmp_path / "config_mymodel.yaml"
    catalog = ConfigCatalog(tmp_path)
    write(path, EXAMPLE.replace(b"identifier: mymodel", b"identifier: my model"))
    assert set(catalog.configs(force=True)) == {"my model"}
    write(path, EXAMPLE.replace(b"type: MSE", b"type: L1"))
    configs = catalog.configs(force=True)
    assert set(configs) == {"my model", "mymodel"}
    assert configs["my model"].config["loss"] == {"type": "MSE"}
    assert configs["mymodel"].config["loss"] == {"type": "L1"}


def test_missing_directory_is_not_an_error(tmp_path: Path) -> None:
    """A log directory that does not exist yet has no configs, and no exception."""
    assert ConfigCatalog(tmp_path / "not-yet").configs() == {}
