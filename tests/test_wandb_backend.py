"""The wandb backend against a real wandb in offline mode, read back from its transaction log."""

from __future__ import annotations

import collections
import json
import math
import signal
import struct
import subprocess
import sys
import types
import zlib
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st
from wandb_helpers import (
    PROJECT,
    config_of,
    exit_code_of,
    hidden_metrics,
    line,
    metric_definitions,
    metric_rows,
    offline_wandb,
    run_record,
    settle,
    ship_to_wandb,
    transaction_logs,
    write_config,
    write_log,
)

import tf_ship
from tf_ship.backends.base import FatalBackendError
from tf_ship.backends.wandb.backend import WandbBackend
from tf_ship.backends.wandb.replay import session_logs
from tf_ship.backends.wandb.rows import events_in_row, metric_key, rows
from tf_ship.backends.wandb.transaction_log import (
    BLOCK_SIZE,
    TransactionLogError,
    history_rows,
    iter_payloads,
    read_records,
)
from tf_ship.shipper.events import FileIdentity, MetricEvent, ModelConfig, RunInfo, RunStatus

pytest.importorskip("wandb")

MODEL_YAML = """\
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
"""


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An offline wandb whose runs go to a directory of this test."""
    return offline_wandb(monkeypatch, tmp_path)


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    """The TorchFort log directory of this test."""
    return tmp_path / "logdir"


# -- shipping through the engine ---------------------------------------------------------------


def test_each_event_arrives_once_in_its_row(runs: Path, logdir: Path) -> None:
    """Rows hold one (model, step) of consecutive lines per model, each with its own x-axis value.

    Groups of different models that follow each other share a row; a model already in the row
    starts the next. Steps that go backwards or repeat are kept; a metric repeated within one
    (model, step) starts a new row instead of overwriting the first value; wandb's ``_step``
    counts every row.
    """
    write_log(
        logdir,
        [
            line("mymodel", 100, "train_loss", "0.0243117"),
            line("mymodel", 100, "train_lr", "0.000999998"),
            line("critic_0", 500, "train_loss", "2.71828"),
            line("mymodel", 200, "train_loss", "0.0121"),
            line("mymodel", 100, "train_loss", "0.5"),  # a restart re-logs step 100
            line("critic_0", 40, "train_loss", "3"),  # steps go backwards
            line("critic_0", 40, "train_loss", "4"),  # the same metric again at the same step
            line("critic_0", 40, "train_lr", "0.0003"),
            line("mymodel", 200, "train_loss", "0.0121"),  # the same line again
        ],
    )
    _, path = ship_to_wandb(logdir, runs)
    assert metric_rows(path) == [
        {
            "mymodel/train_loss": 0.0243117,
            "mymodel/train_lr": 0.000999998,
            "mymodel/step": 100,
            "critic_0/train_loss": 2.71828,
            "critic_0/step": 500,
        },
        {"mymodel/train_loss": 0.0121, "mymodel/step": 200},
        {
            "mymodel/train_loss": 0.5,
            "mymodel/step": 100,
            "critic_0/train_loss": 3,
            "critic_0/step": 40,
        },
        {
            "critic_0/train_loss": 4,
            "critic_0/train_lr": 0.0003,
            "critic_0/step": 40,
            "mymodel/train_loss": 0.0121,
            "mymodel/step": 200,
        },
    ]
    assert [row["_step"] for row in history_rows(path)] == list(range(4))
    definitions = metric_definitions(path)
    for model in ("mymodel", "critic_0"):
        assert definitions[f"{model}/step"] == ""
        assert definitions[f"{model}/*"] == f"{model}/step"
    assert hidden_metrics(path) == {"mymodel/step", "critic_0/step"}  # no charts of their own
    assert exit_code_of(path) == 0


def reference_rows(batch: list[MetricEvent]) -> list[tuple[dict[str, Any], dict[str, list[str]]]]:
    """The packing rule, event by event, with nothing remembered: (values, keys by model)."""
    packed: list[tuple[dict[str, Any], dict[str, list[str]]]] = []
    values: dict[str, Any] = {}
    by_model: dict[str, list[str]] = {}
    previous: tuple[str, int] | None = None
    keys: list[str] = []
    for event in batch:
        model, step = event.model, event.step
        key = metric_key(model, event.metric)
        new_group = (model, step) != previous
        related = any(
            model == other or model.startswith(f"{other}/") or other.startswith(f"{model}/")
            for other in by_model
        )
        if (not new_group and key in values) or (new_group and related):
            packed.append((values, by_model))
            values, by_model = {}, {}
            new_group = True
        if new_group:
            keys = by_model.setdefault(model, [])
        values[key] = event.value
        values[f"{model}/step"] = step
        keys.append(key)
        previous = (model, step)
    if values:
        packed.append((values, by_model))
    return packed


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    items=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "a/b", "c*", "step"]),
            st.integers(0, 3),
            st.sampled_from(["loss", "lr", "b/x", "step", "x/step"]),
        ),
        max_size=40,
    )
)
def test_property_rows_follow_the_packing_rule(items: list[tuple[str, int, str]]) -> None:
    """Whatever the models, steps and metrics, the rows are the rule's, events in log order."""
    batch = [MetricEvent(m, k, s, float(i), None, i) for i, (m, s, k) in enumerate(items)]
    packed = list(rows(batch))
    assert [(row.values, row.keys_by_model) for row in packed] == reference_rows(batch)
    assert [event for row in packed for event in row.events] == batch


