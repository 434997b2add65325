"""Specs that installed plugins declare (entry-point group ``tf_ship.specs``), and `all_specs`.

A plugin package that lists ``name = "package.module:SPEC"`` under ``tf_ship.specs`` gets what
a built-in backend gets from its spec: its flags, ``TF_SHIP_<NAME>_<KEYWORD>`` variables,
``[name]`` table in tf-ship.toml, an entry in the ``--backend`` help and its rules in `watch`
(docs/writing-a-backend.md). The specs are read while the command line is built, so the
entry points are found by reading the metadata folders on ``sys.path`` directly (a few
milliseconds): `importlib.metadata` would add tens of milliseconds to every
``tf-ship --help``. A spec that cannot be used is skipped with one warning line that names the
plugin and what to fix, and tf-ship goes on without it.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache

import attrs

from tf_ship.backends.spec import BackendSpec
from tf_ship.backends.specs import builtin_specs

SPEC_GROUP = "tf_ship.specs"
"""The entry-point group of plugin specs: backend name -> ``package.module:SPEC``."""

RESERVED_WORDS = frozenset(
    {"backend", "batch", "call", "config", "depth", "example", "exclude", "follow", "fresh",
     "help", "include", "json", "log", "logdir", "max", "no", "on", "plot", "poll", "polling",
     "prefix", "quiet", "rename", "retry", "run", "scan", "shutdown", "state", "timeout",
     "verbose", "version", "wait", "width"}
)  # fmt: skip
"""First words of tf-ship's own flags and variables (``--run-name``, ``TF_SHIP_MAX_LOGS``): a
plugin named so could take one of them (a test keeps this list complete)."""

Warn = Callable[[str], None]


@attrs.frozen
class EntryPoint:
    """One ``name = value`` line of a distribution's ``entry_points.txt``."""

    name: str
    value: str
    distribution: str


def _warn_on_stderr(message: str) -> None:
    print(f"tf-ship: warning: {message}", file=sys.stderr)  # noqa: T201 - before logging is set up


def _metadata_folders(path: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(distribution name, its metadata folder) for each distribution on `path`, first wins.

    Plain strings and `os` calls: pathlib objects made this scan about ten times slower.
    """
    seen: set[str] = set()
    for entry in path:
        folder = entry or "."
        try:
            names = sorted(os.listdir(folder))  # noqa: PTH208 - names only, fast
        except OSError:  # a zip file, a folder that is gone
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            distribution = name.rpartition(".")[0].partition("-")[0]
            key = distribution.lower().replace("-", "_").replace(".", "_")
            if key not in seen:
                seen.add(key)
                yield distribution, os.path.join(folder, name)  # noqa: PTH118 - fast


def entry_points_of(group: str, path: Iterable[str] | None = None) -> list[EntryPoint]:
    """The entry points of `group` in the distributions on `path` (``sys.path``)."""
    found = []
    header = f"[{group}]"
    for distribution, folder in _metadata_folders(sys.path if path is None else path):
        try:
            with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as stream:  # noqa: PTH118, PTH123
                text = stream.read()
        except (OSError, UnicodeDecodeError):
            continue
        if header not in text:
            continue
        section = None
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == header and "=" in line and not line.startswith(("#", ";")):
                name, _, value = line.partition("=")
                value = value.partition("[")[0].strip()  # "module:attr [extra]": the extra is pip's
                found.append(EntryPoint(name.strip(), value, distribution))
    return found


def _load(value: str) -> object:
    module_name, _, attribute = value.partition(":")
    target: object = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else ():
        target = getattr(target, part)
    return target


def _flags(spec: BackendSpec) -> Iterator[tuple[str, str]]:
    """(flag or variable, how to name it) for every flag, alias and variable of `spec`."""
    for option in spec.options:
        for flag in (option.flag, *option.aliases):
            yield flag, flag
        variable = spec.environment_variable(option)
        yield variable, f"{variable} (the variable of {option.flag})"


def _name_problem(spec: object, entry: EntryPoint, loaded: Mapping[str, str]) -> str | None:
    """What is wrong with what a plugin's entry point names, said as what to fix."""
    if not isinstance(spec, BackendSpec):
        return (
            f"{entry.value} is a {type(spec).__name__}, not a tf_ship.backends.spec.BackendSpec: "
            f"point the {SPEC_GROUP} entry point at one"
        )
    if spec.name != entry.name:
        return (
            f"its BackendSpec is named {spec.name!r}: the {SPEC_GROUP} entry point and "
            "BackendSpec.name must be the same"
        )
    if spec.name in loaded:
        return f"{loaded[spec.name]} is named {spec.name!r} too: uninstall one of them"
    if spec.name in {builtin.name for builtin in builtin_specs()}:
        return f"{spec.name!r} is a built-in backend: give the plugin another name"
    if re.split(r"[-_]", spec.name)[0].lower() in RESERVED_WORDS:
        return f"{spec.name!r} could clash with tf-ship's own options: give the plugin another name"
    return None


def _flag_problem(spec: BackendSpec, taken: Mapping[str, str]) -> str | None:
    """Which flag or variable of `spec` is not its own to take, said as what to fix."""
    for flag, named in _flags(spec):
        if flag.startswith("-") and not flag.startswith(f"--{spec.name}-"):
            return (
                f"its flag {flag} must start with --{spec.name}- (for example --{spec.name}-path)"
            )
        if flag in taken:
            return f"{named} is already taken by {taken[flag]}: rename it"
    return None


def _loaded(
    entry: EntryPoint, taken: Mapping[str, str], loaded: Mapping[str, str]
) -> BackendSpec | str:
    """The spec `entry` names, or what is wrong with it."""
    try:
        spec = _load(entry.value)
    except Exception as error:  # noqa: BLE001 - whatever a plugin raises, tf-ship goes on
        return (
            f"{entry.value} cannot be imported ({type(error).__name__}: {error}): fix or "
            f"reinstall {entry.distribution}"
        )
    problem = _name_problem(spec, entry, loaded)
    if problem is None and isinstance(spec, BackendSpec):
        problem = _flag_problem(spec, taken)
    return spec if problem is None and isinstance(spec, BackendSpec) else str(problem)


def load_plugin_specs(
    entries: Iterable[EntryPoint], warn: Warn = _warn_on_stderr
) -> list[BackendSpec]:
    """The usable specs of `entries`, in order; each unusable one is skipped with a warning."""
    taken = {flag: f"the {s.name} backend" for s in builtin_specs() for flag, _ in _flags(s)}
    loaded: dict[str, str] = {}
    """Plugin name -> the distribution whose spec has it."""
    specs: list[BackendSpec] = []
    for entry in entries:
        spec = _loaded(entry, taken, loaded)
        if isinstance(spec, str):
            warn(f"backend plugin {entry.name!r} (from {entry.distribution}) is skipped: {spec}")
            continue
        taken.update((flag, f"the {spec.name} backend") for flag, _ in _flags(spec))
        loaded[spec.name] = entry.distribution
        specs.append(spec)
    return specs


@cache
def plugin_specs() -> tuple[BackendSpec, ...]:
    """The specs of the installed plugins (warned about once per process)."""
    return tuple(load_plugin_specs(entry_points_of(SPEC_GROUP)))


def all_specs() -> tuple[BackendSpec, ...]:
    """The built-in backends' specs, then those of installed plugins."""
    return (*builtin_specs(), *plugin_specs())
