"""The node: one OS process that owns a broker connection, its embedded servers and
(as they are added) process hosts, function pools, Temporal workers and services.

Start-up is a list of steps; each step that succeeds registers how to undo it.
Shutdown undoes them in reverse order under one deadline (the shutdown timeout),
logging each step and re-raising the first error once everything has been tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient

from nats.aio.msg import Msg

from moonwire import __version__
from moonwire.broker import (ACK_EVERY, Client, Membership, Outbox, PidAllocator, Requests, Streams, Subjects, TaskSet,
                             connect)

from .project import NodeConfig, ResolvedConfig
from moonwire.lua import Outcome

from .servers import EmbeddedServers
from .project import TemporalClientEntry
from .workflows import Workflows
from .functions import QUEUE_GROUP, Functions, watch_calls
from .cluster import Cluster, replicas_for
from .processes import READ_TURN, ControlPlane, DeadLetters, ClusterDelivery, NodeInboxes, RemoteNodes
from ._loop import loop_name
from ._reload import CodeReload
from ._runtime import Runtime
from .telemetry import MetricsServer, MicroService, NodeMetrics, Parts
from .project import Project

log = logging.getLogger("moonwire.node")

StopStep = Callable[[float], Awaitable[None]]
"""Undoes one start-up step, given the seconds left before the shutdown deadline."""


class NodeFailed(Exception):
    """A loop the node cannot run without failed; the node has stopped in order."""


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    stop: StopStep


class Node:
    """A running moonwire node.

    Use :meth:`serve` to run until :meth:`request_stop`, or ``async with node.running():``
    to run a piece of work on a started node and shut it down afterwards.
    """

    def __init__(self, resolved: ResolvedConfig, project: Project) -> None:
        self.resolved = resolved
        self.config: NodeConfig = resolved.config
        self.project = project
        self.subjects = Subjects(self.config.prefix)
        self.embedded = EmbeddedServers(resolved.state_dir, self.config.node)
        self.temporal_address: str | None = None
        self._nats: NatsClient | None = None
        self._data: Client | None = None
        self.runtime: Runtime | None = None
        self._steps: list[_Step] = []
        self._stop_requested = asyncio.Event()
        self._loops = TaskSet(log, on_failure=self._loop_failed)
        self._loop_failure: tuple[str, BaseException] | None = None
        self._block: asyncio.Task[Any] | None = None
        self.metrics = NodeMetrics(self.name, __version__, self.config.prefix)
        self._ready = False  # started, and not stopping: /healthz

    @property
    def name(self) -> str:
        return self.config.node

    @property
    def nats(self) -> NatsClient:
        if self._nats is None:
            raise RuntimeError("the node is not connected")
        return self._nats

    def request_stop(self) -> None:
        """Ask :meth:`serve` to shut down. Safe to call more than once."""
        self._stop_requested.set()

    async def serve(self) -> None:
        """Start, run until :meth:`request_stop`, then shut down."""
        async with self.running():
            log.info("node %s running on %s; stop with Ctrl-C or SIGTERM", self.name,
                     loop_name(asyncio.get_running_loop()))
            await self._stop_requested.wait()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Node]:
        """Start the node; shut it down when the block exits, however it exits.

        Raises:
            BrokerUnavailable: NATS did not accept the connection.
            EmbeddedServerError: an embedded server could not be started.
            NodeFailed: one of the node's loops failed; the node has stopped in order.
        """
        # The node's long-lived loops (dead letters, outbox, streams, heartbeat) are owned
        # here, each stopped by its own shutdown step in order. One that fails ends the
        # block (once, before shutdown begins): the shutdown still runs every step, and
        # the loop's error is raised. Not an asyncio.TaskGroup: on a failure it would
        # cancel the other loops (and any shutdown under way) at once, so the EXITs and
        # the goodbye of an orderly stop could not leave.
        block = self._block = asyncio.current_task()
        try:
            await self._start()
            yield self
        except asyncio.CancelledError:
            # Cancelled by a failed loop (_loop_failed) and nothing else: shut down, then
            # raise that failure instead.
            if self._loop_failure is None or block is None or block.uncancel() > 0:
                raise
        finally:
            self._block = None  # stopping: a loop that fails now is logged, nothing more
            await self._shutdown()
        if self._loop_failure is not None:
            raise NodeFailed(f"node {self.name} stopped: its {self._loop_failure[0]} loop failed: "
                             f"{self._loop_failure[1]}") from self._loop_failure[1]

    def _loop_failed(self, task: asyncio.Task[Any], error: BaseException) -> None:
        if self._loop_failure is None:
            self._loop_failure = (task.get_name(), error)
        if self._block is not None:  # ends the block (once): the shutdown follows
            block, self._block = self._block, None
            block.cancel()

    def healthy(self) -> bool:
        """Started, not stopping, and both NATS connections up (``/healthz``)."""
        return self._ready and all(nc is not None and nc.is_connected for nc in (self._nats, self._data))

    async def _start(self) -> None:
        address = self.config.metrics.address
        if address is not None:  # first: a taken port stops the start before anything else runs
            server = MetricsServer(self.metrics, *address, healthy=self.healthy)
            await server.start()
            self._steps.append(_Step("metrics server", lambda remaining: server.stop()))
        # Registered first so it is undone last; stopping owns nothing is a no-op.
        self._steps.append(_Step("embedded servers", self._stop_embedded))
        servers = self.config.nats.url or [await self.embedded.nats_url()]
        if any(isinstance(e, TemporalClientEntry) and e.embedded for e in self.project.entries.values()):
            self.temporal_address = await self.embedded.temporal_address()

        options = self.config.connect_options(servers)
        self._nats = await connect(options)
        self._steps.append(_Step("NATS connection", self._close_nats))
        # The data plane (process inboxes, the workflow gateway, their dead letters) has
        # a connection of its own: a flood there waits in its socket and the server, not
        # in front of heartbeats, control requests and function calls in one byte stream
        # and one write buffer (docs/architecture.md, Floods).
        self._data = await connect(dataclasses.replace(options, name=f"{options.name}-data"))
        self._steps.append(_Step("NATS data connection", self._close_data))
        log.info("node %s connected to NATS at %s", self.name, ", ".join(servers))
        dead_letters = DeadLetters(self._data, self.subjects.dead_letters(self.name))
        self._data.after_read = dead_letters.make_room
        self._data.read_turn = READ_TURN
        dead_letters_task = self._loops.start(dead_letters.run(), "dead letters")
        self._steps.append(_Step("dead letters", lambda remaining: _cancel_and_wait(dead_letters_task)))

        # Process traffic to each other node travels in a stream: numbered, acknowledged
        # and sent again until it is, so a NATS server dying under it loses nothing.
        streams: Streams[Msg] = Streams(
            self.name, f"{time.time_ns():x}", ack_subject=self.subjects.stream_acks,
            publish=lambda subject, body, headers: outbox.publish_nowait(subject, body, headers=headers or None))
        outbox = Outbox(self._nats, streams)
        outbox_task = self._loops.start(outbox.run(), "outbox")
        self._steps.append(_Step("outbox", lambda remaining: _cancel_and_wait(outbox_task)))
        requests = Requests(self._nats, outbox)
        await requests.start()
        self._steps.append(_Step("requests", lambda remaining: requests.stop()))

        # Built in the order they use each other: liveness, the routes to other nodes and
        # to workflows, then the process table on top of them; what serves the table
        # (inboxes, workers, the control plane) comes after it.
        pids = PidAllocator(self.name)
        heartbeat = self.config.heartbeat
        membership = Membership(
            self._nats, outbox, self.subjects, self.name, pids.epoch, self.project.spawn_hosts(),
            interval=heartbeat.interval, down_after=heartbeat.down_after,
            # Heard only once membership starts, below, when the process table exists.
            on_down=lambda node, incarnation, reason: (streams.forget(node),
                                                       processes.node_down(node, incarnation, reason),
                                                       calls_node_down(node, incarnation, reason)),
            # Not when a live peer cut this node off: what it holds is its own still.
            on_gone=lambda node, incarnation: cluster.node_down(node, incarnation))
        remote = RemoteNodes(self.name, self.subjects, outbox, requests, membership)
        functions = Functions(self.project, self.subjects, self._nats, requests, outbox,
                              dead_letter=dead_letters.publish)
        # A request names this node; the node serving it says when it took it, so either
        # side's death ends the other's wait or work (functions/_served.py).
        functions.served, calls_node_down = watch_calls(requests, membership, outbox.publish_nowait, self.subjects,
                                                        self.name, pids.epoch)
        workflows = Workflows(self.name, self.project, self.subjects, functions, functions.code, nats=self._nats,
                              outbox=outbox, max_body=self.config.max_message_bytes, gateway=self._data,
                              dead_letters=dead_letters)
        # Names, locks and groups on JetStream: open before anything runs Lua (a service
        # may register a name as it starts), stopped after every process has exited.
        cluster = Cluster(self._nats, self._data, prefix=self.config.prefix, node=self.name, incarnation=pids.epoch,
                          replicas=self.config.cluster.replicas or replicas_for(self._nats),
                          timeout=self.config.cluster.timeout,
                          expect=membership.expect)
        await cluster.start()
        self._steps.append(_Step("cluster", lambda remaining: cluster.stop()))
        runtime = self.runtime = Runtime(self.name, self.project, self.subjects, functions=functions, pids=pids,
                                         remote=remote, workflows=workflows, cluster=cluster,
                                         hearing=membership.hearing)
        processes = runtime.processes
        # What the metrics read at scrape time (and `info`, for `moonwire nodes`/`top`).
        self.metrics.parts = Parts(
            functions=functions, table=processes, workflows=workflows.counts, dead_letters=dead_letters,
            sent={"remote": lambda: remote.sent, "workflow": lambda: workflows.sent},
            dropped_to_down_nodes=lambda: remote.dropped_to_down_nodes,
            connections={"control": self._nats, "data": self._data})
        processes.metrics = self.metrics.snapshot

        inboxes = NodeInboxes(self._data, outbox, self.subjects, self.name, processes.deliver,
                              processes.deliver_event, dead_letters, max_body=self.config.max_message_bytes,
                              streams=streams, cluster=ClusterDelivery(cluster.names.lookup, cluster.groups.local_members,
                                                                      processes.route_in))
        cluster.on_broadcast = inboxes.on_group
        await inboxes.start()
        self._steps.append(_Step("process inboxes", lambda remaining: inboxes.stop()))
        def on_ack(msg: Msg) -> None:
            try:
                streams.on_ack(msg.data)
            except ValueError as err:  # from outside: accounted for, never raised into the read loop
                dead_letters.publish(msg.subject, msg.data, msg.headers, f"malformed stream ack: {err}")

        acks = await self._nats.subscribe_direct(self.subjects.stream_acks(self.name), on_ack)
        streams_task = self._loops.start(_keep_streams(streams, inboxes.handle), "streams")
        self._steps.append(_Step("streams", lambda remaining: _stop_streams(streams_task, acks)))
        self._steps.append(_Step("temporal workers", lambda remaining: workflows.stop()))
        await workflows.start(self.temporal_address, processes.route_in, run_workers=self.config.workers)
        control = ControlPlane(self._nats, outbox, self.subjects, self.name, processes, streams,
                               dead_letters.publish)
        await control.start()
        self._steps.append(_Step("control plane", lambda remaining: control.stop()))

        await membership.start()
        beating = self._loops.start(membership.run(), "heartbeat")
        self._steps.append(_Step("heartbeat", lambda remaining: _stop_beating(beating, membership, streams,
                                                                               remaining)))
        # Stopped first: processes exit while the node still delivers their EXITs to
        # watchers elsewhere; the goodbye follows. They get the shutdown budget less a
        # second kept for the steps after them.
        self._steps.append(_Step("runtime", lambda remaining: runtime.stop(max(remaining - 1.0, 0.5))))
        await runtime.start()
        if self.config.watch:  # moonwire run --watch
            watching = self._loops.start(CodeReload(runtime).run(), "code reload")
            self._steps.append(_Step("code reload", lambda remaining: _cancel_and_wait(watching)))
        if self.config.metrics.discovery:  # `nats micro`: the functions are served by now
            micro = MicroService(self._nats, lambda subject, body: outbox.publish_nowait(subject, body),
                                 node=self.name, version=__version__, subject_of=self.subjects.function,
                                 queue_group=QUEUE_GROUP, served=functions.served_entries, calls=functions.calls,
                                 metadata={"prefix": self.config.prefix, "incarnation": pids.epoch})
            await micro.start()
            self._steps.append(_Step("discovery", lambda remaining: micro.stop()))
            self.metrics.parts.discovery = micro.requests
        # nats-py buffers SUBs: a round trip here means that once the node says it is
        # running, the server routes to every inbox, queue group and control subject.
        await self._nats.flush()
        await self._data.flush()
        # What exists now (modules, the project, Lua states, connections) lives as long
        # as the node. Frozen, the cyclic collector stops re-scanning it in every older-
        # generation collection: ~4 us of CPU per remote call on a calling node.
        gc.collect()
        gc.freeze()
        self._ready = True

    async def execute(self, entry_id: str, args: list[object]) -> Outcome:
        """Run one entry to completion on this node (``moonwire run -x``)."""
        if self.runtime is None:
            raise RuntimeError("the node is not running")
        return await self.runtime.execute(entry_id, args)

    async def _shutdown(self) -> None:
        self._ready = False
        deadline = time.monotonic() + self.config.shutdown_timeout
        first_error: BaseException | None = None
        while self._steps:
            step = self._steps.pop()
            remaining = deadline - time.monotonic()
            log.info("stopping %s", step.name)
            try:
                await asyncio.wait_for(step.stop(max(remaining, 0.0)), max(remaining, 0.0) + 5.0)
            except Exception as err:  # noqa: BLE001 - every step must get its turn
                log.error("stopping %s failed: %s", step.name, err)
                first_error = first_error or err
        # The freeze was for the node's lifetime: hand its objects back to the collector
        # (a program may run nodes in-process one after another).
        gc.unfreeze()
        if first_error is not None:
            raise first_error

    async def _close_nats(self, remaining: float) -> None:
        nc, self._nats = self._nats, None
        await _drain_or_close(nc, remaining)

    async def _close_data(self, remaining: float) -> None:
        nc, self._data = self._data, None
        await _drain_or_close(nc, remaining)

    async def _stop_embedded(self, remaining: float) -> None:
        await self.embedded.stop(timeout=min(max(remaining, 0.5), 5.0))


async def _drain_or_close(nc: NatsClient | None, remaining: float) -> None:
    if nc is None or nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.drain(), min(remaining, 5.0) or 0.1)
    except Exception:  # noqa: BLE001 - a timed-out or failed drain still ends in close
        await nc.close()


GOODBYE_WAIT = 1.0
"""Seconds a stopping node waits for its peers to acknowledge its last messages before
it says goodbye."""


async def _keep_streams(streams: Streams[Msg], handle: Callable[[Msg], None]) -> None:
    """Acknowledge, ask again and send again for the node's streams until cancelled."""
    while True:
        await asyncio.sleep(ACK_EVERY)
        streams.tick(handle)


async def _stop_streams(task: asyncio.Task[None], acks: Any) -> None:
    await _cancel_and_wait(task)
    await acks.unsubscribe()


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Stop a loop; its own failure, if it failed, was reported when it happened."""
    task.cancel()
    await asyncio.wait([task])



async def _stop_beating(task: asyncio.Task[None], membership: Membership, streams: Streams[Msg],
                        remaining: float) -> None:
    await _cancel_and_wait(task)
    # The goodbye travels on the control connection, the EXITs of the processes that just
    # stopped on the streams (the data connection at each peer): were it to overtake them,
    # a peer's monitors would fire "node down" instead of the real exit. Every peer has
    # handled what it acknowledged, so wait (briefly, a few acknowledgement rounds) for that.
    deadline = time.monotonic() + min(GOODBYE_WAIT, remaining)
    def live_peer(node: str) -> bool:
        peer = membership.peers.get(node)
        return peer is not None and not peer.down

    while not streams.acknowledged(live_peer) and time.monotonic() < deadline:
        await asyncio.sleep(ACK_EVERY / 5)  # no event to await: acknowledgements are counted, not signalled
    await membership.stop()  # the goodbye: others see this node down at once
