"""The Lua side of moonwire: sandboxed Lua states, the Lua-facing modules and the
yield protocol between Lua coroutines and the Python scheduler.

This package knows nothing about NATS (that is ``broker``) nor about the node's
scheduler (that is ``node``); ``node`` drives it.
"""

from ._duration import (
    HOUR,
    MICROSECOND,
    MILLISECOND,
    MINUTE,
    NANOSECOND,
    SECOND,
    format_duration,
    parse_duration,
)

__all__ = [
    "HOUR",
    "MICROSECOND",
    "MILLISECOND",
    "MINUTE",
    "NANOSECOND",
    "SECOND",
    "format_duration",
    "parse_duration",
]
