"""Functions: the code loader and worker pools that run ``function.lua`` entries,
local and remote ``funcs.call``, and the function subjects a node serves.

Owns: function pools and calls. May import: ``project``, ``wire``, ``telemetry``, broker, lua.
"""

from typing import TYPE_CHECKING

from moonwire._lazy import lazy_exports

if TYPE_CHECKING:
    from ._calls import call_function
    from ._code import CodeLoader, CodePlan
    from ._functions import QUEUE_GROUP, Functions
    from ._options import millis_or_duration
    from ._process_functions import CALLER_CANCELED
    from ._reload import reload_pools
    from ._served import ServedCalls, watch_calls

# Lazy (moonwire._lazy): ``moonwire call`` needs call_function, not the pools' Lua runtime.
__all__, __getattr__ = lazy_exports(__name__, {
    "_calls": "call_function", "_code": "CodeLoader CodePlan", "_functions": "QUEUE_GROUP Functions",
    "_options": "millis_or_duration", "_process_functions": "CALLER_CANCELED", "_reload": "reload_pools",
    "_served": "ServedCalls watch_calls",
})
