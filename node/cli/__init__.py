"""The ``moonwire`` command: the command line's grammar (options anywhere on the line),
logging set-up, and each subcommand.

Owns: the terminal. May import: every other room and the node itself.
"""

from ._main import main

__all__ = ["main"]
