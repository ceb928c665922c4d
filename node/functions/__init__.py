"""Functions: the code loader and worker pools that run ``function.lua`` entries,
local and remote ``funcs.call``, and the function subjects a node serves.

Owns: function pools and calls. May import: ``project``, ``wire``, ``telemetry``, broker, lua.
"""

from ._functions import QUEUE_GROUP, CodeLoader, Functions, call_function, millis_or_duration

__all__ = ["QUEUE_GROUP", "CodeLoader", "Functions", "call_function", "millis_or_duration"]
