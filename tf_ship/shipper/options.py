"""The engine's options, declared once: name, flag, default, bounds and help.

`ShipOptions`, `WorkerSettings`, the parser and the tailer take their defaults from here, and
the command line builds its click options from `ENGINE_OPTIONS` (`tf_ship.cli_options`), so
that a default is written in one place. Plain data: no click here.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import attrs

T = TypeVar("T")

DEFAULT_BATCH_SIZE = 1000
"""Events per batch unless the user or the backend (`preferred_batch_size`) says otherwise."""


@attrs.frozen
class EngineOption(Generic[T]):
    """One option of the engine, as every layer that takes it needs it."""

    name: str
    """The keyword (`ShipOptions` field, click parameter; ``TF_SHIP_<NAME>``)."""
    flag: str
    """The long flag, or ``--on/--off`` for a switch."""
    default: T
    help: str
    kind: type[object] = float
    """float, int or bool (a switch)."""
    minimum: float = 0
    """The smallest value the command line accepts."""
    metavar: str = "SECONDS"
    aliases: tuple[str, ...] = ()
    """Further spellings of the flag, for example those of the tool tf-ship replaces."""


FOLLOW = EngineOption(
    "follow",
    "--follow/--no-follow",
    default=True,
    help="Keep following the log as it grows, or ship what is there and exit.",
    kind=bool,
)
WAIT: EngineOption[float | None] = EngineOption(
    "wait",
    "--wait",
    default=None,
    help="How long to wait for the log to appear [default: forever with --follow, not at all "
    "with --no-follow].",
)
TIMEOUT = EngineOption(
    "timeout",
    "--timeout",
    default=0.0,
    help="Stop after this many seconds without new lines (0: never).",
)
POLL_INTERVAL = EngineOption(
    "poll_interval",
    "--poll-interval",
    default=0.5,
    help="Longest pause between two looks at the log (polling backs off up to it when idle).",
    minimum=0.01,
    aliases=("--polling_interval",),
)
BATCH_SIZE: EngineOption[int | None] = EngineOption(
    "batch_size",
    "--batch-size",
    default=None,
    help="Most events handed to a backend at once, and flushed together [default: what the "
    f"backend prefers (wandb 10000), else {DEFAULT_BATCH_SIZE}].",
    kind=int,
    minimum=1,
    metavar="N",
)
MAX_LINE_BYTES = EngineOption(
    "max_line_bytes",
    "--max-line-bytes",
    default=1 << 20,
    help="Longer lines are skipped and reported.",
    kind=int,
    minimum=256,
    metavar="BYTES",
)
SHUTDOWN_TIMEOUT = EngineOption(
    "shutdown_timeout",
    "--shutdown-timeout",
    default=30.0,
    help="How long a stop waits in total for backends to flush and close.",
)
CALL_TIMEOUT = EngineOption(
    "call_timeout",
    "--call-timeout",
    default=120.0,
    help="A backend call (open, config, batch and flush, close) that takes longer counts as "
    "failed and is retried; the backend is never called twice at once (0: no limit).",
)
RETRY_TIMEOUT = EngineOption(
    "retry_timeout",
    "--retry-timeout",
    default=600.0,
    help="How long a failing backend is retried (with backoff) before it counts as failed.",
)

ENGINE_OPTIONS: tuple[EngineOption[Any], ...] = (
    FOLLOW,
    WAIT,
    TIMEOUT,
    POLL_INTERVAL,
    BATCH_SIZE,
    MAX_LINE_BYTES,
    SHUTDOWN_TIMEOUT,
    CALL_TIMEOUT,
    RETRY_TIMEOUT,
)
"""In the order the command line shows them."""
