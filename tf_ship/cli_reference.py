"""Render the command-line reference (docs/cli.md) from the click command itself.

``python -m tf_ship.cli_reference > docs/cli.md``; a test checks that the file is current.
"""

from __future__ import annotations

import click

from tf_ship.cli import main

INTRO = """\
# Command-line reference

Generated from the command itself (`python -m tf_ship.cli_reference > docs/cli.md`).

```
tf-ship [OPTIONS]
python -m tf_ship [OPTIONS]
```

Exit codes: 0 when every backend shipped everything; 1 when a backend failed (the summary says
which and why) or the log never appeared; 2 for a usage error (a one-line reason on standard
error). SIGINT or SIGTERM stops reading, flushes and closes every backend and exits 0; a second
signal exits at once. The final summary goes to standard error.
"""


def render() -> str:
    """The reference as Markdown."""
    context = click.Context(main, info_name="tf-ship")
    lines = [INTRO, "## Options", "", "| option | value | default | meaning |"]
    lines.append("| --- | --- | --- | --- |")
    for param in main.get_params(context):
        if not isinstance(param, click.Option):
            continue
        record = param.get_help_record(context)
        if record is None:
            continue
        flags = ", ".join(f"`{flag}`" for flag in [*param.opts, *param.secondary_opts])
        value = "" if param.is_flag else f"`{param.make_metavar(context)}`"
        default = param.get_default(context, call=False)
        unset = default is None or default == () or type(default).__name__ == "Sentinel"
        shown = "" if param.is_flag or unset else f"`{default}`"
        meaning = (param.help or "").replace("|", "\\|").replace("\n", " ")
        if param.multiple and "Repeat" not in meaning:
            meaning += " Repeatable."
        lines.append(f"| {flags} | {value} | {shown} | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    click.echo(render(), nl=False)
