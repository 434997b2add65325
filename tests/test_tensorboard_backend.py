"""The TensorBoard backend, checked by reading its event files back with TensorBoard itself."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import tf_ship
from tf_ship.backends.base import FatalBackendError
from tf_ship.backends.tensorboard import TensorBoardBackend, flatten, folder_name
from tf_ship.shipper.events import MetricEvent, ModelConfig, RunInfo, RunStatus

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

TEXT_TAG = "config/text_summary"
HPARAMS_TAG = "_hparams_/session_start_info"


# -- helpers ---------------------------------------------------------------------------------


def metric_line(model: str | bytes, step: int, metric: str | bytes, value: str) -> bytes:
    """One TorchFort metric line, byte-exact."""
    as_bytes = [x if isinstance(x, bytes) else x.encode() for x in (model, metric)]
    return (
        b"TORCHFORT::WANDB: model: "
        + as_bytes[0]
        + b", step: "
        + str(step).encode()
        + b", "
        + as_bytes[1]
        + b": "
        + value.encode()
        + b"\n"
    )


def write_log(logdir: Path, lines: list[bytes]) -> Path:
    """Write torchfort.log into `logdir`."""
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / "torchfort.log"
    path.write_bytes(b"".join(lines))
    return path


def ship_to_tensorboard(logdir: Path, outdir: Path) -> TensorBoardBackend:
    """Ship the log in `logdir` to a TensorBoard backend writing to `outdir`."""
    backend = TensorBoardBackend(directory=outdir)
    report = tf_ship.ship(logdir, {"tb": backend}, follow=False)
    assert report.ok, report.summary()
    return backend


def accumulator(run_dir: Path) -> event_accumulator.EventAccumulator:
    """TensorBoard's reader for one run directory, keeping every scalar."""
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run, by tag, as (step, value) in file order."""
    acc = accumulator(run_dir)
    return {
        tag: [(event.step, event.value) for event in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }


def as_float32(text: str) -> float:
    """What a logged value becomes in an event file: the nearest float32."""
    with np.errstate(over="ignore"):
        return float(np.float32(float(text)))


def same_value(got: float, logged: str) -> bool:
    """Compare a read-back value to the logged text: NaN as NaN, inf exactly, else float32."""
    expected = as_float32(logged)
    if math.isnan(expected):
        return math.isnan(got)
    if math.isinf(expected):
        return got == expected
    return got == expected and math.copysign(1.0, got) == math.copysign(1.0, expected)


def assert_scalars(
    got: dict[str, list[tuple[int, float]]], expected: dict[str, list[tuple[int, str]]]
) -> None:
    """Tags, steps and values match exactly (values after float32 rounding), in order."""
    assert sorted(got) == sorted(expected)
    for tag, points in expected.items():
        assert [step for step, _ in got[tag]] == [step for step, _ in points], tag
        for (step, value), (_, logged) in zip(got[tag], points, strict=True):
            assert same_value(value, logged), (tag, step, value, logged)


def event_files(run_dir: Path) -> list[Path]:
    """The event files of a run directory."""
    return sorted(run_dir.glob("events.out.tfevents.*"))


def opened_backend(outdir: Path, logdir: Path) -> TensorBoardBackend:
    """A backend opened directly, without the engine."""
    backend = TensorBoardBackend(outdir)
    backend.open(RunInfo(logdir, logdir / "torchfort.log"))
    return backend


# -- metrics ---------------------------------------------------------------------------------


def test_every_event_arrives_once_with_its_tag_and_step(tmp_path):
    """Every line becomes exactly one point: right model folder, tag, step and value."""
    logged = {
        "mymodel": [
            (100, "train_loss", "0.0243117"),
            (100, "train_lr", "0.000999998"),
            (200, "train_loss", "0.0199"),
            (200, "train_lr", "0.000999"),
            (150, "train_loss", "0.5"),  # a restart: the step goes backwards
            (150, "train_loss", "0.25"),  # the same step and metric again
            (-1, "tiny", "1e-05"),
            (2**31, "big step", "1.23457e+06"),
            (2**53 + 1, "big step", "100000"),
            (2**63 - 1, "big step", "7"),
            (-(2**63), "big step", "8"),
        ],
        "critic_0": [(10, "train_loss", "2.71828"), (20, "train_loss", "-0.000123456")],
    }
    interleaved = itertools.zip_longest(
        *([(model, *row) for row in rows] for model, rows in logged.items())
    )
    lines = [metric_line(*row) for pair in interleaved for row in pair if row is not None]
    write_log(tmp_path / "log", lines)
    backend = ship_to_tensorboard(tmp_path / "log", tmp_path / "tb")

    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["critic_0", "mymodel"]
    for model, rows in logged.items():
        expected: dict[str, list[tuple[int, str]]] = {}
        for step, metric, value in rows:
            expected.setdefault(metric, []).append((step, value))
        assert backend.folder_of(model) == tmp_path / "tb" / model
        assert_scalars(read_scalars(tmp_path / "tb" / model), expected)


def test_special_values_arrive(tmp_path):
    """NaN, -nan, infinities and -0 arrive; float32 turns 1e+300 into inf, denormals into 0."""
    values = ["nan", "-nan", "inf", "-inf", "-0", "0", "1e+300", "-1e+300", "4.94066e-324", "1e-45"]
    write_log(tmp_path / "log", [metric_line("m", i, "v", v) for i, v in enumerate(values)])
    ship_to_tensorboard(tmp_path / "log", tmp_path / "tb")

    got = read_scalars(tmp_path / "tb" / "m")["v"]
    assert [step for step, _ in got] == list(range(len(values)))
    for (_, value), logged in zip(got, values, strict=True):
        assert same_value(value, logged), (value, logged)
    by_text = dict(zip(values, (v for _, v in got), strict=True))
    assert math.isnan(by_text["nan"])
    assert math.isnan(by_text["-nan"])
    assert by_text["inf"] == math.inf
    assert by_text["-inf"] == -math.inf
    assert by_text["1e+300"] == math.inf  # beyond float32
    assert by_text["4.94066e-324"] == 0.0  # below float32
    assert math.copysign(1.0, by_text["-0"]) == -1.0
    assert math.isclose(by_text["1e-45"], 1e-45, rel_tol=0.5)


def test_one_event_per_model_and_step(tmp_path):
    """Consecutive values of one (model, step) share one event in the file; nothing is lost."""
    loader_module = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    lines = [metric_line("m", step, metric, f"{step}.5") for step in range(5) for metric in "abc"]
    write_log(tmp_path / "log", lines)
    ship_to_tensorboard(tmp_path / "log", tmp_path / "tb")

    (path,) = event_files(tmp_path / "tb" / "m")
    events = [e for e in loader_module.EventFileLoader(str(path)).Load() if e.HasField("summary")]
    assert [e.step for e in events] == list(range(5))
    assert [[v.tag for v in e.summary.value] for e in events] == [list("abc")] * 5
    got = read_scalars(tmp_path / "tb" / "m")
    assert_scalars(got, {m: [(s, f"{s}.5") for s in range(5)] for m in "abc"})


def test_metric_names_are_kept_exactly(tmp_path):
    """Spaces, parentheses, ': ', ', ' and slashes stay in the tag as logged."""
    names = [
        "l2 error (rel.)",
        "ratio: a/b",
        "a, step: 3, b",
        "eval/loss",
        "/leading slash",
        "episode reward",
        "l2_error__rel._",  # what tensorboardX's add_scalar would make of the first one
    ]
    write_log(
        tmp_path / "log",
        [metric_line("td3_system", 7, name, str(i)) for i, name in enumerate(names)],
    )
    ship_to_tensorboard(tmp_path / "log", tmp_path / "tb")

    got = read_scalars(tmp_path / "tb" / "td3_system")
    assert_scalars(got, {name: [(7, str(i))] for i, name in enumerate(names)})


def test_model_names_become_safe_distinct_folders(tmp_path):
    """Unsafe model names get one safe folder each, directly in DIR; safe names are kept."""
    models = ["my model (v2)", "a/b", "a_b", "..", ".", "../escape", "x\\y", "tab\there", "é"]
    lines = [metric_line(model, i, "loss", f"{i}.25") for i, model in enumerate(models)]
    write_log(tmp_path / "log", lines)
    backend = ship_to_tensorboard(tmp_path / "log", tmp_path / "tb")

    out = tmp_path / "tb"
    folders = {model: backend.folder_of(model) for model in models}
    assert len(set(folders.values())) == len(models)
    assert sorted(out.iterdir()) == sorted(folders.values())
    for i, model in enumerate(models):
        folder = folders[model]
        assert folder is not None
        assert folder.parent == out
        assert folder.name not in {"", ".", ".."}
        assert not folder.name.startswith(".")
        assert "/" not in folder.name
        assert "\x00" not in folder.name
        assert_scalars(read_scalars(folder), {"loss": [(i, f"{i}.25")]})
    assert folders["my model (v2)"] == out / "my model (v2)"
    assert folders["a_b"] == out / "a_b"
    assert folders["é"] == out / "é"
    assert not (tmp_path / "escape").exists()


def test_folder_names_do_not_depend_on_order():
    """The folder of a model is a function of its name alone (a restarted shipper agrees)."""
    assert folder_name("a/b") == folder_name("a/b")
    assert folder_name("a/b") != folder_name("a\\b")
    assert folder_name("a/b").startswith("a_b~")
    assert folder_name("plain") == "plain"
    assert folder_name("") not in {"", ".", ".."}
    assert folder_name("nul\x00byte").startswith("nul_byte~")
    long_name = "x" * 1000
    assert len(folder_name(long_name).encode()) <= 200
    assert folder_name(long_name) != folder_name("x" * 999)


def test_latin1_model_and_metric_names(tmp_path):
    """Names that are not UTF-8 are decoded as Latin-1 and get a folder and tag of their own."""
    lines = [
        metric_line(b"caf\xe9", 1, b"r\xe9sultat", "1.5"),
        metric_line(b"caf\xe9", 2, b"r\xe9sultat", "2.5"),
        metric_line(b"\xff\xfe", 1, b"loss", "3.5"),
    ]
    write_log(tmp_path / "log", lines)
    backend = ship_to_tensorboard(tmp_path / "log", tmp_path / "tb")

    cafe = backend.folder_of("caf\xe9")
    other = backend.folder_of("\xff\xfe")
    assert cafe == tmp_path / "tb" / "café"
    assert other is not None
    assert other.exists()
    assert_scalars(read_scalars(cafe), {"résultat": [(1, "1.5"), (2, "2.5")]})
    assert_scalars(read_scalars(other), {"loss": [(1, "3.5")]})


def test_two_writers_in_the_same_second_do_not_clobber(tmp_path, monkeypatch):
    """Two backends writing the same models in the same second keep separate files."""
    from tensorboardX import event_file_writer  # noqa: PLC0415 - only this test needs it

    monkeypatch.setattr(event_file_writer, "time", types.SimpleNamespace(time=lambda: 1.7e9))
    lines = [metric_line(m, s, "loss", f"{s}.5") for s in range(20) for m in ("actor", "critic")]
    write_log(tmp_path / "log", lines)
    first, second = TensorBoardBackend(tmp_path / "tb"), TensorBoardBackend(tmp_path / "tb")
    report = tf_ship.ship(tmp_path / "log", {"one": first, "two": second}, follow=False)
    assert report.ok, report.summary()

    for model in ("actor", "critic"):
        files = event_files(tmp_path / "tb" / model)
        assert len(files) == 2
        assert all(".1700000000." in f.name for f in files)  # really the same second
        got = read_scalars(tmp_path / "tb" / model)
        assert Counter(step for step, _ in got["loss"]) == dict.fromkeys(range(20), 2)
        for step, value in got["loss"]:
            assert same_value(value, f"{step}.5")


# -- configs ---------------------------------------------------------------------------------

CONFIG = """\
general:
  enable_wandb_hook: 1
  report_frequency: 100
