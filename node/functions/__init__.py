"""Functions: the code loader and worker pools that run ``function.lua`` entries,
local and remote ``funcs.call``, and the function subjects a node serves.

Owns: function pools and calls. May import: ``project``, ``wire``, ``telemetry``, broker, lua.
"""

from ._code import CodeLoader, CodePlan
from ._functions import QUEUE_GROUP, Functions, call_function
from ._options import millis_or_duration
from ._process_functions import CALLER_CANCELED
from ._reload import reload_pools
from ._served import ServedCalls, watch_calls

__all__ = ["CALLER_CANCELED", "QUEUE_GROUP", "CodeLoader", "CodePlan", "Functions", "ServedCalls", "call_function",
           "millis_or_duration", "reload_pools", "watch_calls"]