def test_rows_pack_models_in_log_order() -> None:
    """Each row holds one (model, step) of each model; order and every value are kept."""

    def event(model: str, step: int, metric: str, value: float) -> MetricEvent:
        return MetricEvent(model, metric, step, value)

    batch = [
        event("a", 1, "loss", 1.0),
        event("a", 1, "lr", 2.0),
        event("b", 1, "loss", 3.0),
        event("a", 2, "loss", 4.0),  # a is in the row: next row
        event("a/b", 7, "x", 5.0),  # could be taken for a's key b/x: next row
        event("b", 2, "x/step", 6.0),  # never an x-axis key
        event("b", 2, "x/step", 7.0),  # a repeat within (b, 2): next row
    ]
    packed = list(rows(batch))
    assert [row.values for row in packed] == [
        {"a/loss": 1.0, "a/lr": 2.0, "a/step": 1, "b/loss": 3.0, "b/step": 1},
        {"a/loss": 4.0, "a/step": 2},
        {"a/b/x": 5.0, "a/b/step": 7, "b/x/step (metric)": 6.0, "b/step": 2},
        {"b/x/step (metric)": 7.0, "b/step": 2},
    ]
    assert [event for row in packed for event in row.events] == batch
    assert [events_in_row(row.values) for row in packed] == [3, 1, 2, 1]
    assert [row.keys_by_model for row in packed][2] == {
        "a/b": ["a/b/x"],
        "b": ["b/x/step (metric)"],
    }
    assert metric_key("m", "step (metric)") == "m/step (metric) (metric)"
    assert metric_key("m", "steps") == "m/steps"


def test_special_values_and_steps_arrive_exactly(runs: Path, logdir: Path) -> None:
    """NaN, infinities, -0, extreme doubles and int64 steps (beyond 2**53, negative) all arrive."""
    int64_max, int64_min = 2**63 - 1, -(2**63)
    write_log(
        logdir,
        [
            line("m", 300, "nan", "nan"),
            line("m", 301, "minus nan", "-nan"),
            line("m", 400, "inf", "inf"),
            line("m", 401, "minus inf", "-inf"),
            line("m", 402, "zero", "-0"),
            line("m", int64_max, "big", "1e+300"),
            line("m", -1, "tiny", "4.94066e-324"),
            line("m", int64_min, "int", "100000"),
            line("m", 2**53 + 1, "beyond 2**53", "1.23457e+06"),
        ],
    )
    _, path = ship_to_wandb(logdir, runs)
    rows = metric_rows(path)
    assert [row["m/step"] for row in rows] == [
        300,
        301,
        400,
        401,
        402,
        int64_max,
        -1,
        int64_min,
        2**53 + 1,
    ]
    assert all(type(row["m/step"]) is int for row in rows)
    assert [sorted(row) for row in rows] == [
        sorted(["m/step", key])
        for key in (
            "m/nan",
            "m/minus nan",
            "m/inf",
            "m/minus inf",
            "m/zero",
            "m/big",
            "m/tiny",
            "m/int",
            "m/beyond 2**53",
        )
    ]
    assert math.isnan(rows[0]["m/nan"])
    assert math.isnan(rows[1]["m/minus nan"])
    assert rows[2]["m/inf"] == math.inf
    assert rows[3]["m/minus inf"] == -math.inf
    assert rows[4]["m/zero"] == 0
    assert math.copysign(1.0, rows[4]["m/zero"]) == -1.0
    assert rows[5]["m/big"] == 1e300
    assert rows[6]["m/tiny"] == float("4.94066e-324")
    assert rows[6]["m/tiny"] > 0
    assert rows[7]["m/int"] == 100000
    assert rows[8]["m/beyond 2**53"] == 1234570.0


