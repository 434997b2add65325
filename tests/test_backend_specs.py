"""Backend specs and the engine's option declaration: what the command line is built from."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

import attrs
import click
import pytest
from click.testing import CliRunner

from tf_ship.backends import specs as specs_package
from tf_ship.backends.plugin_specs import RESERVED_WORDS
from tf_ship.backends.registry import BUILTIN_BACKENDS, available_backends, import_object
from tf_ship.backends.spec import BackendOption, BackendSpec, PerLogOutput
from tf_ship.backends.specs import builtin_specs
from tf_ship.cli import main
from tf_ship.cli_options import (
    ShipRequest,
    apply,
    backend_help,
    backend_option_decorators,
    config_defaults,
)
from tf_ship.commands.watch import _watch_help
from tf_ship.shipper.options import ENGINE_OPTIONS
from tf_ship.shipper.ship import ShipOptions
from tf_ship.shipper.worker import RetryPolicy, WorkerSettings
from tf_ship.watching import rules
from tf_ship.watching.watcher import WatchedLog, Watcher

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

FAKE = BackendSpec(
    name="fake",
    factory="tf_ship.testing:RecordingBackend",
    options=(
        BackendOption("--fake-colour", "colour", "Colour of the fake runs.", metavar="COLOUR"),
        BackendOption(
            "--fake-job-tag", "tags", "A tag. Repeatable.", multiple=True, aliases=("--fake_tag",)
        ),
        BackendOption("--fake-run", "run_id", "Resume this run.", names_one_run=True),
        BackendOption("--fake-out", "out", "Output folder.", per_log=PerLogOutput(suffix=".txt")),
    ),
)
"""A spec such as a plugin could declare."""


def _command(specs: list[BackendSpec]) -> tuple[click.Command, dict[str, Any]]:
    seen: dict[str, Any] = {}

    def record(**params: Any) -> None:
        seen.update(params)

    return click.command()(apply(backend_option_decorators(specs), record)), seen


def test_every_spec_module_is_a_builtin_backend_of_the_registry() -> None:
    """Each module of tf_ship/backends/specs/ is found, and the registry lists exactly those."""
    folder = Path(specs_package.__file__).parent
    modules = {path.stem for path in folder.glob("*.py") if not path.stem.startswith("_")}
    assert {spec.name for spec in builtin_specs()} == modules
    assert set(BUILTIN_BACKENDS) == modules
    assert set(available_backends()) >= modules
    assert {"jsonl", "null", "wandb", "mlflow", "tensorboard", "trackio", "swanlab"} <= modules
    for spec in builtin_specs():
        assert BUILTIN_BACKENDS[spec.name] == spec.factory
        assert callable(import_object(spec.factory)), spec.factory


def test_every_spec_flag_reaches_the_command_line() -> None:
    """The ship command takes every flag and alias of every built-in spec, with its variable."""
    context = click.Context(main.commands["ship"], info_name="ship")
    params = {p.name: p for p in main.commands["ship"].get_params(context)}
    for spec in builtin_specs():
        for option in spec.options:
            param = params[spec.param_name(option)]
            assert isinstance(param, click.Option)
            assert set(param.opts) == {option.flag, *option.aliases}
            assert param.envvar == spec.environment_variable(option)
            assert param.envvar.startswith(f"TF_SHIP_{spec.name.upper()}_")
    assert backend_help().startswith(
        "Where to ship: " + ", ".join(s.name for s in builtin_specs()) + ", an installed plugin"
    )


def test_a_plugin_like_spec_gets_its_flags_variables_and_toml_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spec that is not built in becomes flags, TF_SHIP_FAKE_* variables and [fake] keys."""
    command, seen = _command([FAKE])
    result = CliRunner().invoke(
        command, ["--fake-colour", "red", "--fake-job-tag", "a", "--fake_tag", "b"]
    )
    assert result.exit_code == 0, result.output
    assert seen["opt__fake__colour"] == "red"
    assert seen["opt__fake__tags"] == ("a", "b")

    monkeypatch.setenv("TF_SHIP_FAKE_COLOUR", "blue")
    assert CliRunner().invoke(command, []).exit_code == 0
    assert seen["opt__fake__colour"] == "blue"
    assert "--fake-colour COLOUR" in CliRunner().invoke(command, ["--help"]).output

    assert FAKE.toml_keys(FAKE.options[1]) == ("tags", "job-tag", "job_tag")
    params = [FAKE.param_name(option) for option in FAKE.options]
    table = {"colour": "green", "job_tag": ["x"], "size": 3}
    defaults = config_defaults({"fake": table}, params, specs=[FAKE])
    assert defaults == {
        "opt__fake__colour": "green",
        "opt__fake__tags": ["x"],
        "backend_opts": ["fake.size=3"],  # not a flag: handed over as a keyword
    }
    assert backend_help([FAKE]).startswith("Where to ship: fake, an installed plugin")


def _request(options: dict[str, dict[str, Any]]) -> ShipRequest:
    params = {"state_file": None, "follow": False, "run_name": None, "fresh": False}
    return ShipRequest(tuple(options), options, params)


