"""The wire: subjects, connections, PIDs, the envelope of process messages and node
membership, and the asyncio plumbing under them (owned tasks). This package knows
nothing about Lua or the scheduler.

:class:`Client` is nats-py's client with fast paths that hook nats-py's private parts
(``_client.py``, ``_parser.py``). Those parts are checked once, on import
(``_nats_internals.py``); when any is missing or changed, the fast paths are off, with
one warning naming what is missing. :data:`FAST_PATH` says whether they are on.

Environment:
    MOONWIRE_FAST_PATHS: ``0`` (or ``false``, ``no``, ``off``) turns every fast path
        off, so that only nats-py's public paths are used: ``publish``, subscriptions
        with a callback task, nats-py's own parser. Semantics stay the same, only
        slower; CI runs the tests once with and once without. Read on import.
"""

from ._client import FAST_PATH, Client, Headers
from ._envelope import (BATCH_HEADER, CONTENT_TYPE, FROM_HEADER, MSGPACK, MSGPACK_HEADERS, REPLIES_HEADER, TOPIC_HEADER,
                        TRACE_HEADER, Envelope, batch_items)
from ._connection import BrokerUnavailable, ConnectOptions, connect, tls_context
from ._membership import Membership, Peer
from ._pid import Pid, PidAllocator
from ._outbox import Outbox
from ._requests import CALLER, TAKEN, NodeDown, NoResponders, ReplyCallback, Requests, RequestTimeout
from ._streams import ACK_EVERY, AFTER_HEADER, SEQ_HEADER, StreamStatistics, Streams
from ._subjects import MAX_NAME, Subjects, is_token, name_problem, to_token
from ._tally import Tally, reason_key
from ._tasks import TaskSet, drain_when_ready

__all__ = [
    "MAX_NAME",
    "name_problem",
    "TaskSet",
    "drain_when_ready",
    "ACK_EVERY",
    "AFTER_HEADER",
    "BATCH_HEADER",
    "CONTENT_TYPE",
    "Client",
    "FAST_PATH",
    "Headers",
    "MSGPACK_HEADERS",
    "REPLIES_HEADER",
    "Envelope",
    "FROM_HEADER",
    "MSGPACK",
    "TOPIC_HEADER",
    "TRACE_HEADER",
    "batch_items",
    "BrokerUnavailable",
    "ConnectOptions",
    "Membership",
    "NodeDown",
    "CALLER",
    "TAKEN",
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
