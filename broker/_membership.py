"""Node liveness (DESIGN §6, §13): this node's heartbeat and its view of the others.

Every node publishes ``<prefix>.node.<node>.hb`` each ``interval`` with a small JSON
body (name, incarnation, hosts, and the peers it has cut off, see below) and a goodbye
(``"bye": true``) when it stops cleanly. Detection does not rely on NATS client pings.

A peer is *down* when:

- it said goodbye, or came back as a new incarnation: that incarnation is gone for good;
- it stayed silent for ``down_after`` *while this node could hear*: it is believed down,
  and is a live peer again the moment it is heard again (a *flap*). Watchers that fired
  stay fired, as in Erlang after ``nodedown``; new sends flow again.

Each incarnation is reported down through ``on_down`` once per time it is declared down.

"I cannot hear you" is not "you are down". This node judges silence only while it can
hear the broker, which it decides from two signs: the client says it is connected, and
its own heartbeats come back to it (every node subscribes to all heartbeats, its own
included). A peer is declared down once ``down_after`` has passed since the later of its
last heartbeat and the start of the current unbroken run of echoes, plus however much
our last echo is older than one interval: our own echo travels the inbound path the
peer's beats travel, so its age says how far behind our reading is. So after a broker
outage, an event loop stalled in a long C call, or an inbound path delayed by a flood
(our own echo is late then too), every peer gets one full window from the moment this
node hears itself again; peers that really died in the meantime are reported after that
window.

When this node declares a peer down, the peer may not know (it was stalled, say): its
monitors and links of our processes would never fire while ours of its processes did.
So the heartbeat carries ``cut``: for each peer this node declared down, its incarnation
and how many times. A peer that reads a new count for its own incarnation reports this
node down to its own listeners (``on_down``), without marking it down: both sides then
saw the same node-down, as both ends of a broken Erlang distribution connection do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ._requests import Outbox
from ._subjects import Subjects

log = logging.getLogger("moonwire.membership")

CHECK_EVERY = 0.1
MAX_HEARTBEAT_BYTES = 256 * 1024  # a beat is ~100 bytes plus ~40 per peer it cut off


@dataclass(slots=True)
class Peer:
    """What this node knows of one other node (by name; the incarnation it last heard)."""

    node: str
    incarnation: str
    hosts: list[str]
    last_seen: float  # clock(): its last heartbeat, or when we started expecting one
    down: bool = False  # declared down for silence and not heard since
    down_since: float | None = None  # clock() when it was last declared down
    down_reason: str | None = None  # why it was last declared down
    flaps: int = 0  # times it was heard again after being declared down
    last_flap: float | None = None  # clock() when it was last heard again
    cuts: int = 0  # times this node declared this incarnation down (sent in our beats)
    heard: bool = True  # False while only expected (expect()): never heard, a claim
    cuts_heard: int = 0  # the highest count of its cuts of us that we have acted on


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One parsed heartbeat body."""

    node: str
    incarnation: str
    hosts: list[str]
    bye: bool
    cut: dict[str, tuple[str, int]] = field(default_factory=dict)  # node -> (incarnation, times)

    @staticmethod
    def parse(body: bytes) -> Heartbeat:
        """Raises: ValueError (including too large or too deep), KeyError or TypeError for
        a malformed body."""
        if len(body) > MAX_HEARTBEAT_BYTES:
            raise ValueError(f"{len(body)} bytes, more than {MAX_HEARTBEAT_BYTES}")
        try:
            data = json.loads(body)
        except RecursionError:
            raise ValueError("nested too deep") from None
        if not isinstance(data, dict) or not isinstance(data.get("cut") or {}, dict):
            raise TypeError("not a heartbeat object")
        cut: dict[str, tuple[str, int]] = {}
        for node, entry in (data.get("cut") or {}).items():
            incarnation, times = entry
            if not isinstance(times, int) or isinstance(times, bool):  # 1e400 would not even convert
                raise TypeError("a cut count must be an integer")
            cut[str(node)] = (str(incarnation), times)
        return Heartbeat(str(data["node"]), str(data["incarnation"]), [str(h) for h in data.get("hosts", [])],
                         bool(data.get("bye")), cut)


DownCallback = Callable[[str, str, str], None]
"""``on_down(node, incarnation, reason)``."""


