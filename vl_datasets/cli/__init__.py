"""The ``vl-datasets`` command line: one module per command group, and ``main`` that turns each
error family into its exit code (see ``main.EXIT_CODES``)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
