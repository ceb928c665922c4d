"""The one reply shape, and the one place a request's failure becomes an error value.

Every request a node answers (a function call, a control-plane verb, a survey, a
workflow status) is answered with::

    {"result": <value>}
    {"error": {"kind": "...", "message": "...", "retryable": bool, "details": {...}}}

as msgpack when the request was msgpack and as JSON otherwise (``docs/wire.md``). An
error nested in ``details`` or in a result stays the error extension in msgpack (the
fields map in JSON). :func:`encode_reply` builds it and :func:`reply_outcome` reads it.

A request that gets no reply ends in an error value made by :func:`unanswered`, from
what happened instead (:class:`Unanswered`): nobody subscribes to the subject, nobody
answered in time, or this node is stopping. Each caller says, through a
:data:`Describe` function, what that means for what it asked (a function call: NotFound
or Timeout; a control request: the target's node is down).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError, TimeoutError as NatsTimeout

from moonwire.broker import (CALLER, CONTENT_TYPE, MSGPACK, MSGPACK_HEADERS, TAKEN, Headers, NodeDown, NoResponders,
                             RequestTimeout)
from moonwire.lua import Kind, MoonwireError, Outcome, internal, invalid

from ._events import node_down
from ._payload import JSON_HEADERS, error_map, pack, to_json, unpack


class Why(Enum):
    NO_RESPONDERS = "nobody serves it"
    TIMEOUT = "no answer in time"
    STOPPING = "this node is stopping"
    CLOSED = "the connection to NATS is closed"
    NODE_DOWN = "the node that took it went down"


@dataclass(frozen=True, slots=True)
class Unanswered:
    """Why a request got no reply, and how long it waited."""

    why: Why
    wait: float

    def __str__(self) -> str:
        return f"no answer within {self.wait:.0f}s" if self.why is Why.TIMEOUT else self.why.value


Describe = Callable[[Unanswered], MoonwireError]
"""The error a caller gives its request's :class:`Unanswered`."""


def encode_reply(outcome: Outcome, content_type: str | None = MSGPACK,
                 max_bytes: int = 0) -> tuple[bytes, Headers]:
    """The reply to a request that came with ``content_type``: msgpack for msgpack,
    JSON for anything else. A result the wire cannot hold (nor, with its headers, one
    NATS message of ``max_bytes``, the server's max_payload; 0: no limit) becomes an
    Internal error that says why, so the asker still hears."""
    as_msgpack = content_type == MSGPACK
    headers = MSGPACK_HEADERS if as_msgpack else JSON_HEADERS
    try:
        body = _encode(outcome, as_msgpack)
    except (TypeError, ValueError, OverflowError) as err:
        body = _encode(Outcome(error=internal(f"cannot encode the answer: {type(err).__name__}: {err}")), as_msgpack)
    if max_bytes and len(body) + len(headers.block) > max_bytes:
        body = _encode(Outcome(error=internal(f"the answer is {len(body)} bytes, more than the NATS server takes "
                                              f"in one message ({max_bytes} with its headers)")), as_msgpack)
    return body, headers


def _encode(outcome: Outcome, as_msgpack: bool) -> bytes:
    if outcome.error is None:
        return pack({"result": outcome.value}) if as_msgpack else to_json({"result": outcome.value})
    # The error's fields as a map at the top (to_json writes an error as its fields);
    # errors nested in its details stay the extension in msgpack.
    return pack({"error": error_map(outcome.error)}) if as_msgpack else to_json({"error": outcome.error})


DeadLetter = Callable[[str, bytes, "dict[str, str] | None", str], None]
"""Republishes a message (subject, body, headers) with a reason to the dead-letter queue."""
DLQ_REASON = "Mw-Dlq-Reason"
DLQ_SUBJECT = "Mw-Dlq-Subject"
"""The headers a dead letter gets beside its own: why, and the subject it came on."""


