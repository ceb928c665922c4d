"""Values on the wire between nodes and from outside: the msgpack/JSON payload
codec with its decoding limits.

Owns: how values and errors are encoded. May import: ``moonwire.broker``, ``moonwire.lua``.
"""

from ._payload import CONTENT_TYPE, JSON, JSON_HEADERS, MSGPACK, pack, pack_reply, to_json, unpack

__all__ = ["CONTENT_TYPE", "JSON", "JSON_HEADERS", "MSGPACK", "pack", "pack_reply", "to_json", "unpack"]
