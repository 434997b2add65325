"""What every shipping command shares: options, config file, building backends.

The options, the config file, and how flags become backends and `ShipOptions`.

Precedence, highest first: the command line, environment variables (`TF_SHIP_<OPTION>`, for
example `TF_SHIP_BACKEND="mlflow tensorboard"`), the config file (`--config FILE`, else
`./tf-ship.toml` when present), the defaults.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import click

from tf_ship import exit_codes
from tf_ship.backends.plugin_specs import all_specs
from tf_ship.backends.spec import ENV_PREFIX, BackendSpec
from tf_ship.errors import TfShipError
from tf_ship.redaction import RedactingFormatter, protect_standard_streams, remember_secrets_in
from tf_ship.shipper.options import ENGINE_OPTIONS, RETRY_TIMEOUT, EngineOption

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXIT_OK = exit_codes.EXIT_OK
EXIT_FAILURE = exit_codes.EXIT_FAILURE
EXIT_USAGE = exit_codes.EXIT_USAGE
"""The exit codes every command uses; what each means: `tf_ship.exit_codes.EXIT_CODES`."""
DEFAULT_CONFIG = "tf-ship.toml"

Decorator = Callable[[Any], Any]


class StartupError(click.ClickException, TfShipError):
    """Something to fix before anything ships: one line, ``tf-ship: error: ...``, exit 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:  # noqa: ANN401 - click's signature
        """One line on standard error."""
        click.echo(f"tf-ship: error: {self.format_message()}", err=True, file=file)


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


# -- the config file ----------------------------------------------------------------------------


def _backend_keys(specs: Sequence[BackendSpec]) -> dict[str, dict[str, str]]:
    """For each backend: TOML key (keyword or flag suffix) -> click parameter name."""
    return {
        spec.name: {
            key: spec.param_name(option)
            for option in spec.options
            for key in spec.toml_keys(option)
        }
        for spec in specs
    }


def config_defaults(
    data: Mapping[str, Any],
    params: Sequence[str],
    elsewhere: Sequence[str] = (),
    specs: Sequence[BackendSpec] | None = None,
) -> dict[str, Any]:
    """Turn a parsed tf-ship.toml into click defaults for a command with `params`.

    A setting that only another command takes (`elsewhere`) is left for that command, so that
    one file can serve `ship`, `run` and `watch`. A table named after a backend of `specs` (every
    backend's spec, plugins' too, by default) sets its flags; other tables go to
    ``--backend-opt``.
    """
    aliases = {"backend": "backends", "backend_opt": "backend_opts"}
    backend_keys = _backend_keys(all_specs() if specs is None else specs)
    defaults: dict[str, Any] = {}
    extra: list[str] = []
    for key, value in data.items():
        name = aliases.get(key.replace("-", "_"), key.replace("-", "_"))
        if isinstance(value, dict):
            table = backend_keys.get(key)
            for sub, sub_value in value.items():
                if table is not None and sub in table:
                    defaults[table[sub]] = sub_value
                else:  # a plugin's option, or one the backend takes only as a keyword
                    extra.append(f"{key}.{sub}={sub_value}")
            continue
        if name in params:
            defaults[name] = value
        elif name not in elsewhere:
            msg = f"unknown setting {key!r} in the config file"
            raise click.BadParameter(msg, param_hint="--config")
    if extra:
        defaults["backend_opts"] = [*defaults.get("backend_opts", []), *extra]
    return defaults


def _other_commands_params(context: click.Context) -> list[str]:
    """Parameter names of the sibling commands (the file may be shared between them)."""
    root = context.find_root()
    group = root.command
    if not isinstance(group, click.Group) or root is context:
        return []
    names: list[str] = []
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is not None and command is not context.command:
            names.extend(p.name for p in command.params if p.name)
    return names