def test_awkward_names_arrive_as_logged(runs: Path, logdir: Path) -> None:
    """Odd names arrive under their own keys, with the right x-axis.

    Spaces, parentheses, ``: ``, ``, step: ``, dots, slashes, a leading ``_``, ``*``, Latin-1
    bytes (decoded as Latin-1 by the parser) and UTF-8.
    """
    write_log(
        logdir,
        [
            line("td3 system", 37, "episode reward", "12"),
            line("mymodel", 1000, "l2 error (rel.)", "1.23457e+06"),
            line("mymodel", 1000, "ratio: a/b", "0.5"),
            line("mymodel", 1000, "a, step: 3, b", "7"),
            line("mymodel", 1000, "step", "3"),
            line("mymodel", 1000, "step (metric)", "4"),
            line(b"mod\xe8le", 5, b"caf\xe9", "1"),
            line("température", 6, "énergie", "2"),
            line("v1.2", 7, "loss", "3"),
            line("a", 8, "x", "4"),
            line("a/b", 9, "x", "5"),
            line("_private", 10, "y", "6"),
            line("net*", 11, "z*", "7"),
        ],
    )
    _, path = ship_to_wandb(logdir, runs)
    assert metric_rows(path) == [
        {
            "td3 system/episode reward": 12,
            "td3 system/step": 37,
            "mymodel/l2 error (rel.)": 1234570.0,
            "mymodel/ratio: a/b": 0.5,
            "mymodel/a, step: 3, b": 7,
            "mymodel/step (metric)": 3,
            "mymodel/step (metric) (metric)": 4,
            "mymodel/step": 1000,
            "modèle/café": 1,
            "modèle/step": 5,
            "température/énergie": 2,
            "température/step": 6,
            "v1.2/loss": 3,
            "v1.2/step": 7,
            "a/x": 4,
            "a/step": 8,
        },
        # a/b's keys could be taken for a's (a/b/x is "x" of a/b, or "b/x" of a): a new row
        {
            "a/b/x": 5,
            "a/b/step": 9,
            "_private/y": 6,
            "_private/step": 10,
            "net*/z*": 7,
            "net*/step": 11,
        },
    ]
    definitions = metric_definitions(path)
    for model in ("td3 system", "mymodel", "modèle", "température", "v1.2", "a", "a/b"):
        assert definitions[f"{model}/*"] == f"{model}/step"
    # keys that another glob also matches, or that wandb's globs skip, are defined by name
    assert definitions["a/b/x"] == "a/b/step"
    assert definitions["_private/y"] == "_private/step"
    assert not any("*" in name[:-1] for name in definitions)


