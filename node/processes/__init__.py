"""Processes: the process table (PIDs, names, monitors, links, exits), the hosts that
run them, the supervisor of services, the inbox subscription, and the routes to PIDs
that live elsewhere (``_targets.py``: other nodes through ``_remote.py``, workflows
through the workflows room) with the control plane that serves other nodes
(``_control.py``).

Owns: every local process and the routes to processes elsewhere.
May import: ``project``, ``wire``, ``functions``, ``cluster``, ``telemetry``, broker, lua.
"""

from ._control import ControlPlane
from ._hosts import ProcessHost
from ._inboxes import DEFAULT_MAX_BODY, READ_TURN, DeadLetters, ClusterDelivery, NodeInboxes, Undeliverable, decode, encode
from ._remote import RemoteNodes, Survey, spawn_from_outside, survey
from ._supervisor import Supervisor
from ._records import TERMINAL_HOST
from ._table import ProcessTable
from ._targets import NO_WORKFLOWS, UNREACHABLE, Fire, RemoteTarget, Target, WorkflowTarget

__all__ = ["DEFAULT_MAX_BODY", "NO_WORKFLOWS", "READ_TURN", "TERMINAL_HOST", "UNREACHABLE", "ControlPlane",
           "DeadLetters", "Fire", "ClusterDelivery", "NodeInboxes", "ProcessHost", "ProcessTable", "RemoteNodes", "RemoteTarget",
           "Supervisor", "Survey", "Target", "Undeliverable", "WorkflowTarget", "decode", "encode",
           "spawn_from_outside", "survey"]
