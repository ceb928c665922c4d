"""The envelope of a process message between nodes (DESIGN §3), alone or in a batch.

A message alone is published to the receiver's inbox subject as::

    Content-Type: application/msgpack     body: msgpack list of payloads
    Mw-Topic: <topic>
    Mw-From: <sender PID>                 (absent when there is no sender)
    traceparent: <W3C trace context>      (absent when the sender has no trace)

When the outbox holds several messages in a row for the same inbox, they leave as one
NATS message (a *batch*; nothing waits to form one, so a batch never adds latency)::

    Content-Type: application/msgpack     body: msgpack array of bin items
    Mw-Batch: <number of items>

where each item is the msgpack array ``[topic, sender, [payloads...]]``. An item is a
separate bin so that the receiver can size it and dead-letter it alone. When every item
has the same trace (one sender's burst, the usual batch) the batch carries it once, in
a ``traceparent`` header; otherwise each item that has one carries it as a fourth
element (``[topic, sender, [payloads...], traceparent]``), which wins over the header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from ._client import Headers

CONTENT_TYPE = "Content-Type"
MSGPACK = "application/msgpack"
TOPIC_HEADER = "Mw-Topic"
FROM_HEADER = "Mw-From"
BATCH_HEADER = "Mw-Batch"
TRACE_HEADER = "traceparent"
"""W3C Trace Context, the header OpenTelemetry's propagators use (the receiver checks it)."""

REPLIES_HEADER = "Mw-Replies"
"""Header of a request from a caller that reads batched replies (value ``batch``): the
msgpack replies a node queues in one turn for the same caller leave as one NATS message
to ``<the caller's reply prefix>.0``, ``Mw-Batch: <n>``, the body a msgpack array of
``[token, body]`` items (:func:`reply_batch`)."""

MSGPACK_HEADERS = Headers({CONTENT_TYPE: MSGPACK})
"""The headers of every msgpack body that needs no others (requests, replies)."""

HEADER_BLOCKS = 1024
"""Distinct header blocks of process messages kept encoded (the cache starts over when full)."""

BATCH_BYTES = 64 * 1024
"""A batch stops growing at this many body bytes (past it, the per-message costs it
saves are negligible beside the bytes themselves)."""


@dataclass(slots=True)
class Envelope:
    """One process message on its way to another node; ``payloads`` is the msgpack
    encoding of its list of payloads; ``trace`` its ``traceparent`` ("": none). Never
    changed once made; not frozen, because a frozen dataclass sets each field through
    ``object.__setattr__`` (20 ns a field, for every remote send)."""

    topic: str
    sender: str
    payloads: bytes
    trace: str = ""

    def alone(self) -> tuple[bytes, dict[str, str]]:
        """The body and headers of this message published by itself."""
        key = (self.topic, self.sender, self.trace)
        headers = _blocks.get(key)
        if headers is None:
            headers = {CONTENT_TYPE: MSGPACK, TOPIC_HEADER: self.topic}
            if self.sender:
                headers[FROM_HEADER] = self.sender
            if self.trace:
                headers[TRACE_HEADER] = self.trace
            headers = _encoded(key, headers)
        return self.payloads, headers

    def size(self) -> int:
        """About its size in a batch (the strings' lengths in characters)."""
        return len(self.payloads) + len(self.topic) + len(self.sender) + len(self.trace) + 8

    def item(self, trace: bool = True) -> bytes:
        """This message as an item of a batch (with its trace unless ``trace`` is false:
        the batch carries it)."""
        head = _heads.get((self.topic, self.sender))
        if head is None:
            head = msgpack.packb(self.topic) + msgpack.packb(self.sender)
            if len(_heads) >= HEADER_BLOCKS:
                _heads.clear()
            _heads[(self.topic, self.sender)] = head
        if trace and self.trace:
            return b"\x94" + head + self.payloads + msgpack.packb(self.trace)
        return b"\x93" + head + self.payloads


def batch(envelopes: list[Envelope]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one NATS message carrying ``envelopes`` in order."""
    trace = envelopes[0].trace
    for envelope in envelopes:
        if envelope.trace != trace:  # several senders: each item its own
            return (msgpack.packb([e.item() for e in envelopes], use_bin_type=True),
                    _batch_headers(len(envelopes), ""))
    return msgpack.packb([e.item(False) for e in envelopes], use_bin_type=True), _batch_headers(len(envelopes), trace)


def reply_batch(replies: list[tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one NATS message carrying msgpack ``replies`` ((token,
    body) each, in order) to one caller."""
    return msgpack.packb([list(reply) for reply in replies], use_bin_type=True), _batch_headers(len(replies), "")


def reply_items(body: bytes) -> list[tuple[str, bytes]]:
    """The (token, body) items of a batch of replies.

    Raises:
        ValueError: the body is not a msgpack array of [str, bin] items, naming why.
    """
    items = batch_items(body, bin_items=False)
    if not all(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], bytes)
               for item in items):
        raise ValueError("a batch of replies must be a msgpack array of [token, body] items")
    return [(item[0], item[1]) for item in items]


def _batch_headers(count: int, trace: str) -> dict[str, str]:
    key = (count, trace)
    headers = _blocks.get(key)
    if headers is None:
        headers = {CONTENT_TYPE: MSGPACK, BATCH_HEADER: str(count)}
        if trace:
            headers[TRACE_HEADER] = trace
        headers = _encoded(key, headers)
    return headers


_heads: dict[tuple[str, str], bytes] = {}
"""The encoded topic and sender of batch items (a burst repeats them)."""

_blocks: dict[object, dict[str, str]] = {}
"""Header blocks of process messages by what they say: a sender's burst repeats one."""


def _encoded(key: object, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` encoded once (:class:`Headers`) and kept under ``key``; as they are
    when they cannot be (a line break in a topic: nats-py's publish replaces it)."""
    try:
        encoded: dict[str, str] = Headers(headers)
    except ValueError:
        return headers
    if len(_blocks) >= HEADER_BLOCKS:
        _blocks.clear()
    _blocks[key] = encoded
    return encoded


def batch_items(body: bytes, bin_items: bool = True) -> list[Any]:
    """The items of a batch body, each still encoded (``bin_items`` False: decoded, unchecked).

    Raises:
        ValueError: the body is not a msgpack array of bin items, naming why.
    """
    try:
        items = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException, TypeError) as err:
        raise ValueError(f"malformed batch body: {err}") from None
    if not isinstance(items, list):
        raise ValueError("a batch body must be a msgpack array")
    if bin_items and not all(isinstance(item, bytes) for item in items):
        raise ValueError("a batch body must be a msgpack array of bin items")
    return items
