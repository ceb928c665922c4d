"""The wire: subjects, connections, PIDs, and (as they arrive) the envelope codec and
node membership. This package knows nothing about Lua or the scheduler."""

from ._connection import BrokerUnavailable, ConnectOptions, connect, tls_context
from ._membership import Membership, Peer
from ._pid import Pid, PidAllocator
from ._requests import NoResponders, Outbox, ReplyCallback, Requests, RequestTimeout
from ._subjects import Subjects, is_token, to_token

__all__ = [
    "BrokerUnavailable",
    "ConnectOptions",
    "Membership",
    "NoResponders",
    "Peer",
    "Pid",
    "PidAllocator",
    "Outbox",
    "ReplyCallback",
    "RequestTimeout",
    "Requests",
    "Subjects",
    "connect",
    "is_token",
    "tls_context",
    "to_token",
]
