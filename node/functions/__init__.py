"""Functions: the code loader and worker pools that run ``function.lua`` entries,
local and remote ``funcs.call``, and the function subjects a node serves.

Owns: function pools and calls. May import: ``project``, ``wire``, ``telemetry``, broker, lua.
"""

from ._code import CodeLoader, CodePlan
from ._functions import QUEUE_GROUP, Functions, call_function, millis_or_duration
from ._reload import reload_pools

__all__ = ["QUEUE_GROUP", "CodeLoader", "CodePlan", "Functions", "call_function", "millis_or_duration", "reload_pools"]
