"""The trace context of a unit: a W3C ``traceparent`` that a chain of calls, sends and
spawns carries from unit to unit and node to node, so that one trace id follows the
chain through every node's logs (docs/operations.md, *Tracing*).

A unit holds it as the ``traceparent`` text itself (``00-<trace id>-<parent id>-<flags>``,
55 characters), forwarded unchanged: moonwire records no spans of its own, and the W3C
rules let a participant that does not record pass the header on as it came. With a
:class:`SpanHook` installed (OpenTelemetry, ``moonwire[otel]``: ``node/cli/_otel.py``),
each function call is a span of its own in between (docs/operations.md).

A unit begins a trace only when it needs one and has none: when it logs, calls, sends
or spawns. One that does none of these costs nothing; one that does makes the id once
(about half a microsecond) and passes a reference after that.
"""

from __future__ import annotations

import random
import re
from typing import Any, Protocol

TRACEPARENT = "traceparent"
"""The header (W3C Trace Context; what OpenTelemetry's propagators read on NATS too)."""

MAX_TRACEPARENT = 512
"""A longer value is refused before it is looked at (W3C: a later version may add fields
after the 55 characters of version 00, never many)."""

_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_LATER = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


def new_traceparent() -> str:
    """A new trace: a random trace id and parent id, sampled. Not from a workflow's
    seeded random (that would change what a replayed workflow draws)."""
    bits = random.getrandbits(192)
    return f"00-{bits >> 64:032x}-{(bits & 0xFFFFFFFFFFFFFFFF) | 1:016x}-01"


_CHECKED: dict[str, None] = {}
"""Version-00 values found valid lately: a chain's calls and messages repeat one value,
so most checks are a look-up (cleared when full)."""
_CHECKED_MAX = 1024


def parse_traceparent(value: Any) -> str | None:
    """``value`` as a version-00 ``traceparent``, or None when it is not a valid one
    (any type, any length: it may come from any client). A later version is read by
    its first four fields, as W3C asks, and passed on as version 00."""
    if not isinstance(value, str) or len(value) > MAX_TRACEPARENT:
        return None
    if value in _CHECKED:
        return value
    if len(value) == 55 and _VERSION_00.fullmatch(value) is not None:
        trace, parent, version_00 = value[3:35], value[36:52], value
    else:
        later = _LATER.fullmatch(value)
        if later is None or later.group(1) in ("00", "ff"):  # 00 has exactly 55 characters
            return None
        trace, parent = later.group(2), later.group(3)
        version_00 = f"00-{trace}-{parent}-{later.group(4)}"
    if trace == _ZERO_TRACE or parent == _ZERO_PARENT:
        return None
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[version_00] = None
    return version_00


def trace_id(traceparent: str) -> str:
    """The 32 hex digits of the trace id of a valid ``traceparent``."""
    return traceparent[3:35]


def run_trace(run_id: str) -> str | None:
    """The trace of a workflow run: its run id (a UUID) as the trace id, so that every
    replay of the run logs the same one and it reads beside Temporal's own tooling."""
    digits = run_id.replace("-", "").lower()
    return parse_traceparent(f"00-{digits}-{digits[:16]}-01")


class SpanHook(Protocol):
    """A span per function call (an OpenTelemetry integration). ``begin`` is given the
    entry and the call's ``traceparent`` (None: it came with none) and returns the span
    and the ``traceparent`` the call carries on (the span's own: its callees are its
    children); ``end`` is given the span and the call's error (None: it returned)."""

    def begin(self, name: str, traceparent: str | None) -> tuple[Any, str]: ...

    def end(self, span: Any, error: Any) -> None: ...


class _Spans:
    hook: SpanHook | None = None


SPANS = _Spans()
"""The installed span hook, read by every function call (None: no spans, the default)."""


def set_span_hook(hook: SpanHook | None) -> None:
    """Install ``hook`` for every function call from now on (None: remove it)."""
    SPANS.hook = hook
