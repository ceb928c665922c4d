"""Processes: the process table (PIDs, names, monitors, links, exits), the hosts
that run them, the supervisor of services, the inbox subscription and the control
plane between nodes.

Owns: every local process and the routes to processes elsewhere.
May import: ``project``, ``wire``, ``functions``, broker, lua.
"""

from ._hosts import ProcessHost
from ._inboxes import DEFAULT_MAX_BODY, DeadLetters, NodeInboxes, READ_TURN, Undeliverable, decode, encode
from ._remote import Cluster, Survey, reply_outcome, spawn_from_outside, survey
from ._supervisor import Supervisor
from ._table import ProcessTable, TERMINAL_HOST

__all__ = ["Cluster", "DEFAULT_MAX_BODY", "DeadLetters", "NodeInboxes", "ProcessHost", "ProcessTable", "READ_TURN", "Supervisor", "Survey", "TERMINAL_HOST", "Undeliverable", "decode", "encode", "reply_outcome", "spawn_from_outside", "survey"]