def test_watch_rules_come_from_the_specs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A spec's one-run option is refused by watch; its per-log option gets one place per log."""
    monkeypatch.setattr(rules, "all_specs", lambda: (FAKE,))
    with pytest.raises(click.UsageError, match="--fake-run would send every log to one run"):
        rules.check_request(_request({"fake": {"run_id": "r1"}}))
    rules.check_request(_request({"fake": {"out": "o"}}))

    watcher = Watcher(tmp_path, _request({"fake": {"out": "o", "colour": "red"}}))
    log = WatchedLog(tmp_path / "a" / "b", "a-b")
    assert watcher.request_for(log).backend_options == {
        "fake": {"out": str(Path("o") / "a-b.txt"), "colour": "red"}
    }
    unset = Watcher(tmp_path, _request({"fake": {}}))
    assert unset.request_for(log).backend_options == {"fake": {}}
    assert "--fake-out DIR writes to DIR/<folder>.txt." in _watch_help()


def test_a_required_per_log_option_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend whose default output every log would share needs its option with watch."""
    required = BackendOption(
        "--fake-out", "out", "Output.", per_log=PerLogOutput(required=True, unset=("-",))
    )
    monkeypatch.setattr(rules, "all_specs", lambda: (attrs.evolve(FAKE, options=(required,)),))
    for options in ({}, {"out": "-"}):
        with pytest.raises(click.UsageError, match=r"needs --fake-out DIR .*one folder per log"):
            rules.check_request(_request({"fake": options}))


def test_every_extra_of_a_spec_is_packaged_and_in_all() -> None:
    """`tf-ship[<extra>]` exists for every spec that names one, and `all` installs it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    (everything,) = extras["all"]
    for spec in builtin_specs():
        if spec.extra is not None:
            assert spec.extra in extras, spec.name
            assert spec.extra in everything.partition("[")[2].rstrip("]").split(","), spec.name


def test_engine_defaults_are_those_of_the_declaration() -> None:
    """The click options, ShipOptions, WorkerSettings and RetryPolicy share one default each."""
    context = click.Context(main.commands["ship"], info_name="ship")
    params = {p.name: p for p in main.commands["ship"].get_params(context)}
    ship_defaults = {field.name: field.default for field in attrs.fields(ShipOptions)}
    worker_defaults = {field.name: field.default for field in attrs.fields(WorkerSettings)}
    for option in ENGINE_OPTIONS:
        param = params[option.name]
        default = param.get_default(context, call=False)
        if option.default is None:  # click 8.3 says UNSET, older ones None
            assert default is None or type(default).__name__ == "Sentinel", option.name
        else:
            assert default == option.default, option.name
        assert param.envvar == f"TF_SHIP_{option.name.upper()}"
        for defaults in (ship_defaults, worker_defaults):
            if option.name in defaults:
                assert defaults[option.name] == option.default, option.name
    assert RetryPolicy().give_up_after == params["retry_timeout"].get_default(context, call=False)


KEPT_TEXTS = {
    "choose at least one --backend (for example: --backend jsonl)",  # a usage error's example
    "what the backend prefers (wandb 10000)",  # the --batch-size help names its largest default
    "null",  # redaction: JSON's null, not the backend
}
"""Texts outside the backends and their specs that still name one, on purpose."""


def _named_backends(path: Path, names: list[str]) -> list[str]:
    """Code (not docstrings or comments) in `path` that names a built-in backend."""
    word = re.compile(r"(?<!\w)(" + "|".join(names) + r")(?!\w)")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    prose = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and word.search((node.module or "").split(".")[-1]):
            found.append(f"{path.name}:{node.lineno}: imports {node.module}")
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
            continue
        if id(node) in prose or any(kept in node.value for kept in KEPT_TEXTS):
            continue
        if word.search(node.value):
            found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    return found


def test_no_backend_name_is_written_outside_its_module_and_spec() -> None:
    """Flags, names and rules of a backend live in its module and its spec, nowhere else."""
    names = [spec.name for spec in builtin_specs()]
    own = re.compile(r"backends/(specs/.*|(" + "|".join(names) + r")([a-z_]*\.py|/.*))$")
    found = [
        hit
        for path in sorted((ROOT / "tf_ship").rglob("*.py"))
        if not own.search(path.as_posix())
        and path.name != "mlflow_keys.py"  # inspect shows the keys MLflow would store
        for hit in _named_backends(path, names)
    ]
    assert found == []


def test_plugin_names_that_could_take_a_flag_of_tf_ship_are_reserved() -> None:
    """Each first word of tf-ship's own flags and variables is a name no plugin may take."""
    own_params = {spec.param_name(option) for spec in builtin_specs() for option in spec.options}
    root = click.Context(main, info_name="tf-ship")
    words = set()
    for name in main.list_commands(root):
        command = main.get_command(root, name)
        assert command is not None
        context = click.Context(command, info_name=name, parent=root)
        for param in command.get_params(context):
            if param.name in own_params or not isinstance(param, click.Option):
                continue
            variables = param.envvar if isinstance(param.envvar, list) else [param.envvar or ""]
            spelled = [*param.opts, *param.secondary_opts, *variables]
            for text in spelled:
                word = re.split(r"[-_]", text.lstrip("-").removeprefix("TF_SHIP_"))[0].lower()
                if text.startswith(("--", "TF_SHIP_")):
                    words.add(word)
    assert words <= RESERVED_WORDS, sorted(words - RESERVED_WORDS)
