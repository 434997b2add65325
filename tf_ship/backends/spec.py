"""What the command line needs to know about a backend, declared as data that imports no SDK.

A `BackendSpec` names a backend, says where its factory is (imported only when the backend is
chosen), which flags it takes, which pip extra installs its tracker, and what `tf-ship watch`
must do with its options when it ships many logs at once. The flags' click parameters,
``TF_SHIP_*`` environment variables and TOML keys are derived from it, so that adding a backend
means writing its module and its spec (``tf_ship/backends/specs/``), nothing in the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

ENV_PREFIX = "TF_SHIP_"
"""Every environment variable of tf-ship starts with this."""


@attrs.frozen
class PerLogOutput:
    """How `watch` gives each log its own output through an option naming a place.

    With watch the option's value is a folder, and each log writes to
    ``FOLDER/<log name><suffix>`` inside it.
    """

    suffix: str = ""
    """Appended to the log's name (``.jsonl``: one file per log; empty: one folder per log)."""
    required: bool = False
    """Watch refuses the backend without the option (its default would be shared by every log,
    as standard output is)."""
    unset: tuple[str, ...] = ()
    """Values that mean the option was not given (``-``: standard output)."""

    def given(self, value: object) -> bool:
        """Whether `value` names a place (rather than leaving the default)."""
        return value is not None and str(value) not in ("", *self.unset)

    def for_log(self, value: object, log_name: str) -> str:
        """The value for the log named `log_name`."""
        return str(Path(str(value)) / f"{log_name}{self.suffix}")

    @property
    def target(self) -> str:
        """Where each log writes, for help texts: ``DIR/<folder>.jsonl``."""
        return f"DIR/<folder>{self.suffix}"


@attrs.frozen
class BackendOption:
    """One command-line option that belongs to one backend."""

    flag: str
    """The long flag, for example ``--jsonl-path``; its TOML keys are derived from it."""
    keyword: str
    """The keyword argument of the backend's factory that receives the value; the environment
    variable is ``TF_SHIP_<BACKEND>_<KEYWORD>``."""
    help: str
    multiple: bool = False
    aliases: tuple[str, ...] = ()
    """Further spellings, for example the flags of the tool tf-ship replaces."""
    metavar: str = "TEXT"
    per_log: PerLogOutput | None = None
    """How `watch` rewrites the value for each log (None: every log gets it as given)."""
    names_one_run: bool = False
    """The value names one tracker run: `watch`, which starts a run per log, refuses it."""


ExamplePlacer = Callable[[dict[str, Any], Path, str, Mapping[str, str]], None]
"""Puts what a backend writes in the example's folder, unless the user placed it: called with
its options (changed in place), the folder, a time stamp for this invocation, and the
environment (where a tracker's own variable may place it)."""


@attrs.frozen
class BackendSpec:
    """A backend as the command line sees it: its name, factory, options and extra."""

    name: str
    """What ``--backend`` takes, and the table name in ``tf-ship.toml``."""
    factory: str
    """``package.module:attr`` of the class (or function) that builds the backend."""
    options: tuple[BackendOption, ...] = ()
    extra: str | None = None
    """The pip extra that installs its tracker (``tf-ship[extra]``); None: nothing to install."""
    place_example: ExamplePlacer | None = None
    """Where ``tf-ship --example`` puts its outputs (`tf_ship.example_outputs`); None: leave
    them where the options say."""

    def param_name(self, option: BackendOption) -> str:
        """The click parameter name of one of its options."""
        return f"opt__{self.name}__{option.keyword}"

    def environment_variable(self, option: BackendOption) -> str:
        """``TF_SHIP_WANDB_PROJECT`` for ``--wandb-project``."""
        return f"{ENV_PREFIX}{self.name}_{option.keyword}".upper()

    def toml_keys(self, option: BackendOption) -> tuple[str, ...]:
        """The keys of its ``[name]`` table in ``tf-ship.toml`` that set `option`.

        The keyword, and the flag without ``--<name>-`` in both spellings (``tags``,
        ``job-type``, ``job_type``).
        """
        suffix = option.flag.removeprefix(f"--{self.name}-")
        return tuple(dict.fromkeys((option.keyword, suffix, suffix.replace("-", "_"))))