def test_configs_reach_the_run_config(runs: Path, logdir: Path) -> None:
    """Each model's config lands in ``config[<model>]``, without ``identifier``.

    A config over 32 KiB (a record spanning blocks of the transaction log) arrives whole.
    """
    write_config(logdir, "mymodel", MODEL_YAML, "mymodel")
    big = {f"key_{i:05d}": f"value {i} " + "x" * 40 for i in range(1000)}
    big_yaml = "general:\n  enable_wandb_hook: 1\nlayers:\n" + "".join(
        f"  {key}: {value}\n" for key, value in big.items()
    )
    write_config(logdir, "mymodel2", big_yaml, "my model 2")
    write_log(
        logdir,
        [
            line("mymodel", 1, "train_loss", "1"),
            line("my model 2", 1, "train_loss", "2"),
            line("no config", 1, "train_loss", "3"),
        ],
    )
    _, path = ship_to_wandb(logdir, runs)
    config = config_of(path)
    assert config["mymodel"] == {
        "general": {"enable_wandb_hook": 1, "report_frequency": 100},
        "model": {"type": "mlp", "parameters": {"dropout": 0.0, "layer_sizes": [1024, 1024]}},
        "optimizer": {"type": "adam", "parameters": {"learning_rate": 0.001}},
    }
    assert config["my model 2"] == {"general": {"enable_wandb_hook": 1}, "layers": big}
    assert "no config" not in config
    assert max(map(len, iter_payloads(path.read_bytes()))) > BLOCK_SIZE  # spans blocks
    assert len(metric_rows(path)) == 1  # three models, one shared row


def test_resume_state_reopens_the_same_run(runs: Path, logdir: Path, tmp_path: Path) -> None:
    """A second session resumes the saved run id and ships only the lines after the cursor."""
    state_file = tmp_path / "state.json"
    write_log(logdir, [line("m", 1, "loss", "1"), line("m", 2, "loss", "2")])
    first, first_log = ship_to_wandb(logdir, runs, ship_options={"state_file": state_file})
    run_id = first.resume_state()["run_id"]
    assert first.resume_state()["dir"] == str(runs)

    write_log(logdir, [line("m", 3, "loss", "3")], append=True)
    # Another directory only keeps the two sessions' folders apart (wandb names an offline
    # session's folder after its start second and the run id).
    second_dir = tmp_path / "second"
    second, second_log = ship_to_wandb(logdir, second_dir, ship_options={"state_file": state_file})
    state = second.resume_state()
    assert state == {"run_id": run_id, "dir": str(second_dir), "events": 3}
    assert run_record(second_log).run_id == run_id
    record = run_record(second_log)
    if "resume" in record.DESCRIPTOR.fields_by_name:  # wandb after 0.28; older ones do not
        assert record.resume  # record (offline) that a session resumes
    assert metric_rows(first_log) == [{"m/loss": 1, "m/step": 1}, {"m/loss": 2, "m/step": 2}]
    assert metric_rows(second_log) == [{"m/loss": 3, "m/step": 3}]


def test_run_options_reach_the_run(runs: Path, logdir: Path) -> None:
    """Project, entity, group, tags, job type, id and the run name go to ``wandb.init``."""
    write_log(logdir, [line("m", 1, "loss", "1")])
    backend, path = ship_to_wandb(
        logdir,
        runs,
        ship_options={"run_name": "first try"},
        entity="team",
        group="sweep-7",
        tags=["a", "b c"],
        job_type="eval",
        run_id="tfship1",
    )
    record = run_record(path)
    assert record.run_id == "tfship1"
    assert record.project == PROJECT
    assert record.entity == "team"
    assert record.run_group == "sweep-7"
    assert list(record.tags) == ["a", "b c"]
    assert record.job_type == "eval"
    assert record.display_name == "first try"
    assert backend.resume_state()["run_id"] == "tfship1"


@pytest.mark.parametrize(("environment", "project"), [(None, "torchfort"), ("mine", "mine")])
def test_the_default_project_is_torchfort(
    runs: Path, logdir: Path, monkeypatch: pytest.MonkeyPatch, environment: str | None, project: str
) -> None:
    """Without a project the run goes to ``$WANDB_PROJECT``, else to ``torchfort``.

    Not to wandb's own default, a project named after the working directory.
    """
    if environment is not None:
        monkeypatch.setenv("WANDB_PROJECT", environment)
    write_log(logdir, [line("m", 1, "loss", "1")])
    backend = WandbBackend(directory=str(runs))
    assert tf_ship.ship(logdir, {"wandb": backend}, follow=False).ok
    settle()
    (path,) = transaction_logs(runs, backend.resume_state()["run_id"])
    assert run_record(path).project == project


# -- the backend's own calls -------------------------------------------------------------------


def _events(*values: float) -> list[MetricEvent]:
    identity = FileIdentity(1, 2)
    return [
        MetricEvent("m", "loss", step, value, identity, 100 * step)
        for step, value in enumerate(values)
    ]


