"""The wire: subjects, connections, and (as they arrive) PIDs, the envelope codec and
node membership. This package knows nothing about Lua or the scheduler."""

from ._connection import BrokerUnavailable, ConnectOptions, connect, tls_context
from ._subjects import Subjects, is_token, to_token

__all__ = [
    "BrokerUnavailable",
    "ConnectOptions",
    "Subjects",
    "connect",
    "is_token",
    "tls_context",
    "to_token",
]
