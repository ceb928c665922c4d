"""The Lua side of moonwire: sandboxed Lua states, the Lua-facing modules and the
yield protocol between Lua coroutines and the Python scheduler.

This package knows nothing about NATS (that is ``broker``) nor about entries and nodes
(that is ``node``); ``node`` drives it through :class:`LuaState` and :class:`Unit`.

Each public name is imported on first use (``__getattr__`` below): the Lua runtime
(``_state``: lupa and the host modules, with jsonschema and cryptography, ~0.1 s of
CPU) loads only when a program uses it, not when ``moonwire call`` needs an error kind
or a duration.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._duration import HOUR, MICROSECOND, MILLISECOND, MINUTE, NANOSECOND, SECOND, format_duration, parse_duration
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

_MODULES = {
    "_duration": "HOUR MICROSECOND MILLISECOND MINUTE NANOSECOND SECOND format_duration parse_duration",
    "_answer": "Answer Outcome Pending settled",
    "_errors": "Kind MoonwireError internal invalid not_found",
    "_mailbox": "CANCEL DEFAULT_MAILBOX_LIMIT EXIT LINK_DOWN OUTDATED Event Mailbox Message",
    "_process": "SpawnRequest",
    "_entries": "Entries RegistryEntry",
    "_registry_host": "Registry",
    "_security_context": "Actor Security",
    "_trace": "TRACEPARENT SpanHook new_traceparent parse_traceparent run_trace set_span_hook trace_id",
    "_state": "LUA_VERSION Limits LuaCode LuaState Replay syntax_error",
    "_unit": "TURN NoServices Services Unit",
    "_unit_process": "NoProcesses ProcessServices",
    "_values": "MAX_DEPTH MAX_VALUES WIRE_DEPTH check_portable json_depth_exceeds loads_json to_lua to_python",
}
"""Each submodule and the public names it defines."""
_OWNER = {name: module for module, names in _MODULES.items() for name in names.split()}

__all__ = sorted(_OWNER)


def __getattr__(name: str) -> Any:
    # moonwire._lazy's, written out: lua imports nothing outside itself (tests/test_layering.py).
    module = _OWNER.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
