"""moonwire: Lua functions, actor processes and durable workflows on a fleet of Python
nodes, wired by NATS and Temporal.

Installed, the repository's ``broker/``, ``node/`` and ``lua/`` folders are the
subpackages ``moonwire.broker`` (the wire: NATS, no Lua), ``moonwire.lua`` (the Lua
side) and ``moonwire.node`` (the runtime, which uses both). This module names what a
Python program embedding a node may touch; each name is imported on first use, so
``import moonwire.broker`` does not load the runtime.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .broker import Pid
    from .lua import Kind, MoonwireError, Outcome
    from .node import Node, NodeConfig, Project, ResolvedConfig, load_config, load_project

__version__ = metadata.version("moonwire")

_EXPORTS = {
    "Node": "node", "NodeConfig": "node", "ResolvedConfig": "node", "Project": "node",
    "load_config": "node", "load_project": "node",
    "Pid": "broker",
    "Kind": "lua", "MoonwireError": "lua", "Outcome": "lua",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    package = _EXPORTS.get(name)
    if package is None:
        raise AttributeError(f"module 'moonwire' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{package}", __name__), name)
    globals()[name] = value
    return value
