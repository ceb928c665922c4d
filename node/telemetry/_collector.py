"""The node's metrics: one prometheus-client collector that reads the counts the parts
keep (``_counts.py``, their ``statistics()``) at scrape time, and nothing in between.

Every family is yielded on every scrape, empty when its part is not there (yet, or any
more): the set of names a node exports does not depend on what it did, so the Grafana
dashboard can be checked against it. A part that fails to read (a scrape during
shutdown, say) leaves its families empty for that scrape and is logged; the scrape and
the node go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import (CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from ._counts import MAILBOX_BUCKETS, ORIGINS, OUTCOMES, Buckets, CallStats, ProcessCounts

if TYPE_CHECKING:  # it imports temporalio, which a node without workflows (and the CLI) need not load
    from ._workflow_counts import WorkflowCounts

log = logging.getLogger("moonwire.telemetry")

PREFIX = "moonwire_"


# ---------------------------------------------------------------- what is read


class _PoolStatistics(Protocol):
    @property
    def workers(self) -> int: ...
    @property
    def idle(self) -> int: ...
    @property
    def queued(self) -> int: ...


class _Pool(Protocol):
    def statistics(self) -> _PoolStatistics: ...


class FunctionsView(Protocol):
    """What is read of ``functions.Functions``."""

    @property
    def calls(self) -> Mapping[str, CallStats]: ...
    @property
    def pools(self) -> Mapping[str, _Pool]: ...


class _HostStatistics(Protocol):
    @property
    def processes(self) -> int: ...
    @property
    def states(self) -> int: ...
    @property
    def memory_bytes(self) -> int: ...


class _Host(Protocol):
    def statistics(self) -> _HostStatistics: ...


class TableView(Protocol):
    """What is read of ``processes.ProcessTable``."""

    @property
    def counts(self) -> ProcessCounts: ...
    @property
    def hosts(self) -> Mapping[str, _Host]: ...
    @property
    def records(self) -> Mapping[str, Any]: ...
    """Every local process's record: ``record.unit.mailbox`` (None or with ``depth()``)."""


class _DeadLetterStatistics(Protocol):
    @property
    def dropped(self) -> int: ...
    @property
    def by_reason(self) -> Mapping[str, int]: ...


class DeadLettersView(Protocol):
    def statistics(self) -> _DeadLetterStatistics: ...


class ConnectionView(Protocol):
    """A nats-py client: its ``stats`` counters and whether it is connected."""

    @property
    def stats(self) -> Mapping[str, int]: ...
    @property
    def is_connected(self) -> bool: ...


@dataclass
class Parts:
    """The node's parts the metrics read; the node fills them in as it builds them."""

    functions: FunctionsView | None = None
    table: TableView | None = None
    workflows: WorkflowCounts | None = None
    dead_letters: DeadLettersView | None = None
    sent: Mapping[str, Callable[[], int]] = field(default_factory=dict)
    """Messages sent by this node's processes to another node and to workflows, by route."""
    dropped_to_down_nodes: Callable[[], int] | None = None
    connections: Mapping[str, ConnectionView] = field(default_factory=dict)
    discovery: Mapping[tuple[str, str], int] | None = None
    """``$SRV`` requests by (verb, result)."""


# ---------------------------------------------------------------- the collector