model:
  type: mlp
  parameters:
    dropout: 0.0
    layer_sizes: [1024, 1024]
optimizer:
  type: adam
  parameters:
    learning_rate: 1e-3
identifier: {name}"""


def config_texts(run_dir: Path) -> list[tuple[int, str]]:
    """The config text summaries of a run: (step, markdown)."""
    acc = accumulator(run_dir)
    if TEXT_TAG not in acc.Tags()["tensors"]:
        return []
    return [
        (event.step, event.tensor_proto.string_val[0].decode()) for event in acc.Tensors(TEXT_TAG)
    ]


def test_config_becomes_a_text_summary_and_hparams(tmp_path):
    """A model's config is written once as a YAML code block and as flattened hparams."""
    logdir = tmp_path / "log"
    write_log(logdir, [metric_line("my model", s, "train_loss", "0.5") for s in range(3)])
    (logdir / "config_mymodel.yaml").write_text(CONFIG.format(name="my model"))
    ship_to_tensorboard(logdir, tmp_path / "tb")

    run_dir = tmp_path / "tb" / "my model"
    ((step, text),) = config_texts(run_dir)
    assert step == 0
    assert text.startswith("```yaml\n")
    assert text.endswith("```\n")
    assert "layer_sizes: [1024, 1024]" in text
    assert "learning_rate: 0.001" in text
    assert "identifier" not in text

    # the hparams plugin reads metadata-only values, which only the plugin accumulator keeps
    from tensorboard.backend.event_processing import plugin_event_accumulator  # noqa: PLC0415
    from tensorboard.plugins.hparams import metadata  # noqa: PLC0415 - only this test needs it

    acc = plugin_event_accumulator.EventAccumulator(str(run_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")[HPARAMS_TAG]
    hparams = metadata.parse_session_start_info_plugin_data(content).hparams
    assert hparams["optimizer.parameters.learning_rate"].number_value == 0.001
    assert hparams["model.type"].string_value == "mlp"
    assert hparams["model.parameters.layer_sizes"].string_value == "[1024, 1024]"
    assert_scalars(read_scalars(run_dir), {"train_loss": [(s, "0.5") for s in range(3)]})
    # hparams live in the model's own run: no extra sub-runs
    assert [p for p in run_dir.rglob("*") if p.is_dir()] == []


def test_config_is_written_again_only_when_it_changes(tmp_path):
    """An unchanged config is not repeated; a changed one is written at its new version."""
    backend = opened_backend(tmp_path / "tb", tmp_path)
    first = {"optimizer": {"type": "adam"}}
    backend.log_config(ModelConfig("m", first))
    backend.log_config(ModelConfig("m", dict(first)))
    backend.log_config(ModelConfig("m", {"optimizer": {"type": "sgd"}}, version=1))
    backend.flush()
    texts = config_texts(tmp_path / "tb" / "m")
    assert [step for step, _ in texts] == [0, 1]
    assert "type: adam" in texts[0][1]
    assert "type: sgd" in texts[1][1]
    backend.close(RunStatus.FINISHED)


def test_flatten_config():
    """Nested keys join with dots; lists become JSON text; None is left out."""
    config = {"a": {"b": 1, "c": [1, 2], "d": None}, "e": True, "f": "x", "g": 10**400}
    assert flatten(config) == {"a.b": 1.0, "a.c": "[1, 2]", "e": True, "f": "x", "g": str(10**400)}


# -- flush, close, open ----------------------------------------------------------------------


def test_flush_makes_everything_readable_before_close(tmp_path):
    """After flush every event handed over is in the file, even more than a writer queue holds."""
    backend = opened_backend(tmp_path / "tb", tmp_path)
    batch = [MetricEvent("m", "loss", step, step / 4) for step in range(50)]
    backend.log_metrics(batch)
    backend.flush()

    got = read_scalars(tmp_path / "tb" / "m")
    assert_scalars(got, {"loss": [(s, repr(s / 4)) for s in range(50)]})
    backend.log_metrics([MetricEvent("m", "loss", 50, 12.5), MetricEvent("n", "loss", 0, 1.0)])
    backend.flush()
    assert len(read_scalars(tmp_path / "tb" / "m")["loss"]) == 51
    assert read_scalars(tmp_path / "tb" / "n") == {"loss": [(0, 1.0)]}
    backend.close(RunStatus.FINISHED)


def test_close_twice_is_a_no_op(tmp_path):
    """A second close does nothing; the backend refuses data after close."""
    backend = opened_backend(tmp_path / "tb", tmp_path)
    backend.log_metrics([MetricEvent("m", "loss", 1, 1.0)])
    backend.close(RunStatus.FINISHED)
    backend.close(RunStatus.FAILED)
    assert read_scalars(tmp_path / "tb" / "m") == {"loss": [(1, 1.0)]}
    with pytest.raises(RuntimeError, match="not open"):
        backend.log_metrics([MetricEvent("m", "loss", 2, 2.0)])


def test_close_releases_every_writer_when_one_fails(tmp_path):
    """One writer failing to flush at close does not keep any file open; the error is raised."""
    backend = opened_backend(tmp_path / "tb", tmp_path)
    backend.log_metrics([MetricEvent(m, "loss", 1, 1.0) for m in ("a", "b", "c")])
    writers = dict(backend._writers)
    failing = writers["a"]._writer

    def flush():
        msg = "disk gone"
        raise OSError(msg)

    failing.flush = flush
    with pytest.raises(OSError, match="disk gone"):
        backend.close(RunStatus.FAILED)
    for writer in writers.values():
        assert writer._writer._py_recordio_writer._writer.closed
    backend.close(RunStatus.FAILED)  # a no-op: nothing raised again
    assert read_scalars(tmp_path / "tb" / "b") == {"loss": [(1, 1.0)]}
    assert read_scalars(tmp_path / "tb" / "c") == {"loss": [(1, 1.0)]}


def test_missing_tensorboardx_is_fatal(tmp_path, monkeypatch):
    """Without tensorboardX, open raises FatalBackendError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    backend = TensorBoardBackend(tmp_path / "tb")
    with pytest.raises(FatalBackendError, match=r"tf-ship\[tensorboard\]"):
        backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    backend.close(RunStatus.FAILED)


def test_importing_the_module_does_not_import_tensorboardx():
    """The module imports tensorboardX only when a run is opened."""
    code = (
        "import sys, tf_ship.backends.tensorboard\n"
        "assert 'tensorboardX' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_directory_and_resume(tmp_path, monkeypatch):
    """Default ./runs/<run name>; resume_state records it; a resumed backend reuses it."""
    monkeypatch.chdir(tmp_path)
    run = RunInfo(tmp_path, tmp_path / "torchfort.log", run_name="exp 1")
    backend = TensorBoardBackend()
    backend.open(run)
    assert Path(backend.resume_state()["directory"]) == tmp_path / "runs" / "exp 1"
    backend.log_metrics([MetricEvent("m", "loss", 1, 1.0)])
    backend.flush()
    state = backend.resume_state()  # what the engine saves after the flush
    backend.close(RunStatus.KILLED)

    monkeypatch.chdir(tmp_path / "runs")
    again = TensorBoardBackend()
    again.open(RunInfo(tmp_path, tmp_path / "torchfort.log", state=state))
    again.log_metrics([MetricEvent("m", "loss", 2, 2.0)])
    again.close(RunStatus.FINISHED)
    assert read_scalars(tmp_path / "runs" / "exp 1" / "m") == {"loss": [(1, 1.0), (2, 2.0)]}
    assert len(event_files(tmp_path / "runs" / "exp 1" / "m")) == 2


def test_default_directory_without_run_name_is_a_utc_timestamp(tmp_path, monkeypatch):
    """Without a run name the directory is ./runs/<UTC timestamp>."""
    monkeypatch.chdir(tmp_path)
    backend = TensorBoardBackend()
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    backend.close(RunStatus.FINISHED)
    (made,) = (tmp_path / "runs").iterdir()
    assert made.name.endswith("Z")
    assert Path(backend.resume_state()["directory"]) == made


def test_the_registry_builds_it_from_its_cli_keyword(tmp_path):
    """`--tensorboard-dir` reaches the constructor as `directory`."""
    backend = tf_ship.create_backend("tensorboard", {"directory": str(tmp_path / "tb")})
    assert isinstance(backend, TensorBoardBackend)
    assert backend.directory == tmp_path / "tb"


def test_a_removed_event_file_stops_the_backend(tmp_path):
    """When someone deletes the output, flush raises FatalBackendError instead of losing data."""
    backend = opened_backend(tmp_path / "tb", tmp_path)
    backend.log_metrics([MetricEvent("m", "loss", 1, 1.0)])
    backend.flush()
    for path in event_files(tmp_path / "tb" / "m"):
        path.unlink()
    backend.log_metrics([MetricEvent("m", "loss", 2, 2.0)])
    with pytest.raises(FatalBackendError, match="removed"):
        backend.flush()
    backend.close(RunStatus.FAILED)


# -- application restarts and the view hint ---------------------------------------------------


def tensorboard_run_names(directory: Path) -> list[str]:
    """The runs TensorBoard shows for ``tensorboard --logdir directory``, as it names them."""
    multiplexer = pytest.importorskip(
        "tensorboard.backend.event_processing.plugin_event_multiplexer"
    ).EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(directory))
    return sorted(multiplexer.Runs())


def test_a_restart_goes_under_the_named_directory(tmp_path, monkeypatch):
    """``--on-restart new-run``: the first run in DIR/<model>, the restart in DIR/restart1.

    Nothing lies beside DIR, and the view hint shows DIR, where TensorBoard lists both runs.
    """
    monkeypatch.chdir(tmp_path)
    logdir = tmp_path / "logdir"
    write_log(
        logdir,
        [metric_line("m", step, "loss", str(step)) for step in (1, 2, 3)]
        + [metric_line("m", step, "loss", str(10 * step)) for step in (1, 2)],
    )
    backend = TensorBoardBackend(directory="tbout")
    report = tf_ship.ship(logdir, {"tb": backend}, on_restart="new-run")
    assert report.ok, report.summary()
    tbout = tmp_path / "tbout"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logdir", "tbout"]
    assert read_scalars(tbout / "m") == {"loss": [(1, 1.0), (2, 2.0), (3, 3.0)]}
    assert read_scalars(tbout / "restart1" / "m") == {"loss": [(1, 10.0), (2, 20.0)]}
    assert tensorboard_run_names(tbout) == ["m", "restart1/m"]
    hint = backend.view_hint()
    assert hint is not None
    assert hint.endswith(f" --logdir {tbout}")


def test_a_model_named_like_a_restart_folder_gets_a_folder_of_its_own(tmp_path):
    """A model called ``restart1`` in the first run does not take the first restart's folder."""
    backend = opened_backend(tmp_path / "tb", tmp_path)
    backend.log_metrics([MetricEvent("restart1", "loss", 1, 1.0)])
    backend.close(RunStatus.FINISHED)
    (folder,) = (tmp_path / "tb").iterdir()
    assert folder.name.startswith("restart1~")
    assert read_scalars(folder) == {"loss": [(1, 1.0)]}


def test_a_restart_of_the_layout_before_keeps_its_directory(tmp_path):
    """A saved restart run in a sibling ``DIR-restart1`` (the layout before) goes on there.

    Its view hint shows both siblings; the next restart goes under DIR.
    """
    tbout, sibling = tmp_path / "tbout", tmp_path / "tbout-restart1"
    first = TensorBoardBackend(tbout)
    first.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    first.log_metrics([MetricEvent("m", "loss", 5, 5.0)])
    first.close(RunStatus.FINISHED)
    old = TensorBoardBackend(tbout)
    old.open(RunInfo(tmp_path, tmp_path / "torchfort.log", state={"directory": str(sibling)},
                     segment=1, first_run={"directory": str(tbout)}))  # fmt: skip
    old.log_metrics([MetricEvent("m", "loss", 1, 1.0)])
    old.close(RunStatus.FINISHED)
    assert read_scalars(sibling / "m") == {"loss": [(1, 1.0)]}
    assert (old.view_hint() or "").endswith(f" --logdir {tmp_path}")
    later = TensorBoardBackend(tbout)
    later.open(RunInfo(tmp_path, tmp_path / "torchfort.log", segment=2,
                       first_run={"directory": str(tbout)}))  # fmt: skip
    later.log_metrics([MetricEvent("m", "loss", 1, 2.0)])
    later.close(RunStatus.FINISHED)
    assert read_scalars(tbout / "restart2" / "m") == {"loss": [(1, 2.0)]}
    assert (later.view_hint() or "").endswith(f" --logdir {tbout}")


def run_hint(hint: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a view hint as printed (in a shell), with ``--inspect`` so that TensorBoard exits."""
    return subprocess.run(  # noqa: S602 - the hint is a shell command line, as printed
        hint + " --inspect", shell=True, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_the_view_hint_runs_as_printed(tmp_path, monkeypatch):
    """``tensorboard`` on the PATH: its name; only beside this Python: its path; both run.

    Not installed: how to install it first, into this Python's environment.
    """
    from tf_ship.backends.tensorboard import tensorboard_command  # noqa: PLC0415

    bindir = Path(sys.executable).parent
    if not (bindir / "tensorboard").is_file():
        pytest.skip("tensorboard is not installed beside this Python")
    backend = opened_backend(tmp_path / "tb dir", tmp_path)
    backend.log_metrics([MetricEvent("m", "loss", 1, 1.0)])
    backend.close(RunStatus.FINISHED)
    shown = tmp_path / "tb dir"
    quoted = f"'{shown}'"

    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    hint = backend.view_hint()
    assert hint == f"tensorboard --logdir {quoted}"
    result = run_hint(hint, dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "Found event files in:" in result.stdout
    assert f"{shown}/m" in result.stdout

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    hint = backend.view_hint()
    assert hint == f"{bindir / 'tensorboard'} --logdir {quoted}"
    result = run_hint(hint, dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert f"{shown}/m" in result.stdout

    elsewhere = tmp_path / "env" / "bin"
    elsewhere.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(elsewhere / "python"))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert tensorboard_command(shown) == (
        f"{elsewhere / 'python'} -m pip install tensorboard && {elsewhere / 'tensorboard'} "
        f"--logdir {quoted}"
    )
    (elsewhere / "pip").write_text("#!/bin/sh\n")
    (elsewhere / "pip").chmod(0o755)
    monkeypatch.setenv("PATH", str(elsewhere))
    assert tensorboard_command(shown) == f"pip install tensorboard && tensorboard --logdir {quoted}"
