"""What the processes of two nodes tell each other besides messages: EXIT and
LINK_DOWN events, spawn requests, and the errors a remote operation fails with."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from moonwire.lua import Event, Kind, MoonwireError, Security, SpawnRequest, check_portable, invalid, parse_traceparent

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
    fields = asdict(request)
    del fields["security"]  # beside the request: a node that does not know it ignores it
    body = {"request": fields, "parent": parent}
    if request.security is not None:
        body["security"] = request.security.to_wire()
    return body


def decode_spawn(data: dict[str, Any]) -> tuple[SpawnRequest, str]:
    """Raises MoonwireError (Invalid) for a body that is not a spawn request."""
    fields = data.get("request")
    parent = data.get("parent", "")
    try:
        if not isinstance(fields, dict) or not isinstance(parent, str):
            raise TypeError("expected {request, parent}")
        request = SpawnRequest(**fields)
        request.security = Security.from_wire(data.get("security"))  # what fields said is not it
        request.trace = parse_traceparent(request.trace)  # from the wire: checked, else none
        request.messages = [(str(topic), list(payloads)) for topic, payloads in request.messages]
        if not (isinstance(request.entry, str) and isinstance(request.host, str) and isinstance(request.args, list)
                and isinstance(request.context, dict) and isinstance(request.options, dict)
                and request.scope in REGISTRY_SCOPES):
            raise TypeError("field of the wrong type")
    except (TypeError, ValueError) as err:
        raise invalid(f"malformed spawn request: {err}") from err
    return request, parent


OUTSIDE_SPAWN_FIELDS = ("entry", "host", "args", "name", "scope", "context", "options")
"""The fields of a spawn request from outside moonwire (``docs/wire.md``)."""
_WILDCARDS = frozenset("*>")
REGISTRY_SCOPES = ("local", "eventual", "consistent", "strong")
_NOT_IN_IDS = _WILDCARDS | frozenset(" \t\r\n")


def decode_outside_spawn(data: dict[str, Any], host: str | None) -> SpawnRequest:
    """The spawn request of a client outside moonwire: ``{"entry": "ns:name", "args"?: [...],
    "name"?: text, "scope"?: "local" | "eventual" | "consistent" | "strong", "host"?:
    "ns:host", "context"?: {...}, "options"?: {...}}``, with no
    parent (so no monitor, link or startup messages). ``host`` is the subject's
    (``<prefix>.spawn.<host>``): the body may repeat it but not name another; on a
    node's control subject (``host`` None) the body must name it.

    Raises:
        MoonwireError: (Invalid) naming the first field that is missing, unknown or of
            the wrong type, or a name that is empty or holds a wildcard.
    """
    unknown = sorted(str(key) for key in data if key not in OUTSIDE_SPAWN_FIELDS)
    if unknown:
        raise invalid(f"malformed spawn request: unknown field(s) {', '.join(map(repr, unknown))} "
                      f"(expected {', '.join(OUTSIDE_SPAWN_FIELDS)})")
    entry, args, name = data.get("entry"), data.get("args", []), data.get("name")
    context, options = data.get("context", {}), data.get("options", {})
    if not (isinstance(entry, str) and _is_entry_id(entry)):
        raise invalid("malformed spawn request: 'entry' must be an entry id \"namespace:name\"")
    body_host = data.get("host", host)
    if not (isinstance(body_host, str) and _is_entry_id(body_host)):
        raise invalid("malformed spawn request: 'host' must be a process host id \"namespace:name\""
                      + ("" if host is not None else " (a node's spawn subject needs it in the body)"))
    if host is not None and body_host != host:
        raise invalid(f"malformed spawn request: 'host' {body_host!r} is not the subject's host {host!r}")
    if not isinstance(args, list):
        raise invalid("malformed spawn request: 'args' must be a list")
    if name is not None and not (isinstance(name, str) and name and _WILDCARDS.isdisjoint(name)):
        raise invalid("malformed spawn request: 'name' must be a non-empty text without wildcards (* >)")
    scope = data.get("scope", "local")
    if scope not in REGISTRY_SCOPES:
        raise invalid(f"malformed spawn request: 'scope' must be one of {', '.join(REGISTRY_SCOPES)}")
    for field, value in (("context", context), ("options", options)):
        if not (isinstance(value, dict) and all(isinstance(key, str) for key in value)):
            raise invalid(f"malformed spawn request: {field!r} must be a map with text keys")
    return SpawnRequest(entry, body_host, args, context=context, name=name, options=options, scope=scope)


def _is_entry_id(text: str) -> bool:
    namespace, colon, name = text.partition(":")
    return bool(namespace and colon and name) and _NOT_IN_IDS.isdisjoint(text)