class NodeMetrics(Collector):
    """The metrics of one node, in a registry of their own (not prometheus-client's
    global one: several nodes may live in one test process)."""

    def __init__(self, node: str, version: str, prefix: str = "mw") -> None:
        self.node = node
        self.version = version
        self.prefix_tokens = prefix.count(".") + 1
        self.parts = Parts()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The body and content type of a scrape (OpenMetrics when ``accept`` asks for it)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def snapshot(self) -> dict[str, float]:
        """Every sample but histogram buckets, as ``name{label="value",...}`` -> value,
        and each labelled counter's sum under its bare name (``moonwire_messages_delivered_total``):
        the ``metrics`` of this node's ``info`` and ``ps`` answers (``moonwire nodes``,
        ``moonwire top``). Averages come from a histogram's ``_sum`` and ``_count``."""
        out: dict[str, float] = {}
        for family in self.collect():
            totals: dict[str, float] = {}
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    continue
                if not sample.labels:
                    out[sample.name] = sample.value
                    continue
                labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
                if family.type == "counter":
                    totals[sample.name] = totals.get(sample.name, 0) + sample.value
            out.update(totals)
        return out

    def collect(self) -> Iterator[Metric]:
        parts = self.parts
        info = GaugeMetricFamily(f"{PREFIX}build_info", "moonwire's version on this node (always 1)",
                                 labels=["version", "node"])
        info.add_metric([self.version, self.node], 1)
        yield info
        for read in (self._processes, self._messages, self._functions, self._workflows, self._connections):
            yield from read(parts)

    # ------------------------------------------------------------ the families

    def _processes(self, parts: Parts) -> Iterator[Metric]:
        alive = GaugeMetricFamily(f"{PREFIX}processes", "processes alive, per process host", labels=["host"])
        memory = GaugeMetricFamily(f"{PREFIX}lua_memory_bytes", "memory of the Lua states of a process host",
                                   labels=["host"])
        states = GaugeMetricFamily(f"{PREFIX}lua_states", "Lua states a process host keeps its processes in",
                                   labels=["host"])
        spawns = CounterMetricFamily(f"{PREFIX}process_spawns", "processes started, per process host",
                                     labels=["host"])
        exits = CounterMetricFamily(f"{PREFIX}process_exits", "processes ended, per process host and reason "
                                    "(normal, or the error's kind)", labels=["host", "reason"])
        downs = CounterMetricFamily(f"{PREFIX}node_down_events", "other nodes declared down, by reason "
                                    "(left, restarted, silent, cut)", labels=["reason"])
        table = parts.table
        if table is not None:
            with _reading("process hosts"):
                for host_id, host in table.hosts.items():
                    stats = host.statistics()
                    alive.add_metric([host_id], stats.processes)
                    memory.add_metric([host_id], stats.memory_bytes)
                    states.add_metric([host_id], stats.states)
            counts = table.counts
            for host_id, n in list(counts.spawns.items()):
                spawns.add_metric([host_id], n)
            for (host_id, reason), n in list(counts.exits.items()):
                exits.add_metric([host_id, reason], n)
            for reason, n in list(counts.node_downs.items()):
                downs.add_metric([reason], n)
        yield from (alive, memory, states, spawns, exits, downs)

    def _messages(self, parts: Parts) -> Iterator[Metric]:
        delivered = CounterMetricFamily(f"{PREFIX}messages_delivered", "messages delivered to this node's processes, "
                                       "by origin (local, remote, workflow, outside)", labels=["origin"])
        sent = CounterMetricFamily(f"{PREFIX}messages_sent", "messages this node's processes sent, by route "
                                   "(local, remote: another node, workflow: a signal)", labels=["route"])
        dropped = CounterMetricFamily(f"{PREFIX}messages_dropped", "messages not sent because their node was "
                                      "believed down")
        depth = GaugeHistogramMetricFamily(f"{PREFIX}mailbox_depth", "unread messages per live process, now",
                                           labels=[])
        dead = CounterMetricFamily(f"{PREFIX}dead_letters", "messages republished to the dead-letter subject, by "
                                   "the subject they came on and the reason", labels=["source", "reason"])
        dead_dropped = CounterMetricFamily(f"{PREFIX}dead_letters_dropped", "dead letters lost (too many waiting, "
                                           "or their publish failed)")
        table = parts.table
        if table is not None:
            by_origin = table.counts.by_origin()
            for origin in ORIGINS:
                delivered.add_metric([origin], by_origin[origin])
            sent.add_metric(["local"], by_origin["local"])
            with _reading("mailboxes"):
                depths = Buckets(MAILBOX_BUCKETS)
                for record in list(table.records.values()):
                    if record.unit.mailbox is not None:
                        depths.observe(record.unit.mailbox.depth())
                depth.add_metric([], depths.cumulative(), depths.sum)
        for route, count in parts.sent.items():
            sent.add_metric([route], count())
        if parts.dropped_to_down_nodes is not None:
            dropped.add_metric([], parts.dropped_to_down_nodes())
        if parts.dead_letters is not None:
            with _reading("dead letters"):
                statistics = parts.dead_letters.statistics()
                totals: dict[tuple[str, str], int] = {}
                for key, n in statistics.by_reason.items():
                    label = dead_letter_labels(key, self.prefix_tokens)
                    totals[label] = totals.get(label, 0) + n
                for (source, reason), n in totals.items():
                    dead.add_metric([source, reason], n)
                dead_dropped.add_metric([], statistics.dropped)
        yield from (delivered, sent, dropped, depth, dead, dead_dropped)

    def _functions(self, parts: Parts) -> Iterator[Metric]:
        yield from _call_families(("function_calls", "function_call"), "calls of a function run on this node "
                                  "(local callers and requests on its subject alike), per entry",
                                  parts.functions.calls if parts.functions is not None else {}, "entry")
        workers = GaugeMetricFamily(f"{PREFIX}function_workers", "Lua states of a function's pool, busy or idle",
                                    labels=["entry", "state"])
        queued = GaugeMetricFamily(f"{PREFIX}function_queued", "calls waiting for a worker of a function's pool",
                                   labels=["entry"])
        if parts.functions is not None:
            for entry, pool in list(parts.functions.pools.items()):
                stats = pool.statistics()
                workers.add_metric([entry, "busy"], stats.workers - stats.idle)
                workers.add_metric([entry, "idle"], stats.idle)
                queued.add_metric([entry], stats.queued)
        yield from (workers, queued)

    def _workflows(self, parts: Parts) -> Iterator[Metric]:
        counts = parts.workflows
        started = CounterMetricFamily(f"{PREFIX}workflows_started", "workflow runs begun on this node's workers",
                                      labels=["workflow"])
        finished = CounterMetricFamily(f"{PREFIX}workflows_finished", "workflow runs ended on this node's workers, "
                                       f"by outcome ({', '.join(OUTCOMES)})", labels=["workflow", "outcome"])
        failures = CounterMetricFamily(f"{PREFIX}workflow_task_failures", "workflow tasks that failed here (Temporal "
                                       "retries them): a non-deterministic call, a bug", labels=["workflow"])
        durations = HistogramMetricFamily(f"{PREFIX}workflow_duration_seconds", "workflow run durations in "
                                          "workflow time, from its start to its end", labels=["workflow"])
        if counts is not None:
            with _reading("workflows"), counts.lock:
                for name, n in counts.started.items():
                    started.add_metric([name], n)
                for (name, outcome), n in counts.finished.items():
                    finished.add_metric([name, outcome], n)
                for name, n in counts.task_failures.items():
                    failures.add_metric([name], n)
                for name, latency in counts.durations.items():
                    durations.add_metric([name], latency.cumulative(), latency.sum)
        yield from (started, finished, failures, durations)
        yield from _call_families(("activities", "activity"), "activities run on this node's workers, per activity type",
                                  counts.activities if counts is not None else {}, "activity")

    def _connections(self, parts: Parts) -> Iterator[Metric]:
        connected = GaugeMetricFamily(f"{PREFIX}nats_connected", "1 while the NATS connection is up",
                                      labels=["connection"])
        reconnects = CounterMetricFamily(f"{PREFIX}nats_reconnects", "times the NATS connection was made again",
                                         labels=["connection"])
        messages_in = CounterMetricFamily(f"{PREFIX}nats_messages_received", "NATS messages received",
                                          labels=["connection"])
        messages_out = CounterMetricFamily(f"{PREFIX}nats_messages_sent", "NATS messages sent",
                                           labels=["connection"])
        for name, nc in parts.connections.items():
            connected.add_metric([name], 1 if nc.is_connected else 0)
            reconnects.add_metric([name], nc.stats.get("reconnects", 0))
            messages_in.add_metric([name], nc.stats.get("in_msgs", 0))
            messages_out.add_metric([name], nc.stats.get("out_msgs", 0))
        discovery = CounterMetricFamily(f"{PREFIX}discovery_requests", "$SRV (nats micro) requests, by verb and "
                                        "result (answered, limited: over the rate limit, no_reply: nowhere to "
                                        "answer)", labels=["verb", "result"])
        for (verb, result), n in (parts.discovery or {}).items():
            discovery.add_metric([verb, result], n)
        yield from (connected, reconnects, messages_in, messages_out, discovery)


