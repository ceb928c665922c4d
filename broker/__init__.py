"""The wire: subjects, connections, PIDs, the envelope of process messages and node
membership. This package knows nothing about Lua or the scheduler."""

from ._client import FAST_PATH, Client, Headers
from ._envelope import (BATCH_HEADER, CONTENT_TYPE, FROM_HEADER, MSGPACK, MSGPACK_HEADERS, TOPIC_HEADER, Envelope,
                        batch_items)
from ._connection import BrokerUnavailable, ConnectOptions, connect, tls_context
from ._membership import Membership, Peer
from ._pid import Pid, PidAllocator
from ._requests import NoResponders, Outbox, ReplyCallback, Requests, RequestTimeout
from ._streams import ACK_EVERY, SEQ_HEADER, StreamStatistics, Streams
from ._subjects import Subjects, is_token, to_token
from ._tally import Tally, reason_key

__all__ = [
    "ACK_EVERY",
    "BATCH_HEADER",
    "CONTENT_TYPE",
    "Client",
    "FAST_PATH",
    "Headers",
    "MSGPACK_HEADERS",
    "Envelope",
    "FROM_HEADER",
    "MSGPACK",
    "TOPIC_HEADER",
    "batch_items",
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
    "SEQ_HEADER",
    "StreamStatistics",
    "Streams",
    "Subjects",
    "Tally",
    "connect",
    "is_token",
    "reason_key",
    "tls_context",
    "to_token",
]
