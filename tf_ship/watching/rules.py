"""What watch refuses, and how it gives each log its own outputs: from the backends' specs."""

from __future__ import annotations

from collections.abc import Sequence

import click

from tf_ship.backends.plugin_specs import all_specs
from tf_ship.backends.spec import BackendOption, BackendSpec, PerLogOutput
from tf_ship.cli_options import ShipRequest


def check_request(request: ShipRequest) -> None:
    """Refuse options that would make several logs share one output, run or state file."""
    if request.params["state_file"]:
        msg = (
            "--state-file names one file, but watch keeps a state file in each log directory "
            "(leave it out, or give --no-state)"
        )
        raise click.UsageError(msg)
    options = request.backend_options
    for spec in all_specs():
        for option in spec.options:
            if option.names_one_run and options.get(spec.name, {}).get(option.keyword):
                msg = (
                    f"{option.flag} would send every log to one run: watch starts a run per log "
                    "directory"
                )
                raise click.UsageError(msg)
    for spec, option, rule in per_log_rules():
        values = options.get(spec.name)
        if rule.required and values is not None and not rule.given(values.get(option.keyword)):
            what = "file" if rule.suffix else "folder"
            msg = (
                f"--backend {spec.name} needs {option.flag} DIR with watch (one {what} per log: "
                f"DIR/NAME{rule.suffix})"
            )
            raise click.UsageError(msg)


def per_log_rules(
    specs: Sequence[BackendSpec] | None = None,
) -> list[tuple[BackendSpec, BackendOption, PerLogOutput]]:
    """Every option of `specs` (every backend's) that watch rewrites for each log, with its rule."""
    return [
        (spec, option, option.per_log)
        for spec in (all_specs() if specs is None else specs)
        for option in spec.options
        if option.per_log is not None
    ]
