"""The moonwire runtime: project loading, node configuration, embedded servers, the
node lifecycle and the CLI. Uses ``broker`` for the wire and ``lua`` for Lua.

Each public name is imported on first use (``moonwire._lazy``), so that a light
``moonwire`` command (``--version``, ``call``, ``ps``) imports the CLI without the node,
the workflow code and ``temporalio``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._node import Node, NodeFailed
    from .project import (KNOWN_KINDS, ConfigError, Entry, FunctionEntry, InertEntry, LibraryEntry, Lifecycle, LuaEntry,
                          NodeConfig, Problem, ProcessEntry, ProcessHostEntry, ProcessServiceEntry, Project, ProjectInvalid,
                          ResolvedConfig, RestartPolicy, TemporalClientEntry, TemporalWorkerEntry, WorkflowEntry,
                          load_config, load_project)
    from .servers import (EmbeddedServerError, EmbeddedServers, ServerProcess, find_binary, free_port, read_registry,
                          recorded_nats_url, start_nats, start_temporal)
    from .workflows import workflow_replayer

__all__, __getattr__ = lazy_exports(__name__, {
    "project": ("KNOWN_KINDS ConfigError Entry FunctionEntry InertEntry LibraryEntry Lifecycle LuaEntry NodeConfig Problem "
                "ProcessEntry ProcessHostEntry ProcessServiceEntry Project ProjectInvalid ResolvedConfig RestartPolicy "
                "TemporalClientEntry TemporalWorkerEntry WorkflowEntry load_config load_project"),
    "servers": ("EmbeddedServerError EmbeddedServers ServerProcess find_binary free_port read_registry recorded_nats_url "
                "start_nats start_temporal"),
    "_node": "Node NodeFailed",
    "workflows": "workflow_replayer",
})
