"""The exit codes of `tf-ship` (``ship``) and ``tf-ship watch``, in one place.

The README, ``tf-ship --help`` and docs/cli.md show `EXIT_CODES` as rendered here; a test checks
that the README's copy is current. ``tf-ship run`` exits with the application's code instead.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

EXIT_CODES: Mapping[int, str] = {
    EXIT_OK: "everything was shipped (also after a stop by SIGINT or SIGTERM: what was read is "
    "flushed, the runs end KILLED)",
    EXIT_FAILURE: "not everything was shipped: a backend failed (the summary says which and "
    "why), the log did not appear, or a second signal ended tf-ship before the backends were "
    "done",
    EXIT_USAGE: "usage or setup error, nothing shipped: a bad option, an unknown backend, no "
    "log given, a state file that another tf-ship holds (one line on standard error says which)",
}


def exit_code_table() -> str:
    """`EXIT_CODES` as a Markdown table."""
    rows = ["| exit code | meaning |", "| --- | --- |"]
    rows.extend(f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items())
    return "\n".join(rows) + "\n"


def exit_code_epilog(width: int = 96) -> str:
    """`EXIT_CODES` for ``--help``: one unwrapped line per code."""
    lines = ["\b", "Exit codes:"]
    for code, meaning in EXIT_CODES.items():
        lines.extend(
            textwrap.wrap(meaning, width, initial_indent=f"  {code}  ", subsequent_indent="     ")
        )
    return "\n".join(lines)
