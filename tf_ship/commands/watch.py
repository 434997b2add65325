"""``tf-ship watch ROOT``: ship every TorchFort log under a directory, as new ones appear.

The command: its options, its help, the signals and the summary. Finding the logs and shipping
each is the library `tf_ship.watching`.

Only the main thread handles SIGINT/SIGTERM: the first one stops every shipper cleanly, a second
one exits at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from tf_ship.backends.spec import BackendSpec
from tf_ship.cli import CONTEXT
from tf_ship.cli_options import EXIT_FAILURE, EXIT_OK, apply, ship_request, shipping_options
from tf_ship.shipper.stopping import StopSignals, exit_process
from tf_ship.watching.rules import check_request, per_log_rules
from tf_ship.watching.watcher import DEFAULT_MAX_LOGS, DEFAULT_SCAN_INTERVAL, NameLogs, Watcher


def _watch(  # its help: `_watch_help`
    root: Path,
    max_logs: int,
    scan_interval: float,
    depth: int | None,
    **params: Any,  # noqa: ANN401
) -> None:
    signals = StopSignals("stopping every log").install()  # also while SDKs are imported
    request = ship_request(params)
    check_request(request)
    request.build_backends()  # an unknown backend is a usage error before anything ships
    logging.getLogger("tf_ship").addFilter(NameLogs())
    watcher = Watcher(root, request, max_logs=max_logs, scan_interval=scan_interval, depth=depth)
    signals.connect(watcher.stop)
    watcher.run()
    if not request.quiet or not watcher.ok:
        click.echo(watcher.summary(), err=True)
    exit_process(EXIT_OK if watcher.ok else EXIT_FAILURE)


_WATCH_OPTIONS = [
    click.argument("root", type=click.Path(file_okay=False, path_type=Path)),
    click.option(
        "--max-logs",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_LOGS,
        metavar="N",
        show_default=True,
        envvar="TF_SHIP_MAX_LOGS",
        help="How many logs ship at once (each uses one thread, plus one per backend); the "
        "others wait their turn until a log ends.",
    ),
    click.option(
        "--scan-interval",
        type=click.FloatRange(min=0.05),
        default=DEFAULT_SCAN_INTERVAL,
        metavar="SECONDS",
        show_default=True,
        envvar="TF_SHIP_SCAN_INTERVAL",
        help="How often to search ROOT for new log directories (with --follow).",
    ),
    click.option(
        "--depth",
        type=click.IntRange(min=0),
        default=None,
        metavar="N",
        envvar="TF_SHIP_DEPTH",
        help="Search at most N folder levels below ROOT (0: ROOT only) [default: no limit].",
    ),
]


def _watch_help(specs: Sequence[BackendSpec] | None = None) -> str:
    """The command's help; which options write to one place per log comes from the specs."""
    places = ", ".join(
        f"{option.flag} DIR {'writes to' if not index else 'to'} {rule.target}"
        for index, (_, option, rule) in enumerate(per_log_rules(specs))
    )
    return f"""Ship every TorchFort log under ROOT, each to runs of its own, as new ones appear.

    Finds every folder under ROOT (ROOT included, hidden folders skipped) that holds a
    torchfort.log and ships it as `tf-ship --logdir FOLDER` would: its own backends, its own
    tracker runs and its own state file (FOLDER/.tf-ship-state.json), so that running the same
    command again continues each log where it stopped. The runs of a log are named after its
    path below ROOT with / replaced by - (with --run-name NAME: NAME-<folder>);
    {places}.

    At most --max-logs logs ship at once; the others wait their turn, in the order found, until
    a log ends. With --follow (the default), ROOT is searched again every --scan-interval
    seconds, each log ships until --timeout seconds without new lines (then it is shipped again
    from where it stopped when it grows), and watch runs until SIGINT or SIGTERM. With
    --no-follow, every log found is shipped once and watch exits. --wait is how long to wait for
    ROOT to appear. One summary line per log and a total go to standard error; the exit code is
    1 when a backend of any log failed.
    """


watch_command: click.Command = click.command(
    "watch",
    help=_watch_help(),
    context_settings=CONTEXT,
    epilog="Exit codes: 0 shipped, 1 a backend of some log failed, 2 usage error.",
)(apply([*_WATCH_OPTIONS, *shipping_options()], _watch))
