"""The moonwire runtime: project loading, node configuration, embedded servers, the
node lifecycle and the CLI. Uses ``broker`` for the wire and ``lua`` for Lua.

Each public name is imported on first use (``__getattr__`` below), so that a light
``moonwire`` command (``--version``, ``call``, ``ps``) imports the CLI without the node,
the workflow code and ``temporalio``: about 0.6 s of CPU per command before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._node import Node, NodeFailed
    from .project import (KNOWN_KINDS, ConfigError, Entry, FunctionEntry, InertEntry, LibraryEntry, Lifecycle, LuaEntry,
                          NodeConfig, Problem, ProcessEntry, ProcessHostEntry, ProcessServiceEntry, Project, ProjectInvalid,
                          ResolvedConfig, RestartPolicy, TemporalClientEntry, TemporalWorkerEntry, WorkflowEntry,
                          load_config, load_project)
    from .servers import (EmbeddedServerError, EmbeddedServers, ServerProcess, find_binary, free_port, read_registry,
                          recorded_nats_url, start_nats, start_temporal)
    from .workflows import workflow_replayer

_PROJECT = ("KNOWN_KINDS ConfigError Entry FunctionEntry InertEntry LibraryEntry Lifecycle LuaEntry NodeConfig Problem "
            "ProcessEntry ProcessHostEntry ProcessServiceEntry Project ProjectInvalid ResolvedConfig RestartPolicy "
            "TemporalClientEntry TemporalWorkerEntry WorkflowEntry load_config load_project")
_SERVERS = ("EmbeddedServerError EmbeddedServers ServerProcess find_binary free_port read_registry recorded_nats_url "
            "start_nats start_temporal")
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(_PROJECT.split(), "project"),
    **dict.fromkeys(_SERVERS.split(), "servers"),
    "Node": "_node", "NodeFailed": "_node",
    "workflow_replayer": "workflows",
}
"""Each public name and the submodule that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
