"""The Lua side of moonwire: sandboxed Lua states, the Lua-facing modules and the
yield protocol between Lua coroutines and the Python scheduler.

This package knows nothing about NATS (that is ``broker``) nor about entries and nodes
(that is ``node``); ``node`` drives it through :class:`LuaState` and :class:`Unit`.
"""

from ._duration import (
    HOUR,
    MICROSECOND,
    MILLISECOND,
    MINUTE,
    NANOSECOND,
    SECOND,
    format_duration,
    parse_duration,
)
from ._answer import Answer, Outcome, Pending, settled
from ._errors import Kind, MoonwireError, internal, invalid, not_found
from ._mailbox import CANCEL, DEFAULT_MAILBOX_LIMIT, EXIT, LINK_DOWN, OUTDATED, Event, Mailbox, Message
from ._process import SpawnRequest
from ._entries import Entries, RegistryEntry
from ._registry_host import Registry
from ._security_context import Actor, Security
from ._trace import TRACEPARENT, SpanHook, new_traceparent, parse_traceparent, run_trace, set_span_hook, trace_id
from ._state import LUA_VERSION, Limits, LuaCode, LuaState, Replay, syntax_error
from ._unit import TURN, NoServices, Services, Unit
from ._unit_process import NoProcesses, ProcessServices
from ._values import MAX_DEPTH, MAX_VALUES, WIRE_DEPTH, check_portable, json_depth_exceeds, loads_json, to_lua, to_python

__all__ = [
    "TURN",
    "TRACEPARENT",
    "new_traceparent",
    "parse_traceparent",
    "run_trace",
    "SpanHook",
    "set_span_hook",
    "trace_id",
    "CANCEL",
    "DEFAULT_MAILBOX_LIMIT",
    "EXIT",
    "LINK_DOWN",
    "OUTDATED",
    "Event",
    "Mailbox",
    "Message",
    "NoProcesses",
    "ProcessServices",
    "SpawnRequest",
    "Actor",
    "Security",
    "HOUR",
    "LUA_VERSION",
    "MICROSECOND",
    "MILLISECOND",
    "MINUTE",
    "NANOSECOND",
    "SECOND",
    "Kind",
    "Limits",
    "LuaCode",
    "LuaState",
    "MoonwireError",
    "Answer",
    "NoServices",
    "Outcome",
    "Pending",
    "Replay",
    "Entries",
    "Registry",
    "RegistryEntry",
    "Services",
    "Unit",
    "MAX_DEPTH",
    "MAX_VALUES",
    "WIRE_DEPTH",
    "check_portable",
    "json_depth_exceeds",
    "loads_json",
    "format_duration",
    "internal",
    "invalid",
    "not_found",
    "parse_duration",
    "settled",
    "syntax_error",
    "to_lua",
    "to_python",
]
