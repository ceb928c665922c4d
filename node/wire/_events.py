"""What the processes of two nodes tell each other besides messages: EXIT and
LINK_DOWN events, spawn requests, and the errors a remote operation fails with."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from moonwire.lua import Event, Kind, MoonwireError, SpawnRequest, check_portable, invalid

from ._payload import CONTENT_TYPE, MSGPACK, pack, unpack

EVENT_HEADER = "Mw-Event"


def noproc(pid: str) -> MoonwireError:
    return MoonwireError(f"noproc: process {pid} does not exist", Kind.NOT_FOUND, retryable=False,
                         details={"pid": pid})


def node_down(node: str, reason: str) -> MoonwireError:
    return MoonwireError(f"node down: node {node} is unreachable ({reason})", Kind.UNAVAILABLE, retryable=True,
                         details={"node": node})


def encode_event(event: Event) -> tuple[bytes, dict[str, str]]:
    body = {"from": event.sender, "at": event.at}
    if event.reason is not None:
        body["reason"] = event.reason
    elif event.error is not None:
        body["error"] = event.error
    else:
        body["value"] = event.value
    return pack(body), {CONTENT_TYPE: MSGPACK, EVENT_HEADER: event.kind}


def decode_event(kind: str, body: bytes) -> Event:
    """Raises MoonwireError (Invalid) for a body that is not an event."""
    data = unpack(body, MSGPACK)
    if not isinstance(data, dict) or not isinstance(data.get("from"), str):
        raise MoonwireError("malformed event body", Kind.INVALID, retryable=False)
    error, at, reason = data.get("error"), data.get("at"), data.get("reason")
    if error is not None and not isinstance(error, MoonwireError):
        raise MoonwireError("malformed event error", Kind.INVALID, retryable=False)
    if not (at is None or isinstance(at, (int, float)) and not isinstance(at, bool)) or not (
            reason is None or isinstance(reason, str)):
        raise MoonwireError("malformed event: 'at' must be a number and 'reason' a string", Kind.INVALID,
                            retryable=False)
    check_portable(data.get("value"))
    if error is not None:
        check_portable(error)
    return Event(kind, data["from"], float(at or time.time()), data.get("value"), error, reason)


def encode_spawn(request: SpawnRequest, parent: str) -> dict[str, Any]:
    return {"request": asdict(request), "parent": parent}


def decode_spawn(data: dict[str, Any]) -> tuple[SpawnRequest, str]:
    """Raises MoonwireError (Invalid) for a body that is not a spawn request."""
    fields = data.get("request")
    parent = data.get("parent", "")
    try:
        if not isinstance(fields, dict) or not isinstance(parent, str):
            raise TypeError("expected {request, parent}")
        request = SpawnRequest(**fields)
        request.messages = [(str(topic), list(payloads)) for topic, payloads in request.messages]
        if not (isinstance(request.entry, str) and isinstance(request.host, str) and isinstance(request.args, list)
                and isinstance(request.context, dict) and isinstance(request.options, dict)):
            raise TypeError("field of the wrong type")
    except (TypeError, ValueError) as err:
        raise invalid(f"malformed spawn request: {err}") from err
    return request, parent
