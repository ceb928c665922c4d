"""Telemetry: the counts the parts keep on their hot paths (``_counts.py``, and the
Temporal workers' interceptor in ``_workflow_counts.py``), the Prometheus metrics made
of them at scrape time (``_collector.py``), the node's ``/metrics`` and ``/healthz``
server (``_http.py``) and its ``nats micro`` service (``_micro.py``).

Owns: what the node tells operators about itself. May import: broker, lua (and
prometheus-client, temporalio, nats-py); the rooms it reads are described by protocols,
so they may import it, not it them. See ``docs/operations.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._collector import NodeMetrics, Parts, dead_letter_labels
from ._counts import (LATENCY_BUCKETS, MAILBOX_BUCKETS, OTHER, Buckets, CallCounts, CallStats, ProcessCounts,
                      kind_label, node_down_reason)
from ._http import MetricsServer, MetricsUnavailable
from ._micro import SERVICE_NAME, MicroService, endpoint_name

if TYPE_CHECKING:
    from ._workflow_counts import WorkflowCounts

__all__ = ["LATENCY_BUCKETS", "MAILBOX_BUCKETS", "OTHER", "SERVICE_NAME", "Buckets", "CallCounts", "CallStats",
           "MetricsServer", "MetricsUnavailable", "MicroService", "NodeMetrics", "Parts", "ProcessCounts",
           "WorkflowCounts", "dead_letter_labels", "endpoint_name", "kind_label", "node_down_reason"]


def __getattr__(name: str) -> Any:
    # WorkflowCounts is a Temporal interceptor: importing it imports temporalio, which only
    # a node with workflows needs (not ``moonwire call`` nor ``moonwire ps``).
    if name != "WorkflowCounts":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ._workflow_counts import WorkflowCounts
    return WorkflowCounts
