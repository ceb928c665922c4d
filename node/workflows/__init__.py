"""Workflows on Temporal: the worker host inside the node, the workflow run (the
deterministic Lua side), the gateway that carries messages to and from workflows.

Owns: Temporal clients and workers. May import: ``project``, ``wire``, ``functions``,
``processes``, broker, lua.
"""

from ._workflows import TemporalUnavailable, Workflows, running_workflows, workflow_replayer, workflow_status

__all__ = ["TemporalUnavailable", "Workflows", "running_workflows", "workflow_replayer", "workflow_status"]
