"""Processes: the process table (PIDs, names, monitors, links, exits), the hosts that
run them, the supervisor of services, the inbox subscription, and the routes to PIDs
that live elsewhere (``_targets.py``: other nodes through ``_remote.py``, workflows
through the workflows room) with the control plane that serves other nodes
(``_control.py``).

Owns: every local process and the routes to processes elsewhere.
May import: ``project``, ``wire``, ``functions``, ``cluster``, ``telemetry``, broker, lua.
"""

from typing import TYPE_CHECKING

from moonwire._lazy import lazy_exports

if TYPE_CHECKING:
    from ._control import ControlPlane
    from ._hosts import ProcessHost
    from ._inboxes import DEFAULT_MAX_BODY, READ_TURN, DeadLetters, ClusterDelivery, NodeInboxes, Undeliverable, decode, encode
    from ._remote import RemoteNodes, Survey, spawn_from_outside, survey
    from ._supervisor import Supervisor
    from ._records import TERMINAL_HOST
    from ._table import ProcessTable
    from ._targets import NO_WORKFLOWS, UNREACHABLE, Fire, RemoteTarget, Target, WorkflowTarget

# Lazy (moonwire._lazy): ``moonwire send``, ``spawn`` and ``ps`` need the wire side
# (encode, survey, spawn_from_outside), not the hosts' Lua runtime.
__all__, __getattr__ = lazy_exports(__name__, {
    "_control": "ControlPlane", "_hosts": "ProcessHost",
    "_inboxes": "DEFAULT_MAX_BODY READ_TURN DeadLetters ClusterDelivery NodeInboxes Undeliverable decode encode",
    "_remote": "RemoteNodes Survey spawn_from_outside survey", "_supervisor": "Supervisor",
    "_records": "TERMINAL_HOST", "_table": "ProcessTable",
    "_targets": "NO_WORKFLOWS UNREACHABLE Fire RemoteTarget Target WorkflowTarget",
})
