"""``python -m tf_ship``: the same as the `tf-ship` command."""

from tf_ship.cli import main

main(prog_name="tf-ship")
