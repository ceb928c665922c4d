"""The wire formats a node speaks, in one room: the msgpack/JSON payload codec with its
decoding limits, the one reply shape (``{"result"}`` / ``{"error"}``, ``docs/wire.md``)
and how a request's failure becomes an error value, and the events and spawn requests
nodes send each other.

Owns: how values, errors, replies and events are encoded.
May import: ``moonwire.broker``, ``moonwire.lua``; no other room.
"""

from ._events import (EVENT_HEADER, decode_event, decode_outside_spawn, REGISTRY_SCOPES, decode_spawn, encode_event, encode_spawn, node_down,
                      noproc)
from ._payload import CONTENT_TYPE, JSON, JSON_HEADERS, MSGPACK, pack, to_json, unpack
from ._replies import (DLQ_REASON, DLQ_SUBJECT, DeadLetter, Describe, Unanswered, Why, answer, ask, encode_reply,
                       reply_outcome, taken_headers, tell_taken, unanswered, why_unanswered)
from ._trace import request_trace

__all__ = ["CONTENT_TYPE", "DLQ_REASON", "DLQ_SUBJECT", "REGISTRY_SCOPES", "DeadLetter", "Describe", "EVENT_HEADER", "JSON", "JSON_HEADERS", "MSGPACK", "Unanswered", "Why", "answer", "ask",
           "decode_event", "decode_outside_spawn", "decode_spawn", "encode_event", "encode_reply", "encode_spawn", "node_down", "noproc",
           "pack", "reply_outcome", "request_trace", "taken_headers", "tell_taken", "to_json", "unanswered", "unpack",
           "why_unanswered"]
