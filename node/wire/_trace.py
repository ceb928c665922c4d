"""Where a request or message carries its trace context on the wire (docs/wire.md).

Inside the cluster: the ``trace`` field of a function call or spawn body, and the
``traceparent`` header (or the fourth field of a batch item) of a process message. From
outside: a W3C ``traceparent`` header, as OpenTelemetry's NATS propagators write it.
Whatever arrives is checked (:func:`moonwire.lua.parse_traceparent`); a value that is
not a valid ``traceparent`` is ignored, never refused: it must not cost a message its
delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moonwire.broker import TRACE_HEADER
from moonwire.lua import parse_traceparent


def request_trace(body: Any, headers: Mapping[str, str] | None) -> str | None:
    """The trace a request came with: the body's ``trace`` field (a map from moonwire's
    own nodes), else the ``traceparent`` header (any client); None when neither holds a
    valid one."""
    if isinstance(body, dict) and (trace := parse_traceparent(body.get("trace"))) is not None:
        return trace
    return parse_traceparent(headers.get(TRACE_HEADER)) if headers else None
