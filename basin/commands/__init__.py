"""One module per ``basin`` subcommand. Each has ``register(subparsers)``, which adds its parser,
and a ``run(args)`` that validates every input before it writes anything."""
