"""One module per `gvsl` sub-command: each exposes add_parser(subparsers)."""
