"""The `tf-ship` command: parses flags, builds backends and a shipper, runs it.

Thin on purpose: everything it does is available from Python through `tf_ship.ship`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from tf_ship import __version__
from tf_ship.backends.options import BACKEND_OPTIONS, BackendOption

EXAMPLE_DIR = Path(__file__).parent / "example"
LOG_NAME = "torchfort.log"
EXIT_FAILURE = 1


def _backend_option_decorators() -> list[Callable[[Any], Any]]:
    return [
        click.option(
            option.flag,
            *option.aliases,
            _param_name(backend, option),
            multiple=option.multiple,
            metavar=option.metavar,
            help=option.help,
        )
        for backend, options in BACKEND_OPTIONS.items()
        for option in options
    ]


def _param_name(backend: str, option: BackendOption) -> str:
    return f"opt__{backend}__{option.keyword}"


def _split_backend_options(
    params: dict[str, Any], backends: Sequence[str], extra: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Route `--<backend>-...` flags and `--backend-opt NAME.KEY=VALUE` to each backend."""
    routed: dict[str, dict[str, Any]] = {name: {} for name in backends}
    for backend, options in BACKEND_OPTIONS.items():
        for option in options:
            value = params.pop(_param_name(backend, option))
            if value in (None, ()):
                continue
            if backend not in routed:
                msg = f"{option.flag} belongs to the {backend} backend: add --backend {backend}"
                raise click.UsageError(msg)
            routed[backend][option.keyword] = list(value) if option.multiple else value
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


def _configure_logging(verbose: int, quiet: bool) -> None:  # noqa: FBT001 - a click flag
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    if quiet:
        level = logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tf-ship: %(message)s"))
    root = logging.getLogger("tf_ship")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _resolve_log_file(logdir: str | None, log_file: str | None, example: bool) -> Path:  # noqa: FBT001
    if example:
        if logdir or log_file:
            msg = "--example ships the bundled log: leave out --logdir and --log-file"
            raise click.UsageError(msg)
        return EXAMPLE_DIR / LOG_NAME
    if log_file:
        if logdir:
            msg = "give --logdir or --log-file, not both"
            raise click.UsageError(msg)
        return Path(log_file)
    if logdir:
        return Path(logdir) / LOG_NAME
    msg = "no log to ship: give --logdir DIR or --log-file FILE, or set TORCHFORT_LOGDIR"
    raise click.UsageError(msg)


def _state_path(log_file: Path, *, state: bool, state_file: str | None) -> Path | None:
    if state_file:
        return Path(state_file)
    if not state:
        return None
    from tf_ship.shipper.state import STATE_NAME  # noqa: PLC0415

    return log_file.parent / STATE_NAME


def _apply(decorators: Sequence[Callable[[Any], Any]], function: Any) -> Any:  # noqa: ANN401
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def _main(  # noqa: PLR0913 - one parameter per option
    *,
    logdir: str | None,
    log_file: str | None,
    example: bool,
    backends: tuple[str, ...],
    backend_opts: tuple[str, ...],
    follow: bool,
    wait: float | None,
    timeout: float,
    poll_interval: float,
    batch_size: int,
    max_line_bytes: int,
    shutdown_timeout: float,
    retry_timeout: float,
    run_name: str | None,
    state: bool,
    state_file: str | None,
    fresh: bool,
    verbose: int,
    quiet: bool,
    **backend_params: Any,  # noqa: ANN401
) -> None:
    """Ship a TorchFort metric log to experiment trackers.

    Reads ${TORCHFORT_LOGDIR}/torchfort.log (and the config_*.yaml files beside it) from the
    start, follows it as the application appends, and sends every metric to each --backend.
    """
    _configure_logging(verbose, quiet)
    path = _resolve_log_file(logdir, log_file, example)
    if not backends:
        msg = "choose at least one --backend (for example: --backend jsonl)"
        raise click.UsageError(msg)
    if len(set(backends)) != len(backends):
        msg = f"--backend names a backend twice: {', '.join(backends)}"
        raise click.UsageError(msg)
    routed = _split_backend_options(backend_params, backends, backend_opts)

    from tf_ship.backends.registry import UnknownBackendError, create_backend  # noqa: PLC0415
    from tf_ship.shipper.ship import LogNotFoundError, ShipOptions, Shipper  # noqa: PLC0415
    from tf_ship.shipper.worker import RetryPolicy  # noqa: PLC0415

    try:
        built = [(name, create_backend(name, routed[name])) for name in backends]
    except UnknownBackendError as error:
        raise click.UsageError(str(error)) from error
    options = ShipOptions(
        follow=follow,
        wait=wait,
        timeout=timeout,
        poll_interval=poll_interval,
        batch_size=batch_size,
        max_line_bytes=max_line_bytes,
        shutdown_timeout=shutdown_timeout,
        retry=RetryPolicy(give_up_after=retry_timeout),
        run_name=run_name,
        state_file=_state_path(path, state=state and not example, state_file=state_file),
        fresh=fresh,
    )
    shipper = Shipper(path, built, options)
    shipper.install_signal_handlers()
    try:
        report = shipper.run()
    except LogNotFoundError as error:
        click.echo(f"tf-ship: error: {error}", err=True)
        sys.exit(EXIT_FAILURE)
    if not quiet or not report.ok:
        click.echo(report.summary(), err=True)
    sys.exit(0 if report.ok else EXIT_FAILURE)