def _call_families(names: tuple[str, str], what: str, calls: Mapping[str, CallStats],
                   label: str) -> Iterator[Metric]:
    """``<plural>_total``, ``<one>_errors_total`` by kind, ``<one>_duration_seconds``."""
    plural, name = names
    total = CounterMetricFamily(f"{PREFIX}{plural}", f"{what}: ended", labels=[label])
    errors = CounterMetricFamily(f"{PREFIX}{name}_errors", f"{what}: ended with an error, by its kind",
                                 labels=[label, "kind"])
    latency = HistogramMetricFamily(f"{PREFIX}{name}_duration_seconds", f"{what}: how long each took",
                                    labels=[label])
    for key, stats in list(calls.items()):
        total.add_metric([key], stats.calls)
        for kind, n in list(stats.errors.items()):
            errors.add_metric([key, kind], n)
        latency.add_metric([key], stats.latency.cumulative(), stats.latency.sum)
    yield from (total, errors, latency)


# ---------------------------------------------------------------- dead letters

_SOURCES = {"p": "inbox", "n": "name", "g": "group", "wf": "workflow", "fn": "function", "ctl": "control",
            "ack": "stream", "spawn": "spawn", "nodes": "control"}
_REASONS = (  # (words in the reason, label): the first that matches
    (("is full",), "mailbox_full"),
    (("signals are waiting",), "overloaded"),
    (("over the limit",), "too_large"),
    (("no process", "not found", "noproc", "no running workflow", "holds the cluster name", "unknown"),
     "no_process"),
    (("internal error", "failed:"), "internal"),
)


def dead_letter_labels(key: str, prefix_tokens: int = 1) -> tuple[str, str]:
    """``(source, reason)`` of a key of the dead letters' tally (``"<reason, blanked>
    [<first three subject tokens>]"``): what the message came on (inbox, name, group,
    workflow, function, control, stream, spawn, other) and why it was not delivered
    (mailbox_full, overloaded, too_large, no_process, internal, malformed); both from
    small fixed sets, whatever the reason's text says. ``prefix_tokens``: the tokens of
    the node's subject prefix (the subject kind follows them)."""
    reason_text, _, subject = key.rpartition(" [")
    tokens = subject.rstrip("]").split(".")
    source = _SOURCES.get(tokens[prefix_tokens], "other") if len(tokens) > prefix_tokens else "other"
    if not reason_text:  # "dropped", "publish failed", the tally's "(other)"
        return "other", "other"
    lowered = reason_text.lower()
    for words, label in _REASONS:
        if any(word in lowered for word in words):
            return source, label
    return source, "malformed"


class _reading:
    """Reading one part: an error leaves its families as they are and is logged."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, trace: Any) -> bool:
        if isinstance(error, Exception):
            log.warning("metrics: reading %s failed: %s: %s", self.what, type(error).__name__, error)
            return True
        return False
