"""The cluster layer (DESIGN §12): state shared by every node, kept in JetStream
key-value buckets (Raft-replicated when NATS is a cluster) and replicated into each node
through a watch, never a consensus of our own.

* ``_names.py``: :class:`ClusterNames`, cluster-wide process names (wippy-surface §3.7,
  CONSISTENT: first writer wins, only the owner unregisters, freed on exit and on
  node-down).
* ``_replica.py``: the local replica of a bucket's names and the name rules.
* ``_groups.py``: :class:`ClusterGroups`, cluster-wide process groups (Erlang ``pg``,
  wippy-modules §10): multi-join memberships written by their own node, broadcasts on
  ``<prefix>.g.<group>``, freed on exit and on node-down.
* ``_locks.py``: :class:`ClusterLocks`, cluster-wide locks (``system.lock``): the
  names' rules on a bucket of their own, with waiting for a lock to be freed.
* ``_cluster.py``: :class:`Cluster`, the node's stores together, and running their
  calls for processes.
* ``_dead_letters.py``: the stream that keeps dead letters, and reading, replaying and
  purging them (``moonwire dlq``).
* ``_jetstream.py``: opening and following a bucket (``BucketStore``); the bound and
  the error conversion every round trip goes through.

Owns: cluster-wide state on JetStream (KV buckets; the dead-letter stream). May import:
``wire``, broker, lua; nothing from ``processes`` or ``workflows``: the process table
depends on this room, not the other way.
"""

from ._cluster import Cluster
from ._dead_letters import LIMITS, DeadLetterStore, StoredLetter, keep_dead_letters, stream_name
from ._groups import ClusterGroups, GroupsStatistics
from ._jetstream import replicas_for
from ._locks import ClusterLocks
from ._names import ClusterNames, NamesStatistics
from ._replica import MAX_NAME, Holder, name_problem

__all__ = ["LIMITS", "MAX_NAME", "Cluster", "ClusterGroups", "ClusterLocks", "ClusterNames", "DeadLetterStore",
           "GroupsStatistics", "Holder", "NamesStatistics", "StoredLetter", "keep_dead_letters", "name_problem",
           "replicas_for", "stream_name"]
