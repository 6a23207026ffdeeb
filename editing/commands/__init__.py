"""One module per `melodia` subcommand; each has `add_parser(subparsers)` and a `run(args)`."""