def _load_config(context: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    path = Path(value) if value else Path(DEFAULT_CONFIG)
    if not value and not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        msg = f"cannot read {path}: {error}"
        raise click.BadParameter(msg, param_hint="--config") from error
    names = [p.name for p in context.command.params if p.name]
    defaults = config_defaults(data, names, _other_commands_params(context))
    context.default_map = {**defaults, **(context.default_map or {})}
    return str(path)


# -- options ------------------------------------------------------------------------------------


def backend_option_decorators(specs: Sequence[BackendSpec] | None = None) -> list[Decorator]:
    """One click option per option of each spec (by default every backend's: `--wandb-project`)."""
    return [
        click.option(
            option.flag,
            *option.aliases,
            spec.param_name(option),
            multiple=option.multiple,
            metavar=option.metavar,
            envvar=spec.environment_variable(option),
            help=option.help,
        )
        for spec in (all_specs() if specs is None else specs)
        for option in spec.options
    ]


def engine_option_decorator(option: EngineOption[Any]) -> Decorator:
    """The click option of an engine option (`tf_ship.shipper.options`)."""
    value: dict[str, Any] = {}
    if option.kind is int:
        value = {"type": click.IntRange(min=int(option.minimum)), "metavar": option.metavar}
    elif option.kind is float:
        value = {"type": click.FloatRange(min=option.minimum), "metavar": option.metavar}
    if option.default is not None:
        value.update(default=option.default, show_default=True)
    return click.option(
        option.flag,
        *option.aliases,
        option.name,
        envvar=_env(option.name),
        help=option.help,
        **value,
    )


def backend_help(specs: Sequence[BackendSpec] | None = None) -> str:
    """The help of ``--backend``, naming every backend that has a spec (plugins' too)."""
    names = ", ".join(spec.name for spec in (all_specs() if specs is None else specs))
    return (
        f"Where to ship: {names}, an installed plugin, or package.module:Class. Repeat to ship "
        "to several at once."
    )


def shipping_options() -> list[Decorator]:
    """The options of every command that ships (not where the log is: each command says)."""
    return [
        click.option(
            "--config",
            "config_file",
            metavar="FILE",
            is_eager=True,
            expose_value=False,
            callback=_load_config,
            help=f"Read defaults for any option from this TOML file [default: ./{DEFAULT_CONFIG} "
            "when present].",
        ),
        click.option(
            "--backend",
            "-b",
            "backends",
            multiple=True,
            metavar="NAME",
            envvar=_env("backend"),
            help=backend_help(),
        ),
        click.option(
            "--backend-opt",
            "backend_opts",
            multiple=True,
            metavar="NAME.KEY=VALUE",
            envvar=_env("backend_opt"),
            help="An option for a backend, passed to it as keyword KEY. Repeatable.",
        ),
        *(engine_option_decorator(option) for option in ENGINE_OPTIONS),
        click.option(
            "--run-name",
            "--run_tag",
            "run_name",
            metavar="NAME",
            envvar=_env("run_name"),
            help="Name of the tracker runs [default: the log directory's name, e.g. run1 for "
            "TORCHFORT_LOGDIR=$PWD/run1].",
        ),
        click.option(
            "--state/--no-state",
            default=True,
            show_default=True,
            envvar=_env("state"),
            help="Keep cursors and run ids in a state file beside the log, so that a restarted "
            "tf-ship reopens the same runs and continues where it stopped (off with --example).",
        ),
        click.option(
            "--state-file",
            metavar="FILE",
            envvar=_env("state_file"),
            help="Where to keep the state [default: LOGDIR/.tf-ship-state.json; a file in "
            "~/.local/state/tf-ship/ when LOGDIR cannot be written]. One shipper at a time: "
            "a second one of the same state exits 2.",
        ),
        click.option(
            "--fresh",
            is_flag=True,
            envvar=_env("fresh"),
            help="Ignore the saved state: new runs, from the start of the log.",
        ),
        click.option(
            "--on-restart",
            type=click.Choice(["new-run", "continue"]),
            default="new-run",
            show_default=True,
            envvar=_env("on_restart"),
            help="When the application restarted in the same log directory (a metric's step "
            "went back): ship what follows to a new run linked to the first (no curve goes "
            "back), or continue the same run.",
        ),
        click.option(
            "--include",
            multiple=True,
            metavar="GLOB",
            envvar=_env("include"),
            help="Ship only MODEL/METRIC keys matching a glob (e.g. 'mymodel/*'). Repeatable.",
        ),
        click.option(
            "--exclude",
            multiple=True,
            metavar="GLOB",
            envvar=_env("exclude"),
            help="Do not ship MODEL/METRIC keys matching a glob (wins over --include). Repeatable.",
        ),
        click.option(
            "--rename",
            multiple=True,
            metavar="OLD=NEW",
            envvar=_env("rename"),
            help="Rename a model (OLD=NEW) or one metric (MODEL/METRIC=MODEL/METRIC). Repeatable.",
        ),
        click.option(
            "--prefix",
            default="",
            metavar="TEXT",
            envvar=_env("prefix"),
            help="Put TEXT before every model name (after renames).",
        ),
        click.option(
            "--verbose",
            "-v",
            count=True,
            envvar=_env("verbose"),
            help="Say more: the whole text of every error (repeat for debug output).",
        ),
        click.option(
            "--quiet",
            "-q",
            is_flag=True,
            envvar=_env("quiet"),
            help="Only errors, and the summary on failure.",
        ),
        *backend_option_decorators(),
    ]


def apply(decorators: Sequence[Decorator], function: Any) -> Any:  # noqa: ANN401
    """Apply decorators so that options show in the order listed."""
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


# -- from flags to objects ---------------------------------------------------------------------


@attrs.frozen
class ShipRequest:
    """The shipping options of a command, validated, ready to build backends and a shipper."""

    backends: tuple[str, ...]
    backend_options: Mapping[str, Mapping[str, Any]]
    params: Mapping[str, Any]
    verbose: int = 0
    quiet: bool = False

    def build_backends(self) -> list[tuple[str, Any]]:
        """Fresh backend instances (one set per shipped log)."""
        from tf_ship.backends.registry import UnknownBackendError, create_backend  # noqa: PLC0415

        try:
            return [
                (name, create_backend(name, self.backend_options[name])) for name in self.backends
            ]
        except UnknownBackendError as error:
            raise click.UsageError(str(error)) from error

    def ship_options(self, log_file: Path, **overrides: Any) -> Any:  # noqa: ANN401
        """`ShipOptions` for shipping `log_file`."""
        from tf_ship.shipper.progress import ProgressReporter  # noqa: PLC0415
        from tf_ship.shipper.shaping import EventShaper, parse_renames  # noqa: PLC0415
        from tf_ship.shipper.ship import ShipOptions  # noqa: PLC0415
        from tf_ship.shipper.worker import RetryPolicy  # noqa: PLC0415

        p = self.params
        state_path = None if "state_file" in overrides else self.state_file(log_file)
        engine = {option.name: p[option.name] for option in ENGINE_OPTIONS}
        retry = RetryPolicy(give_up_after=engine.pop(RETRY_TIMEOUT.name))
        values: dict[str, Any] = {
            **engine,
            "retry": retry,
            "run_name": p["run_name"],
            "state_file": state_path,
            "fresh": p["fresh"],
            "on_restart": p["on_restart"],
            "shaper": EventShaper(
                include=tuple(p["include"]),
                exclude=tuple(p["exclude"]),
                renames=parse_renames(p["rename"]),
                prefix=p["prefix"],
            ),
            "progress": None
            if self.quiet
            else ProgressReporter(sys.stderr, follow=p["follow"], interactive=sys.stderr.isatty()),
        }
        values.update(overrides)
        return ShipOptions(**values)

    def state_file(self, log_file: Path) -> Path | None:
        """Where to keep the state of `log_file` (see `tf_ship.shipper.places`), None for none.

        Raises `StartupError` when it cannot be kept where asked, nor anywhere by default.
        """
        from tf_ship.shipper.places import PlaceError, state_place  # noqa: PLC0415

        explicit = self.params["state_file"]
        if not explicit and not self.params["state"]:
            return None
        try:
            place = state_place(log_file, Path(explicit) if explicit else None)
        except PlaceError as error:
            raise StartupError(str(error)) from error
        if place.note:
            logging.getLogger("tf_ship").info("%s", place.note)
        return place.path

    def check_outputs(self) -> None:
        """Refuse at once (`StartupError`) when a backend cannot write where it would."""
        from tf_ship.backends.registry import UnknownBackendError, backend_factory  # noqa: PLC0415
        from tf_ship.shipper.places import output_problems  # noqa: PLC0415

        try:
            factories = [(name, backend_factory(name)) for name in self.backends]
        except UnknownBackendError as error:
            raise click.UsageError(str(error)) from error
        problems = output_problems(factories, self.backend_options)
        if problems:
            raise StartupError("; ".join(problems))


_SHIPPING_PARAMS = (
    *(option.name for option in ENGINE_OPTIONS),
    "run_name", "state", "state_file", "fresh", "on_restart",
    "include", "exclude", "rename", "prefix",
)  # fmt: skip


def ship_request(params: dict[str, Any]) -> ShipRequest:
    """Take the shipping options out of a command's parameters and check them."""
    backends = tuple(params.pop("backends"))
    extra = tuple(params.pop("backend_opts"))
    protect_standard_streams()  # tracker SDKs print URIs, basic auth included, themselves
    verbose = params.pop("verbose")
    quiet = params.pop("quiet")
    configure_logging(verbose, quiet=quiet)
    remember_secrets_in([*params.values(), *extra, *os.environ.values()])
    if not backends:
        msg = "choose at least one --backend (for example: --backend jsonl)"
        raise click.UsageError(msg)
    if len(set(backends)) != len(backends):
        msg = f"--backend names a backend twice: {', '.join(backends)}"
        raise click.UsageError(msg)
    routed = _route_backend_options(params, backends, extra)
    from tf_ship.shipper.shaping import parse_renames  # noqa: PLC0415

    try:
        parse_renames(params["rename"])
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--rename") from error
    shipping = {name: params.pop(name) for name in _SHIPPING_PARAMS}
    request = ShipRequest(backends, routed, shipping, verbose, quiet)
    request.check_outputs()
    return request


def _route_backend_options(
    params: dict[str, Any], backends: Sequence[str], extra: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Route `--<backend>-...` flags and `--backend-opt NAME.KEY=VALUE` to each backend."""
    routed: dict[str, dict[str, Any]] = {name: {} for name in backends}
    for spec in all_specs():
        for option in spec.options:
            value = params.pop(spec.param_name(option))
            if value in (None, ()):
                continue
            if spec.name not in routed:
                msg = f"{option.flag} belongs to the {spec.name} backend: add --backend {spec.name}"
                raise click.UsageError(msg)
            routed[spec.name][option.keyword] = list(value) if option.multiple else value
    for item in extra:
        name_key, sep, value = item.partition("=")
        name, dot, key = name_key.rpartition(".")
        if not sep or not dot or not name or not key:
            msg = f"--backend-opt {item!r} is not of the form NAME.KEY=VALUE"
            raise click.UsageError(msg)
        if name not in routed:
            msg = f"--backend-opt {item!r} names backend {name!r}, which is not selected"
            raise click.UsageError(msg)
        routed[name][key.replace("-", "_")] = value
    return routed


def configure_logging(verbose: int, *, quiet: bool) -> None:
    """tf-ship's messages go to standard error, prefixed, redacted, at the chosen level.

    ``tf_ship.details`` (the whole text of errors the main log only names) shows from ``-v`` on.
    """
    level = logging.DEBUG if verbose > 1 else logging.INFO
    if quiet:
        level = logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("tf-ship: %(message)s"))
    root = logging.getLogger("tf_ship")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    details = logging.getLogger("tf_ship.details")
    details.setLevel(logging.NOTSET if verbose and not quiet else logging.WARNING)


def finish(report: Any, *, quiet: bool, note: str | None = None) -> None:  # noqa: ANN401 - a ShipReport
    """Print the summary (unless quiet and fine) then `note`; exit with the report's code."""
    from tf_ship.shipper.stopping import exit_process  # noqa: PLC0415

    if not quiet or not report.ok:
        click.echo(report.summary(), err=True)
        if note:
            click.echo(note, err=True)
    exit_process(EXIT_OK if report.ok else EXIT_FAILURE)
