"""Node liveness (DESIGN §6): this node's heartbeat and its view of the others.

Every node publishes ``<prefix>.node.<node>.hb`` each ``interval`` with a small JSON
body (name, incarnation, hosts) and a goodbye (``"bye": true``) when it stops cleanly.
A node is down when it said goodbye, stayed silent for ``down_after``, or came back
as a new incarnation (its earlier one is then down). Each incarnation is reported down
exactly once, through ``on_down``. Detection does not rely on NATS client pings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ._requests import Outbox
from ._subjects import Subjects

log = logging.getLogger("moonwire.membership")

CHECK_EVERY = 0.1


@dataclass(slots=True)
class Peer:
    node: str
    incarnation: str
    hosts: list[str]
    last_seen: float  # time.monotonic()


DownCallback = Callable[[str, str, str], None]
"""``on_down(node, incarnation, reason)``."""


class Membership:
    def __init__(self, nats: NatsClient, outbox: Outbox, subjects: Subjects, node: str, incarnation: str,
                 hosts: list[str], *, interval: float, down_after: float, on_down: DownCallback) -> None:
        self.nats = nats
        self.outbox = outbox
        self.subjects = subjects
        self.node = node
        self.incarnation = incarnation
        self.hosts = hosts
        self.interval = interval
        self.down_after = down_after
        self.on_down = on_down
        self.peers: dict[str, Peer] = {}
        self.departed: set[tuple[str, str]] = set()  # (node, incarnation) reported down
        self._subscription: Subscription | None = None

    def known_down(self, node: str, incarnation: str) -> bool:
        """True when that incarnation of ``node`` is known to be gone (reported down, or
        replaced by a newer one)."""
        if node == self.node:
            return False
        if (node, incarnation) in self.departed:
            return True
        peer = self.peers.get(node)
        return peer is not None and peer.incarnation != incarnation

    def view(self) -> list[dict[str, object]]:
        """The nodes this one believes alive: name, incarnation, hosts, heartbeat age (s)."""
        now = time.monotonic()
        return [{"node": p.node, "incarnation": p.incarnation, "hosts": p.hosts, "age": now - p.last_seen}
                for p in sorted(self.peers.values(), key=lambda p: p.node)]

    def expect(self, node: str, incarnation: str) -> None:
        """Watch ``node`` (of ``incarnation``) from now on even if no heartbeat of it has
        arrived yet: a process here depends on it, and a node that dies before its first
        heartbeat reaches us must still be reported down after the window."""
        if node == self.node or node in self.peers or (node, incarnation) in self.departed:
            return
        self.peers[node] = Peer(node, incarnation, [], time.monotonic())

    async def start(self) -> None:
        self._subscription = await self.nats.subscribe(self.subjects.all_heartbeats(), cb=self._on_heartbeat)
        self._beat()

    async def run(self) -> None:
        """Beat every ``interval`` and look for silent nodes every ``CHECK_EVERY`` (or
        ``interval`` if shorter) until cancelled (a task owned by the node). Checking
        often keeps detection within ``down_after`` plus a tenth of a second."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.interval
        while True:
            await asyncio.sleep(max(min(CHECK_EVERY, self.interval, next_beat - loop.time()), 0.0))
            now = loop.time()
            if now >= next_beat:
                self._beat()
                next_beat = max(next_beat + self.interval, now)
            self._check()

    async def stop(self) -> None:
        """Say goodbye, so others see this node down at once rather than after the window."""
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None
        self.outbox.publish_nowait(self.subjects.heartbeat(self.node), self._body(bye=True))

    def _body(self, bye: bool = False) -> bytes:
        return json.dumps({"node": self.node, "incarnation": self.incarnation, "hosts": self.hosts,
                           "bye": bye}).encode()

    def _beat(self) -> None:
        self.outbox.publish_nowait(self.subjects.heartbeat(self.node), self._body())

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            data = json.loads(msg.data)
            node, incarnation = str(data["node"]), str(data["incarnation"])
            hosts = [str(h) for h in data.get("hosts", [])]
            bye = bool(data.get("bye"))
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignoring a malformed heartbeat on %s: %s", msg.subject, err)
            return
        if node == self.node:
            return
        if (node, incarnation) in self.departed:
            return  # a late beat of an incarnation already reported down
        peer = self.peers.get(node)
        if peer is not None and peer.incarnation != incarnation:
            self._down(peer, "restarted as a new incarnation")
            peer = None
        if bye:
            if peer is not None:
                self._down(peer, "left the cluster")
            else:
                self.departed.add((node, incarnation))
            return
        if peer is None:
            self.peers[node] = Peer(node, incarnation, hosts, time.monotonic())
            log.info("node %s is up (incarnation %s, hosts %s)", node, incarnation, ", ".join(hosts) or "none")
        else:
            peer.last_seen = time.monotonic()
            peer.hosts = hosts

    def _check(self) -> None:
        now = time.monotonic()
        for peer in list(self.peers.values()):
            if now - peer.last_seen > self.down_after:
                self._down(peer, f"no heartbeat for {now - peer.last_seen:.1f}s")

    def _down(self, peer: Peer, reason: str) -> None:
        if self.peers.get(peer.node) is peer:
            del self.peers[peer.node]
        key = (peer.node, peer.incarnation)
        if key in self.departed:
            return
        self.departed.add(key)
        log.warning("node %s is down: %s", peer.node, reason)
        try:
            self.on_down(peer.node, peer.incarnation, reason)
        except Exception:  # noqa: BLE001 - a failing listener must not stop liveness
            log.exception("handling node %s down failed", peer.node)