def test_a_retried_batch_is_not_logged_twice(runs: Path, tmp_path: Path) -> None:
    """After a failed flush the engine sends the same batch again: it is logged once."""
    backend = WandbBackend(directory=str(runs), project=PROJECT)
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    batch = _events(1.0, 2.0)
    backend.log_metrics(batch)
    backend.log_metrics(batch)  # the retry
    backend.flush()
    backend.log_metrics(_events(1.0, 2.0, 3.0)[2:])
    backend.flush()
    backend.close(RunStatus.FINISHED)
    settle()
    (path,) = transaction_logs(runs, backend.resume_state()["run_id"])
    assert metric_rows(path) == [
        {"m/loss": 1, "m/step": 0},
        {"m/loss": 2, "m/step": 1},
        {"m/loss": 3, "m/step": 2},
    ]


@pytest.mark.parametrize(
    ("status", "exit_code"),
    [(RunStatus.FINISHED, 0), (RunStatus.KILLED, 0), (RunStatus.FAILED, 1)],
)
def test_close_sets_the_exit_code_once(
    runs: Path, tmp_path: Path, status: RunStatus, exit_code: int
) -> None:
    """FAILED finishes the run with exit code 1, the others with 0; a second close is a no-op."""
    backend = WandbBackend(directory=str(runs), project=PROJECT)
    backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    backend.log_config(ModelConfig("m", {"lr": 1}))
    backend.log_config(ModelConfig("m", {"lr": 2}))
    backend.log_metrics(_events(1.0))
    backend.flush()
    backend.close(status)
    backend.close(RunStatus.FAILED)
    settle()
    (path,) = transaction_logs(runs, backend.resume_state()["run_id"])
    assert exit_code_of(path) == exit_code
    assert config_of(path)["m"] == {"lr": 2}
    assert sum(r.WhichOneof("record_type") == "exit" for r in read_records(path)) == 1


class _BrokenRun:
    """A run whose finish fails."""

    def __init__(self) -> None:
        self.finish_calls = 0

    def finish(self, exit_code: int) -> None:
        self.finish_calls += 1
        msg = f"finish({exit_code}) failed on purpose"
        raise ConnectionError(msg)


def test_close_releases_the_run_when_finish_raises() -> None:
    """A failing ``finish`` still lets go of the run; closing again does not retry it."""
    backend = WandbBackend()
    run = _BrokenRun()
    backend._run = run
    with pytest.raises(ConnectionError):
        backend.close(RunStatus.FINISHED)
    assert backend._run is None
    backend.close(RunStatus.FINISHED)
    assert run.finish_calls == 1


# -- a crash of the shipper --------------------------------------------------------------------

CRASH_AFTER_FLUSH = """
import json, os, signal, sys
from pathlib import Path
from tf_ship.backends.wandb import WandbBackend
from tf_ship.shipper.events import MetricEvent, RunInfo

runs, state_file, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
backend = WandbBackend(directory=str(runs), project="tf-ship-tests")
backend.open(RunInfo(runs, runs / "torchfort.log"))
events = [MetricEvent(m, "loss", step, step / 4) for step in range(count) for m in ("a", "b")]
backend.log_metrics(events[: len(events) // 2])
backend.flush()
state_file.write_text(json.dumps(backend.resume_state()))  # the cursor tf-ship saved
backend.log_metrics(events[len(events) // 2 :])
backend.flush()  # acknowledged, but the crash comes before tf-ship saves the state
os.kill(os.getpid(), signal.SIGKILL)
"""


def _crash_events(start: int, stop: int) -> list[MetricEvent]:
    return [
        MetricEvent(m, "loss", step, step / 4) for step in range(start, stop) for m in ("a", "b")
    ]


