"""One module per CLI command: `add_arguments(parser)` and `run(args) -> int`. Thin shells over
the library; heavy imports happen inside `run`."""