_OPTIONS: list[Callable[[Any], Any]] = [
    click.command(
        name="tf-ship",
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    ),
    click.option(
        "--logdir",
        envvar="TORCHFORT_LOGDIR",
        metavar="DIR",
        help="TorchFort log directory holding torchfort.log [default: $TORCHFORT_LOGDIR].",
    ),
    click.option("--log-file", metavar="FILE", help="The log file itself, instead of --logdir."),
    click.option("--example", is_flag=True, help="Ship the example log bundled with tf-ship."),
    click.option(
        "--backend",
        "-b",
        "backends",
        multiple=True,
        metavar="NAME",
        help="Where to ship: jsonl, null, wandb, mlflow, tensorboard, an installed plugin, or "
        "package.module:Class. Repeat to ship to several at once.",
    ),
    click.option(
        "--backend-opt",
        "backend_opts",
        multiple=True,
        metavar="NAME.KEY=VALUE",
        help="An option for a backend, passed to it as keyword KEY. Repeatable.",
    ),
    click.option(
        "--follow/--no-follow",
        default=True,
        show_default=True,
        help="Keep following the log as it grows, or ship what is there and exit.",
    ),
    click.option(
        "--wait",
        type=click.FloatRange(min=0),
        metavar="SECONDS",
        help="How long to wait for the log to appear [default: forever with --follow, "
        "not at all with --no-follow].",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0),
        default=0.0,
        metavar="SECONDS",
        show_default=True,
        help="Stop after this many seconds without new lines (0: never).",
    ),
    click.option(
        "--poll-interval",
        "--polling_interval",
        "poll_interval",
        type=click.FloatRange(min=0.01),
        default=0.5,
        metavar="SECONDS",
        show_default=True,
        help="Longest pause between two looks at the log (polling backs off up to it when idle).",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=1000,
        metavar="N",
        show_default=True,
        help="Most events handed to a backend at once.",
    ),
    click.option(
        "--max-line-bytes",
        type=click.IntRange(min=256),
        default=1 << 20,
        metavar="BYTES",
        show_default=True,
        help="Longer lines are skipped and reported.",
    ),
    click.option(
        "--shutdown-timeout",
        type=click.FloatRange(min=0),
        default=30.0,
        metavar="SECONDS",
        show_default=True,
        help="How long a stop waits for backends to flush and close.",
    ),
    click.option(
        "--retry-timeout",
        type=click.FloatRange(min=0),
        default=600.0,
        metavar="SECONDS",
        show_default=True,
        help="How long a failing backend is retried (with backoff) before it counts as failed.",
    ),
    click.option(
        "--run-name", "--run_tag", "run_name", metavar="NAME", help="Name of the tracker runs."
    ),
    click.option(
        "--state/--no-state",
        default=True,
        show_default=True,
        help="Keep cursors and run ids in a state file beside the log, so that a restarted "
        "tf-ship reopens the same runs and continues where it stopped (off with --example).",
    ),
    click.option(
        "--state-file",
        metavar="FILE",
        help="Where to keep the state [default: LOGDIR/.tf-ship-state.json].",
    ),
    click.option(
        "--fresh",
        is_flag=True,
        help="Ignore the saved state: new runs, from the start of the log.",
    ),
    click.option("--verbose", "-v", count=True, help="Say more (repeat for debug output)."),
    click.option("--quiet", "-q", is_flag=True, help="Only errors, and the summary on failure."),
    click.version_option(__version__, "--version", prog_name="tf-ship"),
]

main: click.Command = _apply(_OPTIONS[:1] + _OPTIONS[1:] + _backend_option_decorators(), _main)
