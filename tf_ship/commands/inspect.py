"""``tf-ship inspect``: what a log holds, without any tracker (see `tf_ship.inspection`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tf_ship.inspection import InspectError, format_table, inspect_log, write_plot

EXIT_FAILURE = 1
_EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "example"


@click.command(
    "inspect",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit codes: 0 inspected, 1 the log cannot be read or the plot not written, "
    "2 usage error.",
)
@click.argument("log_or_dir", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option(
    "--plot",
    metavar="FILE.png",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also draw every curve into a PNG file: a panel per metric, against its step "
    '(needs "tf-ship[plot]").',
)
@click.option(
    "--width",
    type=click.IntRange(min=1, max=1000),
    metavar="N",
    help="Characters per sparkline [default: what fits in 100 columns, 8 to 40; 24 for --json].",
)
@click.option("--example", is_flag=True, help="Inspect the example log bundled with tf-ship.")
def inspect_command(
    log_or_dir: Path | None, *, as_json: bool, plot: Path | None, width: int | None, example: bool
) -> None:
    """Show what a TorchFort metric log holds, without any tracker.

    LOG_OR_DIR is a `torchfort.log` file or the directory holding it. For each model and
    metric: how many lines, the first and last step (and the lowest and highest when the steps
    go backwards, as after a restart), the last value, how many NaN and infinite values, a
    sparkline of the finite values in log order, and the MLflow key the name becomes when it is
    not `<model>/<metric>` (collisions marked). Then the `config_*.yaml` files matched to
    models, and the skipped lines by reason with their first line numbers. Reads the log once,
    in bounded memory; a live log is read up to its size at the start.
    """
    if example == (log_or_dir is not None):
        msg = "give LOG_OR_DIR or --example (one of them)"
        raise click.UsageError(msg)
    target = _EXAMPLE_DIR if log_or_dir is None else log_or_dir
    try:
        report = inspect_log(target)
        if as_json:
            json.dump(report.to_json(width or 24), sys.stdout, ensure_ascii=False, indent=2)
            sys.stdout.write("\n")
        else:
            click.echo(format_table(report, width), nl=False)
        if plot is not None:
            write_plot(report, plot)
            click.echo(f"tf-ship: plot written to {plot}", err=True)
    except InspectError as error:
        click.echo(f"tf-ship: error: {error}", err=True)
        sys.exit(EXIT_FAILURE)
