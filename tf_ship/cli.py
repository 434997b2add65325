"""The `tf-ship` command line: thin on purpose.

``tf-ship [OPTIONS]`` ships one log (the default command, `ship`); further commands live in
`tf_ship.commands` and are imported only when used, so that `tf-ship --help` stays fast and
imports no tracker SDK. Everything the commands do is available from Python (`tf_ship.ship`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import click

from tf_ship import __version__
from tf_ship.cli_options import (
    EXIT_FAILURE,
    ShipRequest,
    StartupError,
    apply,
    finish,
    ship_request,
    shipping_options,
)
from tf_ship.exit_codes import exit_code_epilog
from tf_ship.redaction import redact
from tf_ship.shipper.places import LOG_NAME

EXAMPLE_DIR = Path(__file__).parent / "example"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

COMMANDS: Mapping[str, str] = {
    "inspect": "tf_ship.commands.inspect:inspect_command",
    "run": "tf_ship.commands.run:run_command",
    "watch": "tf_ship.commands.watch:watch_command",
}
"""Further commands: name -> ``module:attribute``, imported when used."""


class DefaultCommandGroup(click.Group):
    """A group whose default command is `ship`: ``tf-ship --backend x`` means ``tf-ship ship ...``.

    So the command line of TorchFort's wandb_helper.py works unchanged, and ``tf-ship --help``
    shows the options most people need.
    """

    default_command = "ship"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Insert the default command unless the first word names another command."""
        if not args or args[0] not in self.list_commands(ctx):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The built-in commands and the lazily imported ones."""
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import a lazy command on first use."""
        if cmd_name in COMMANDS:
            module_name, _, attribute = COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            assert isinstance(command, click.Command)  # noqa: S101 - a programming error
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=DefaultCommandGroup, context_settings=CONTEXT)
def main() -> None:
    """Ship TorchFort's metric log to experiment trackers."""


def _resolve_log_file(logdir: str | None, log_file: str | None, *, example: bool) -> Path:
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


def _ship(*, logdir: str | None, log_file: str | None, example: bool, **params: Any) -> None:  # noqa: ANN401
    """Ship a TorchFort metric log to experiment trackers.

    Reads ${TORCHFORT_LOGDIR}/torchfort.log (and the config_*.yaml files beside it) from the
    start, follows it as the application appends, and sends every metric to each --backend.
    """
    from tf_ship.shipper.stopping import StopSignals, exit_process  # noqa: PLC0415

    signals = StopSignals().install()  # a signal while SDKs are imported stops cleanly too
    request = ship_request(params)
    path = _resolve_log_file(logdir, log_file, example=example)
    note = None
    if example:
        request, note = _place_example_outputs(request)
    built = request.build_backends()

    from tf_ship.shipper.lock import LockError  # noqa: PLC0415
    from tf_ship.shipper.ship import LogNotFoundError, Shipper  # noqa: PLC0415

    overrides = {"state_file": None} if example and not request.params["state_file"] else {}
    shipper = Shipper(path, built, request.ship_options(path, **overrides))
    signals.connect(shipper.request_stop, shipper.abandon)
    try:
        report = shipper.run()
    except LogNotFoundError as error:
        click.echo(redact(f"tf-ship: error: {error}"), err=True)
        exit_process(EXIT_FAILURE)
    except LockError as error:
        raise StartupError(str(error)) from error
    finish(report, quiet=request.quiet, note=note)


def _place_example_outputs(request: ShipRequest) -> tuple[ShipRequest, str | None]:
    """The example's tracker outputs go to one folder (see `tf_ship.example_outputs`)."""
    from tf_ship.example_outputs import EXAMPLE_OUTPUT, example_backend_options  # noqa: PLC0415

    placed = example_backend_options(request.backends, request.backend_options, os.environ)
    if placed == {name: dict(options) for name, options in request.backend_options.items()}:
        return request, None
    try:
        EXAMPLE_OUTPUT.mkdir(exist_ok=True)
    except OSError as error:
        msg = (
            f"--example writes its trackers' files to ./{EXAMPLE_OUTPUT}, which cannot be made "
            f"here ({error.strerror}): run it from a folder you can write to"
        )
        raise click.UsageError(msg) from error
    note = f"  the example's files: {EXAMPLE_OUTPUT.absolute()}/ (remove it to start over)"
    return attrs.evolve(request, backend_options=placed), note


_LOG_OPTIONS = [
    click.option(
        "--logdir",
        envvar=["TF_SHIP_LOGDIR", "TORCHFORT_LOGDIR"],
        metavar="DIR",
        help="TorchFort log directory holding torchfort.log [default: $TORCHFORT_LOGDIR].",
    ),
    click.option("--log-file", metavar="FILE", help="The log file itself, instead of --logdir."),
    click.option(
        "--example",
        is_flag=True,
        help="Ship the example log bundled with tf-ship; the trackers write to ./tf-ship-example.",
    ),
]

ship_command: click.Command = main.command(
    "ship",
    context_settings=CONTEXT,
    epilog="Other commands: tf-ship COMMAND --help, for COMMAND in: "
    + (", ".join(sorted(COMMANDS)) or "(none yet)")
    + ".\n\n"
    + exit_code_epilog(),
)(
    apply(
        [
            *_LOG_OPTIONS,
            *shipping_options(),
            click.version_option(__version__, "--version", prog_name="tf-ship"),
        ],
        _ship,
    )
)
