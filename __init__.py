"""moonwire: Lua functions, actor processes and durable workflows on a fleet of Python
nodes, wired by NATS and Temporal.

Installed, the repository's ``broker/``, ``node/`` and ``lua/`` folders are the
subpackages ``moonwire.broker`` (the wire: NATS, no Lua), ``moonwire.lua`` (the Lua
side) and ``moonwire.node`` (the runtime, which uses both). This module names what a
Python program embedding a node may touch; each name is imported on first use, so
``import moonwire.broker`` does not load the runtime.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING

# Absolute: pytest imports this file as the rootdir's package, where a relative import fails.
from moonwire._lazy import lazy_exports

if TYPE_CHECKING:
    from .broker import Pid
    from .lua import Kind, MoonwireError, Outcome
    from .node import Node, NodeConfig, Project, ResolvedConfig, load_config, load_project

__version__ = metadata.version("moonwire")

_NAMES, __getattr__ = lazy_exports(__name__, {
    "node": "Node NodeConfig ResolvedConfig Project load_config load_project",
    "broker": "Pid",
    "lua": "Kind MoonwireError Outcome",
})

__all__ = [*_NAMES, "__version__"]
