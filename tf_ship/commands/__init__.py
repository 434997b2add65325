"""Further tf-ship commands, each imported only when used (see `tf_ship.cli.COMMANDS`)."""
