"""One module per ``freshrec`` command; each exposes ``register(subparsers)``."""
