"""Workflows on Temporal: the worker host inside the node, the workflow run (the
deterministic Lua side), the gateway that carries messages to and from workflows.

* ``_workflows.py``: :class:`Workflows`, the process table's workflow target (spawn,
  send, end, watch) and the node's workers (start, stop); it owns a :class:`Gateway`.
* ``_gateway.py``: what arrives on NATS for workflows (messages to signal, status
  requests), the bounded signal queue and its sender, and the CLI's status asks.
* ``_temporal.py``: connecting clients, worker settings, the hosts (a worker entry and
  its client), a workflow's handle and result, the replayer.
* ``_workflow_run.py``: the Lua workflow run inside a Temporal worker (deterministic).
* ``_workflow_codec.py``: what crosses to Temporal: inputs, signals, failures, options.
* ``_payloads.py``: values as payloads (JSON when it holds them, else msgpack).
* ``_carry.py``: moonwire's fields of a call in its ``moonwire`` header, and the interceptor.
* ``_search.py``: search attributes and memo, typed and checked; registering them.
* ``_continue.py``: continue-as-new (``process.upgrade`` inside a workflow), carrying
  the messages not yet received into the next run.
* ``_updates.py``: Temporal updates and queries inside a workflow (updates as messages
  from ``{update|<id>}``, answered with ``process.send``).
* ``_requests.py``: updates and queries sent from outside a workflow (``process.update``,
  ``moonwire workflow update|query``).

Owns: Temporal clients and workers. May import: ``project``, ``wire``, ``functions``,
``processes``, ``telemetry``, broker, lua.
"""

from ._gateway import running_workflows, workflow_query, workflow_status, workflow_update
from ._temporal import TemporalUnavailable, workflow_replayer
from ._workflows import Workflows

__all__ = ["TemporalUnavailable", "Workflows", "running_workflows", "workflow_query", "workflow_replayer",
           "workflow_status", "workflow_update"]
