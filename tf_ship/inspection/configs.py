"""The ``config_*.yaml`` files beside a log: which model each belongs to, which match none."""

from __future__ import annotations

from tf_ship.inspection.report import ConfigProblem, LogReport
from tf_ship.shipper.configs import (
    CONFIG_GLOB,
    MAX_CONFIG_BYTES,
    ConfigCatalog,
    ConfigError,
    load_config,
)


def find_configs(report: LogReport) -> None:
    """Fill in the report's configs, as the shipper matches them, and the files matching none."""
    logdir = report.path.parent
    configs = ConfigCatalog(logdir).configs(force=True)
    report.configs = {
        model: config.path for model, config in configs.items() if config.path is not None
    }
    used = {path: model for model, path in report.configs.items()}
    try:
        paths = sorted(logdir.glob(CONFIG_GLOB))
    except OSError:  # pragma: no cover - the directory vanished
        return
    for path in paths:
        if path in used:
            continue
        try:
            with path.open("rb") as stream:
                identifier, _ = load_config(stream.read(MAX_CONFIG_BYTES + 1))
        except (ConfigError, OSError) as error:
            report.config_problems.append(ConfigProblem(path, " ".join(str(error).split())))
            continue
        other = report.configs.get(identifier)
        where = f" in {other.name}" if other is not None else ""
        problem = f"identifier {identifier!r} is also{where}"
        report.config_problems.append(ConfigProblem(path, problem))
