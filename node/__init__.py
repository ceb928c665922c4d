"""The moonwire runtime: project loading, node configuration, embedded servers, the
node lifecycle and the CLI. Uses ``broker`` for the wire and ``lua`` for Lua."""

from .project import ConfigError, NodeConfig, ResolvedConfig, load_config
from .servers import (EmbeddedServerError, EmbeddedServers, ServerProcess, find_binary, free_port, read_registry, recorded_nats_url, start_nats, start_temporal)
from .project import (KNOWN_KINDS, Entry, FunctionEntry, InertEntry, LibraryEntry, Lifecycle, LuaEntry, ProcessEntry, ProcessHostEntry, ProcessServiceEntry, RestartPolicy, TemporalClientEntry, TemporalWorkerEntry, WorkflowEntry)
from ._node import Node, NodeFailed
from .project import Problem, Project, ProjectInvalid, load_project
from .workflows import workflow_replayer

__all__ = [
    "KNOWN_KINDS",
    "ConfigError",
    "EmbeddedServerError",
    "EmbeddedServers",
    "Entry",
    "FunctionEntry",
    "InertEntry",
    "LibraryEntry",
    "Lifecycle",
    "LuaEntry",
    "Node",
    "NodeFailed",
    "NodeConfig",
    "Problem",
    "ProcessEntry",
    "ProcessHostEntry",
    "ProcessServiceEntry",
    "Project",
    "ProjectInvalid",
    "ResolvedConfig",
    "RestartPolicy",
    "ServerProcess",
    "TemporalClientEntry",
    "TemporalWorkerEntry",
    "WorkflowEntry",
    "find_binary",
    "free_port",
    "load_config",
    "load_project",
    "read_registry",
    "recorded_nats_url",
    "start_nats",
    "start_temporal",
    "workflow_replayer",
]