def _newer(a: str, b: str) -> bool:
    """True when incarnation ``a`` is later than ``b`` (boot epochs in base 36, so the
    longer string, then the larger one, is later)."""
    return (len(a), a) > (len(b), b)


class Membership:
    """The heartbeat of this node and its view of the others.

    ``nats`` is only asked whether it is connected and used to subscribe; any client
    (the node's main connection or one of its own for control traffic) will do.
    ``clock`` is monotonic seconds; tests pass a fake one.
    """

    def __init__(self, nats: NatsClient, outbox: Outbox, subjects: Subjects, node: str, incarnation: str,
                 hosts: list[str], *, interval: float, down_after: float, on_down: DownCallback,
                 on_gone: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nats = nats
        self.outbox = outbox
        self.subjects = subjects
        self.node = node
        self.incarnation = incarnation
        self.hosts = hosts
        self.interval = interval
        self.down_after = down_after
        self.on_down = on_down
        self.on_gone = on_gone
        """``on_gone(node, incarnation)``: as ``on_down``, but only when this node believes
        that incarnation gone (declared down, left, replaced), not when a live peer says
        it cut this node off: what the incarnation held in the cluster may be freed."""
        self.clock = clock
        # Echoes come every ``interval``; a longer gap means we could not hear for a
        # while (at most half a window, so a gap always leaves the peers a real window).
        self.echo_gap = min(2 * interval, down_after / 2) + CHECK_EVERY
        self.peers: dict[str, Peer] = {}
        self.departed: set[tuple[str, str]] = set()  # (node, incarnation) that left or were replaced
        self.dropped: Counter[str] = Counter()  # sends dropped because their node was believed down
        self._heard_self: float | None = None  # when our own last heartbeat came back
        self._hearing_since: float | None = None  # start of the current unbroken run of echoes
        self._was_deaf = False  # for logging the transitions once
        self._started = clock()
        self._warned_no_echo = False
        self._subscription: Subscription | None = None

    # ------------------------------------------------------------ queries

    def known_down(self, node: str, incarnation: str) -> bool:
        """True when that incarnation of ``node`` is believed gone: it left, it was replaced
        by a newer one, or it is declared down and has not been heard since."""
        if node == self.node:
            return False
        if (node, incarnation) in self.departed:
            return True
        peer = self.peers.get(node)
        if peer is None:
            return False
        if peer.incarnation != incarnation:
            return _newer(peer.incarnation, incarnation)  # a newer one not heard yet is not down
        return peer.down

    def note_dropped(self, node: str) -> None:
        """Count a send to ``node`` dropped because :meth:`known_down` said so."""
        self.dropped[node] += 1

    def hearing(self) -> bool:
        """True while this node can judge its peers: connected, and its own heartbeats
        come back in time."""
        now = self.clock()
        return (bool(self.nats.is_connected) and self._hearing_since is not None and self._heard_self is not None
                and now - self._heard_self <= self.echo_gap)

    def hearing_for(self) -> float:
        """Seconds this node has heard itself without a gap (0 while it cannot hear)."""
        return self.clock() - self._hearing_since if self.hearing() and self._hearing_since is not None else 0.0

    def view(self) -> list[dict[str, Any]]:
        """The nodes this one believes alive: name, incarnation, hosts, heartbeat age (s),
        flaps (times heard again after being declared down), the last flap's age (s) and
        the reason it was then declared down, and sends dropped towards it meanwhile."""
        now = self.clock()
        return [{"node": p.node, "incarnation": p.incarnation, "hosts": p.hosts, "age": now - p.last_seen,
                 "flaps": p.flaps, "last_flap_age": None if p.last_flap is None else now - p.last_flap,
                 "last_down_reason": p.down_reason, "dropped": self.dropped[p.node]}
                for p in sorted(self.peers.values(), key=lambda p: p.node) if not p.down]

    def down_view(self) -> list[dict[str, Any]]:
        """The nodes this one believes down for silence (until heard again): name,
        incarnation, seconds since, reason, flaps so far, sends dropped towards it."""
        now = self.clock()
        return [{"node": p.node, "incarnation": p.incarnation, "since": now - (p.down_since or now),
                 "reason": p.down_reason, "flaps": p.flaps, "dropped": self.dropped[p.node]}
                for p in sorted(self.peers.values(), key=lambda p: p.node) if p.down]

    def incarnation_of(self, node: str) -> str | None:
        """The incarnation of ``node`` this node knows of (heard, or only expected), if any."""
        peer = self.peers.get(node)
        return None if peer is None else peer.incarnation

    def live(self) -> list[str]:
        """The nodes this one has heard and believes alive."""
        return [peer.node for peer in self.peers.values() if peer.heard and not peer.down]

    def expect(self, node: str, incarnation: str) -> None:
        """Watch ``node`` (of ``incarnation``) from now on even if no heartbeat of it has
        arrived yet: a process here depends on it, and a node that dies before its first
        heartbeat reaches us must still be reported down after the window."""
        if node == self.node or node in self.peers or (node, incarnation) in self.departed:
            return
        self.peers[node] = Peer(node, incarnation, [], self.clock(), heard=False)

    # ------------------------------------------------------------ running

    async def start(self) -> None:
        self._subscription = await self.nats.subscribe(self.subjects.all_heartbeats(), cb=self._on_heartbeat)
        self._beat()

    async def run(self) -> None:
        """Beat every ``interval`` and look for silent nodes every ``CHECK_EVERY`` (or
        ``interval`` if shorter) until cancelled (a task owned by the node)."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.interval
        while True:
            await asyncio.sleep(max(min(CHECK_EVERY, self.interval, next_beat - loop.time()), 0.0))
            now = loop.time()
            if now >= next_beat:
                self._beat()
                next_beat = max(next_beat + self.interval, now)
            self.check()

    async def stop(self) -> None:
        """Say goodbye, so others see this node down at once rather than after the window."""
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None
        self.outbox.publish_nowait(self.subjects.heartbeat(self.node), self._body(bye=True))

    def _body(self, bye: bool = False) -> bytes:
        body: dict[str, Any] = {"node": self.node, "incarnation": self.incarnation, "hosts": self.hosts, "bye": bye}
        # Only to nodes heard: an expected one that never beat (perhaps never existed)
        # has nothing to learn, and would grow every heartbeat for good.
        cut = {p.node: [p.incarnation, p.cuts] for p in self.peers.values() if p.cuts and p.heard}
        if cut:
            body["cut"] = cut
        return json.dumps(body).encode()

    def _beat(self) -> None:
        self.outbox.publish_nowait(self.subjects.heartbeat(self.node), self._body())

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = Heartbeat.parse(msg.data)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignoring a malformed heartbeat on %s: %s", msg.subject, err)
            return
        self.heard(beat)

    # ------------------------------------------------------------ decisions

    def heard(self, beat: Heartbeat) -> None:
        """A heartbeat arrived (ours included)."""
        now = self.clock()
        if beat.node == self.node:
            if beat.incarnation == self.incarnation and not beat.bye:
                self._heard_echo(now)
            return
        if (beat.node, beat.incarnation) in self.departed:
            return  # a late beat of an incarnation that left or was replaced
        peer = self.peers.get(beat.node)
        if peer is not None and peer.incarnation != beat.incarnation:
            # An incarnation only expected (named by a holder in the cluster's buckets,
            # never heard) is a claim, not a live node: the one beating replaces it,
            # whichever is newer, and the claim is reported gone (what it held is freed).
            if peer.heard and _newer(peer.incarnation, beat.incarnation):
                self.departed.add((beat.node, beat.incarnation))  # an older one than we know: gone
                return
            self._replace(peer, beat, now)
            peer = self.peers.get(beat.node)
        if beat.bye:
            if peer is not None:
                del self.peers[peer.node]
                if not peer.down:
                    self._report(peer, "left the cluster")
            self.departed.add((beat.node, beat.incarnation))
            return
        if peer is None:
            peer = self.peers[beat.node] = Peer(beat.node, beat.incarnation, beat.hosts, now)
            log.info("node %s is up (incarnation %s, hosts %s)", peer.node, peer.incarnation,
                     ", ".join(peer.hosts) or "none")
        elif peer.down:
            peer.down = False
            peer.flaps += 1
            peer.last_flap = now
            log.warning("node %s is back (it was declared down %.1fs ago: %s); a live peer again, flap %d",
                        peer.node, now - (peer.down_since or now), peer.down_reason, peer.flaps)
        peer.last_seen = now
        peer.hosts = beat.hosts
        peer.heard = True
        self._heard_cut(peer, beat)

    def _replace(self, peer: Peer, beat: Heartbeat, now: float) -> None:
        """``peer`` came back as the newer incarnation of ``beat``: the old one is gone."""
        self.departed.add((peer.node, peer.incarnation))
        del self.peers[peer.node]
        if not peer.down:
            self._report(peer, "restarted as a new incarnation")
        if not beat.bye:  # the node's history (flaps) stays with its name
            self.peers[peer.node] = Peer(peer.node, beat.incarnation, beat.hosts, now, flaps=peer.flaps,
                                         last_flap=peer.last_flap, down_reason=peer.down_reason)
            log.info("node %s is up (incarnation %s, hosts %s)", peer.node, beat.incarnation,
                     ", ".join(beat.hosts) or "none")

    def _heard_cut(self, peer: Peer, beat: Heartbeat) -> None:
        """``peer`` says it declared this incarnation down: fire what we hold on it too."""
        incarnation, times = beat.cut.get(self.node, ("", 0))
        if incarnation != self.incarnation or times <= peer.cuts_heard:
            return
        peer.cuts_heard = times
        log.warning("node %s declared this node down (%d times); our monitors and links of its processes fire too",
                    peer.node, times)
        self._notify(peer.node, peer.incarnation, f"node {peer.node} declared this node down")

    def _heard_echo(self, now: float) -> None:
        if self._heard_self is None or self._hearing_since is None or now - self._heard_self > self.echo_gap:
            if self._was_deaf:
                log.info("hearing the broker again; peers get %.1fs to be heard before any is declared down",
                         self.down_after)
            self._hearing_since = now
            self._was_deaf = False
        self._heard_self = now

    def check(self) -> None:
        """Declare down the peers silent for a window while this node could hear."""
        now = self.clock()
        if not self.hearing():
            if self._hearing_since is not None and not self._was_deaf:
                log.warning("cannot hear the broker (%s); judging no peer until it is heard again",
                            "disconnected" if not self.nats.is_connected else
                            f"own heartbeat {now - (self._heard_self or now):.1f}s old")
                self._was_deaf = True
            if not self.nats.is_connected:
                self._hearing_since = None  # a reconnect starts a new window however soon echoes come
            elif self._heard_self is None and now - self._started > self.down_after and not self._warned_no_echo:
                # Connected for a window and never heard ourselves: a client with no_echo
                # set, or no permission to receive our own subject. Say so, or no peer
                # would ever be declared down without anyone knowing why.
                log.warning("no echo of this node's own heartbeat after %.1fs; judging no peer until one arrives",
                            now - self._started)
                self._warned_no_echo = True
            return
        assert self._heard_self is not None and self._hearing_since is not None
        # Our echo comes every interval; one older than that means what we read lags by
        # about that much, and so may the peer's last beat: the window waits for it too.
        # (Waiting for an echo past the window instead added up to a whole interval to
        # every detection: kill -9 was noticed at 3.0 s instead of 2.55 s by default.)
        lag = max(0.0, now - self._heard_self - self.interval)
        for peer in list(self.peers.values()):
            if peer.down:
                continue
            since = max(peer.last_seen, self._hearing_since)
            if now - since > self.down_after + lag:
                self._declare_down(peer, f"no heartbeat for {now - peer.last_seen:.1f}s")

    def _declare_down(self, peer: Peer, reason: str) -> None:
        peer.down = True
        peer.down_since = self.clock()
        peer.down_reason = reason
        peer.cuts += 1
        self._report(peer, reason)

    def _report(self, peer: Peer, reason: str) -> None:
        log.warning("node %s is down: %s", peer.node, reason)
        self._notify(peer.node, peer.incarnation, reason)
        if self.on_gone is not None:
            try:
                self.on_gone(peer.node, peer.incarnation)
            except Exception:  # noqa: BLE001 - a failing listener must not stop liveness
                log.exception("handling node %s gone failed", peer.node)

    def _notify(self, node: str, incarnation: str, reason: str) -> None:
        try:
            self.on_down(node, incarnation, reason)
        except Exception:  # noqa: BLE001 - a failing listener must not stop liveness
            log.exception("handling node %s down failed", node)
