"""One module per `python -m bench` subcommand (module name = command name with '-' for '_')."""
