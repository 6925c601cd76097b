"""The `ollamesh` command line: `up`, the client commands, the demo and the benches.
Apart from the actors: it imports them, they never import it."""

from actors.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
