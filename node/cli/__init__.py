"""The ``moonwire`` command: argument parsing, logging set-up and each subcommand.

Owns: the terminal. May import: every other room and the node itself.
"""

from ._cli import main

__all__ = ["main"]