def test_rows_persisted_after_the_saved_cursor_are_not_sent_twice(
    runs: Path, tmp_path: Path
) -> None:
    """A crash after a flush the state does not record yet: the replay skips what the run holds.

    The state counts 1000 events; the crashed session's log holds 2000 (flushed, so written).
    The next session replays from the saved cursor: the first 1000 events of the replay are
    recognised value by value and left out, the rest is sent: every event is in the run once.
    """
    state_file = tmp_path / "state.json"
    first = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_FLUSH, str(runs), str(state_file), "1000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert first.returncode == -signal.SIGKILL, first.stderr
    state = json.loads(state_file.read_text())
    assert state["events"] == 1000
    run_id = state["run_id"]
    second = WandbBackend(directory=str(runs), project=PROJECT)
    second.open(RunInfo(tmp_path, tmp_path / "torchfort.log", state=state))  # waits for release
    (crashed,) = session_logs(runs / "wandb", run_id)[:1]
    assert sum(events_in_row(row) for row in history_rows(crashed, strict=False)) == 2000
    second.log_metrics(_crash_events(500, 1010))  # the replay after the saved cursor
    second.flush()
    assert second.resume_state()["events"] == 2020
    second.close(RunStatus.FINISHED)
    settle()
    found = collections.Counter(
        (model, int(row[f"{model}/step"]), row[f"{model}/loss"])
        for path in session_logs(runs / "wandb", run_id)
        for row in history_rows(path, strict=False)
        for model in ("a", "b")
        if f"{model}/loss" in row
    )
    expected = collections.Counter((e.model, e.step, e.value) for e in _crash_events(0, 1010))
    assert found == expected


def test_an_older_wandb_is_refused_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A wandb before 0.31 cannot write its log on a timer: one line naming the floor, no run."""

    def settings(**options: Any) -> dict[str, Any]:
        if "x_transaction_log_flush_interval" in options:  # as wandb 0.19 to 0.30 refuse it
            msg = "Extra inputs are not permitted"
            raise ValueError(msg)
        return options

    monkeypatch.setitem(
        sys.modules, "wandb", types.SimpleNamespace(__version__="0.19.10", Settings=settings)
    )
    with pytest.raises(FatalBackendError) as caught:
        WandbBackend(directory=str(tmp_path / "runs")).open(
            RunInfo(tmp_path, tmp_path / "torchfort.log")
        )
    assert str(caught.value) == (
        "wandb 0.19.10 is too old: tf-ship needs wandb 0.31 or later (older ones can lose rows "
        "in a crash); install tf-ship[wandb]"
    )
    assert not (tmp_path / "runs").exists()


def test_missing_wandb_is_fatal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the wandb package, open raises FatalBackendError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    backend = WandbBackend()
    with pytest.raises(FatalBackendError, match=r"install tf-ship\[wandb\]"):
        backend.open(RunInfo(tmp_path, tmp_path / "torchfort.log"))
    write_log(tmp_path, [line("m", 1, "loss", "1")])
    report = tf_ship.ship(tmp_path, {"wandb": WandbBackend()}, follow=False)
    assert not report.ok
    assert "tf-ship[wandb]" in (report.backends[0].error or "")


def test_importing_the_backend_does_not_import_wandb() -> None:
    """Wandb is imported when a run opens, never when the module is imported."""
    code = (
        "import sys, tf_ship.backends.wandb\n"
        "import tf_ship.backends.wandb.replay, tf_ship.backends.wandb.transaction_log\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- the transaction-log reader on crafted bytes -----------------------------------------------

FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
FILE_HEADER = b":W&B" + struct.pack("<H", 0xBEE1) + b"\x00"


def _chunk(kind: int, payload: bytes) -> bytes:
    crc = zlib.crc32(bytes([kind]) + payload)
    return struct.pack("<IHB", crc, len(payload), kind) + payload


def _crafted() -> tuple[bytes, list[bytes]]:
    """A log whose second record spans three blocks and whose third block ends in padding."""
    small = b"s" * 100
    first_part = b"a" * (BLOCK_SIZE - 7 - 7 - 100 - 7)  # fills block 0 after the small record
    middle_part = b"b" * (BLOCK_SIZE - 7)  # fills block 1
    last_part = b"c" * 1000
    filler = b"f" * (BLOCK_SIZE - 1007 - 7 - 3)  # leaves 3 bytes of block 2
    after = b"after"
    data = (
        FILE_HEADER
        + _chunk(FULL, small)
        + _chunk(FIRST, first_part)
        + _chunk(MIDDLE, middle_part)
        + _chunk(LAST, last_part)
        + _chunk(FULL, filler)
        + b"\x00" * 3
        + _chunk(FULL, after)
    )
    assert len(data) == 3 * BLOCK_SIZE + 7 + len(after)
    return data, [small, first_part + middle_part + last_part, filler, after]


def test_reader_joins_a_record_spanning_blocks() -> None:
    """First, middle and last chunks in three blocks make one record; block padding is skipped."""
    data, expected = _crafted()
    assert list(iter_payloads(data)) == expected


def test_reader_decodes_history_values(tmp_path: Path) -> None:
    """History values are decoded from JSON: NaN, infinities, -0, exact big integers."""
    from wandb.proto import wandb_internal_pb2  # noqa: PLC0415 - wandb is an optional extra

    record = wandb_internal_pb2.Record()
    for key, text in [
        ("nan", "NaN"),
        ("inf", "Infinity"),
        ("minus inf", "-Infinity"),
        ("zero", "-0"),
        ("big", "9223372036854775807"),
        ("x", "0.1"),
    ]:
        item = record.history.item.add()
        item.nested_key.append(key)
        item.value_json = text
    typed_values = "number" in wandb_internal_pb2.HistoryItem.DESCRIPTOR.fields_by_name
    if typed_values:  # wandb 0.2x on; older items hold JSON only
        typed = record.history.item.add()
        typed.key = "typed"
        typed.number = -0.0
    path = tmp_path / "run-x.wandb"
    path.write_bytes(FILE_HEADER + _chunk(FULL, record.SerializeToString()))
    (row,) = history_rows(path)
    assert math.isnan(row["nan"])
    assert row["inf"] == math.inf
    assert row["minus inf"] == -math.inf
    assert math.copysign(1.0, row["zero"]) == -1.0
    assert row["big"] == 2**63 - 1
    assert row["x"] == 0.1
    if typed_values:
        assert math.copysign(1.0, row["typed"]) == -1.0


def _bad_crc() -> tuple[bytes, str, list[bytes]]:
    """The first chunk's checksum is wrong: block 0 is lost, and with it the record it began."""
    data, expected = _crafted()
    damaged = data[:7] + bytes([data[7] ^ 1]) + data[8:]
    return damaged, "checksum mismatch", expected[2:]


