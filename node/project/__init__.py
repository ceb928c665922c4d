"""The project and the node's configuration: YAML with line numbers, entry models,
``_index.yaml`` loading and ``moonwire.yaml``.

Owns: what a project *is* (entries, problems) and how a node is configured.
May import: ``moonwire.broker`` and ``moonwire.lua`` (for tokens and durations); no other room.
"""

from ._commands import Command, commands
from ._config import CONFIG_FILE, ConfigError, NodeConfig, ResolvedConfig, load_config
from ._entries import (
    Entry,
    FunctionEntry,
    HostSettings,
    InertEntry,
    KNOWN_KINDS,
    LUA_KINDS,
    LibraryEntry,
    Lifecycle,
    LuaEntry,
    ProcessEntry,
    ProcessHostEntry,
    ProcessServiceEntry,
    RestartPolicy,
    TemporalClientEntry,
    TemporalWorkerEntry,
    WorkflowEntry,
)
from ._project import Problem, Project, ProjectInvalid, is_entry_id, load_project
from ._env import ENV_KINDS  # registers the env.* kinds in KNOWN_KINDS
from ._registry import ProjectEntries
from ._watch import Snapshot, snapshot

__all__ = ["CONFIG_FILE", "Command", "ConfigError", "ENV_KINDS", "Entry", "FunctionEntry", "HostSettings", "InertEntry", "KNOWN_KINDS", "LUA_KINDS", "LibraryEntry", "Lifecycle", "LuaEntry", "NodeConfig", "Problem", "ProcessEntry", "ProcessHostEntry", "ProcessServiceEntry", "Project", "ProjectEntries", "ProjectInvalid", "ResolvedConfig", "RestartPolicy", "Snapshot", "TemporalClientEntry", "TemporalWorkerEntry", "WorkflowEntry", "commands", "is_entry_id", "load_config", "load_project", "snapshot"]
