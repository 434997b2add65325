"""Render the command-line reference (docs/cli.md) from the click command itself.

``python -m tf_ship.cli_reference > docs/cli.md``; a test checks that the file is current. It
shows the built-in backends only, whatever plugins are installed (their flags are left out), so
that the file does not depend on the machine it is made on.
"""

from __future__ import annotations

import inspect

import click

from tf_ship.backends.plugin_specs import plugin_specs
from tf_ship.backends.specs import builtin_specs
from tf_ship.cli import main
from tf_ship.cli_options import backend_help
from tf_ship.exit_codes import exit_code_table

INTRO = """\
# Command-line reference

Generated from the command itself (`python -m tf_ship.cli_reference > docs/cli.md`).

```
tf-ship [OPTIONS]
python -m tf_ship [OPTIONS]
```

Exit codes of `tf-ship` (`ship`) and `watch` (`tf-ship run` exits with the application's code
instead: see its section):

{table}
The first SIGINT or SIGTERM stops reading, flushes and closes every backend (within
`--shutdown-timeout` seconds in all); a second one stops waiting for the backends (those still busy
fail) and exits 1; a third exits 1 at once. The final summary goes to standard error.
"""


def _options_table(command: click.Command, context: click.Context) -> list[str]:
    lines = ["| option | value | default | meaning |", "| --- | --- | --- | --- |"]
    plugins = {spec.param_name(option) for spec in plugin_specs() for option in spec.options}
    for param in command.get_params(context):
        if not isinstance(param, click.Option) or param.get_help_record(context) is None:
            continue
        if param.name in plugins:
            continue
        flags = ", ".join(f"`{flag}`" for flag in [*param.opts, *param.secondary_opts])
        value = "" if param.is_flag else f"`{_metavar(param, context)}`"
        default = param.get_default(context, call=False)
        unset = default is None or default == () or type(default).__name__ == "Sentinel"
        shown = "" if param.is_flag or unset else f"`{default}`"
        help_text = backend_help(builtin_specs()) if param.name == "backends" else param.help
        meaning = (help_text or "").replace("|", "\\|").replace("\n", " ")
        if param.multiple and "Repeat" not in meaning:
            meaning += " Repeatable."
        lines.append(f"| {flags} | {value} | {shown} | {meaning} |")
    return lines


def render() -> str:
    """The reference as Markdown: the default command, then every other command."""
    root = click.Context(main, info_name="tf-ship")
    lines = [INTRO.format(table=exit_code_table())]
    for name in ["ship", *[n for n in main.list_commands(root) if n != "ship"]]:
        command = main.get_command(root, name)
        assert command is not None  # noqa: S101 - listed commands exist
        context = click.Context(command, info_name=name, parent=root)
        title = (
            "tf-ship [OPTIONS] (the default command, also `tf-ship ship`)"
            if name == "ship"
            else f"tf-ship {name}"
        )
        lines.extend(["", f"## {title}", ""])
        lines.append(inspect_doc(command, name))
        usage = " ".join(command.collect_usage_pieces(context))
        lines.extend(["", f"Usage: `tf-ship {'' if name == 'ship' else name + ' '}{usage}`", ""])
        lines.extend(_options_table(command, context))
    return "\n".join(lines) + "\n"


def inspect_doc(command: click.Command, name: str = "") -> str:
    """The command's docstring, as plain paragraphs (watch's naming the built-ins' options only)."""
    if name == "watch":
        from tf_ship.commands.watch import _watch_help  # noqa: PLC0415 - a lazy command

        return inspect.cleandoc(_watch_help(builtin_specs()))
    return inspect.cleandoc(command.help or "").replace("\b\n", "")


def _metavar(param: click.Parameter, context: click.Context) -> str:
    """The option's metavar; click 8.2 takes the context, click 8.1 takes nothing."""
    try:
        return param.make_metavar(context)
    except TypeError:
        return param.make_metavar()  # type: ignore[call-arg]


if __name__ == "__main__":
    click.echo(render(), nl=False)