def _torn_end() -> tuple[bytes, str, list[bytes]]:
    """The file ends inside a chunk (a writer that died mid-block)."""
    data, expected = _crafted()
    return data[: BLOCK_SIZE + 100], "torn chunk", expected[:1]


def _orphan() -> tuple[bytes, str, list[bytes]]:
    """A continuation chunk without its beginning."""
    return FILE_HEADER + _chunk(MIDDLE, b"orphan") + _chunk(FULL, b"ok"), "never began", [b"ok"]


def _interrupted() -> tuple[bytes, str, list[bytes]]:
    """A record that begins before the previous one ended."""
    data = FILE_HEADER + _chunk(FIRST, b"lost") + _chunk(FULL, b"ok")
    return data, "begins before", [b"ok"]


@pytest.mark.parametrize("case", [_bad_crc, _torn_end, _orphan, _interrupted])
def test_reader_reports_damage_or_recovers(case: Any) -> None:
    """Strictly, damage raises; otherwise the reader recovers the way wandb's own reader does."""
    damaged, strict_error, recovered = case()
    with pytest.raises(TransactionLogError, match=strict_error):
        list(iter_payloads(damaged))
    assert list(iter_payloads(damaged, strict=False)) == recovered


def test_reader_takes_a_log_never_written_for_an_empty_one(tmp_path: Path) -> None:
    """A killed session of wandb before 0.22 leaves an empty file (no header yet): no records.

    Only without `strict`; strictly, it is too short.
    """
    path = tmp_path / "run-x.wandb"
    for content in (b"", FILE_HEADER[:3]):
        path.write_bytes(content)
        assert read_records(path, strict=False) == []
        assert history_rows(path, strict=False) == []
        with pytest.raises(TransactionLogError, match="too short"):
            read_records(path)


def test_reader_refuses_other_files(tmp_path: Path) -> None:
    """A file without the wandb header is refused."""
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"LEVELDB" + _chunk(FULL, b"x"))
    with pytest.raises(TransactionLogError, match="not a wandb transaction log"):
        read_records(path)