def answer(msg: Msg, outcome: Outcome, publish: Callable[..., None], dead_letter: DeadLetter,
           max_bytes: int = 0) -> None:
    """The one exit of a served request: ``outcome`` to its reply subject, in the
    request's own encoding (``publish(subject, body, headers=...)``, an outbox's; an answer
    over ``max_bytes``, the server's max_payload, becomes an error saying so); with no
    reply subject, an error goes to the dead-letter queue and a success to no one."""
    if not msg.reply:
        if outcome.error is not None:
            dead_letter(msg.subject, msg.data, msg.headers, outcome.error.message)
        return
    body, headers = encode_reply(outcome, (msg.headers or {}).get(CONTENT_TYPE), max_bytes)
    publish(msg.reply, body, headers=headers)


def reply_outcome(reply: Msg | BaseException, describe: Describe, wait: float) -> Outcome:
    """The outcome a reply carries, or (an exception instead of a reply) the error
    ``describe`` gives what happened."""
    if isinstance(reply, BaseException):
        return Outcome(error=unanswered(reply, describe, wait))
    try:
        data = unpack(reply.data, (reply.headers or {}).get(CONTENT_TYPE))
    except MoonwireError as err:
        return Outcome(error=err)
    return _outcome_of(data)


def _outcome_of(data: Any) -> Outcome:
    """The outcome of a decoded reply body."""
    if isinstance(data, dict) and "result" in data:
        return Outcome(value=data["result"])
    if isinstance(data, dict) and "error" in data:
        error = data["error"]
        if isinstance(error, str):  # a responder outside moonwire that says only what went wrong
            error = MoonwireError(error, Kind.UNKNOWN)
        elif isinstance(error, dict):
            if not (isinstance(error.get("message"), str) and isinstance(error.get("kind", ""), str)):
                return Outcome(error=invalid("malformed reply: its error needs a string message and kind"))
            error = MoonwireError.from_dict(error)
        if not isinstance(error, MoonwireError):
            return Outcome(error=invalid("malformed reply: its error is not an error value"))
        return Outcome(error=error)
    return Outcome(error=invalid("malformed reply: expected a map with 'result' or 'error'"))


def why_unanswered(happened: BaseException) -> Why:
    """What a request's exception instead of a reply means: the one place a NATS
    failure (no responders, a timeout, a closed connection) is classified."""
    if isinstance(happened, (NoResponders, NoRespondersError)):
        return Why.NO_RESPONDERS
    if isinstance(happened, (RequestTimeout, NatsTimeout, TimeoutError)):
        return Why.TIMEOUT
    if isinstance(happened, ConnectionClosedError):
        return Why.CLOSED
    if isinstance(happened, NodeDown):
        return Why.NODE_DOWN
    return Why.STOPPING


def unanswered(happened: BaseException, describe: Describe, wait: float) -> MoonwireError:
    """The error for a request that got ``happened`` instead of a reply: the node-down
    error when the node holding it went down (the same whatever was asked), else what
    ``describe`` makes of it."""
    if isinstance(happened, NodeDown):
        return node_down(happened.node, happened.reason)
    return describe(Unanswered(why_unanswered(happened), wait))


def taken_headers(node: str, incarnation: str) -> Headers:
    """The headers of this node's notices that it took a request (:func:`tell_taken`)."""
    return Headers({TAKEN: f"{node}.{incarnation}"})


def tell_taken(msg: Msg, publish: Callable[..., None], headers: Headers) -> None:
    """Tell a node that asked (its request names it, ``Mw-Caller``) that this node took
    its request and will answer later: the notice the asker needs to fail the request
    with a node-down error if this node dies first. A client outside moonwire is not
    told (its first message on the reply subject must be the reply)."""
    if msg.reply and msg.headers and CALLER in msg.headers:
        publish(msg.reply, b"", headers=headers)


async def ask(nats: NatsClient, subject: str, body: Any, describe: Describe, timeout: float) -> Outcome:
    """One request from a plain connection (the CLI): ``body`` as msgpack, the outcome
    its reply carries."""
    try:
        reply: Msg | BaseException = await nats.request(subject, pack(body), timeout=timeout,
                                                        headers=MSGPACK_HEADERS)
    except (NoRespondersError, NatsTimeout, ConnectionClosedError) as err:
        reply = err
    return reply_outcome(reply, describe, timeout)
