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

Large clusters: relays. Were every node to hear every heartbeat, the broker would carry
N² messages an interval (500,000 a second at 500 nodes; ``bench/membership.py``). So
when a cluster has more than ``mesh_up_to`` nodes, only its ``relays`` lowest-named live
nodes (each node decides from its own view, every interval) hear every heartbeat; each
sends, every interval, a *digest* on ``<prefix>.node.<relay>.dg``: every node it believes
alive with its incarnation, hosts, ``cut`` and how long ago its last heartbeat arrived,
and the goodbyes of the last window (``_heartbeats.py``; the roster of nodes is sent
whole only when it changed or every ``WHOLE_EVERY`` digests, otherwise two bytes of age a
node). The other nodes read digests only, and the rules above stand, with "heard" meaning "heard by a relay" and its time
taken back by the age the relay gave (so a beat is never younger for being relayed):

- a node's own entry in a digest is its echo (it travelled the same path as the peers'
  beats), so "I can hear" is "a relay hears me and I hear the relay"; read from digests
  the echo may be two intervals old, not one, and the lag and the gap allow for that;
- only news counts: an entry no later than what this node knows changes nothing (two
  relays, one slower, cannot bring a silent peer back);
- a node that finds itself in no digest for as long as it takes to be deaf (its relays
  stopped, or it is new) hears every heartbeat again at once, and gives every peer one
  window, as after any deafness;
  a node that becomes one of the lowest-named (a relay died) starts relaying.

Every node subscribes to the digests and, until it reads them, to all heartbeats; a new
node hears every heartbeat until it finds itself in a digest. Digests are sent from
``mesh_up_to // 2`` nodes on and read from ``mesh_up_to`` (back to every heartbeat below
three quarters of it), so views that differ by a few nodes do not flap between the two.
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

from ._heartbeats import MAX_HEARTBEAT_BYTES, WHOLE_EVERY, Digest, Heartbeat, Rosters, cut_json
from ._outbox import Outbox
from ._subjects import Subjects

__all__ = ["MAX_HEARTBEAT_BYTES", "WHOLE_EVERY", "Digest", "Heartbeat", "Membership", "Peer"]

log = logging.getLogger("moonwire.membership")

CHECK_EVERY = 0.1
RELAYS = 2
"""How many nodes (the lowest-named live ones) relay heartbeats in a large cluster."""
MESH_UP_TO = 16
"""A node hears every heartbeat itself while it knows at most this many nodes."""


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
    cut: dict[str, tuple[str, int]] = field(default_factory=dict)  # its own cut list, as last heard


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
                 on_gone: Callable[[str, str], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 relays: int = RELAYS, mesh_up_to: int = MESH_UP_TO) -> None:
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
        # Read from digests, our echo (our entry in one) is up to two intervals old.
        self.digest_echo_gap = min(3 * interval, down_after / 2) + CHECK_EVERY
        self.relays = relays
        self.mesh_up_to = mesh_up_to
        self.relaying = False  # one of the lowest-named nodes of a large cluster: sends digests
        self.reading_digests = False  # judging peers by relays' digests, not hearing every beat
        self.peers: dict[str, Peer] = {}
        self.departed: set[tuple[str, str]] = set()  # (node, incarnation) that left or were replaced
        self.dropped: Counter[str] = Counter()  # sends dropped because their node was believed down
        self._heard_self: float | None = None  # when our own last heartbeat came back
        self._hearing_since: float | None = None  # start of the current unbroken run of echoes
        self._was_deaf = False  # for logging the transitions once
        self._started = clock()
        self._warned_no_echo = False
        self._beats: Subscription | None = None  # every heartbeat: while not reading digests
        self._digests: Subscription | None = None
        self._digest_echo: float | None = None  # when we last were in a digest (heard at, as a beat)
        self._byes: dict[tuple[str, str], float] = {}  # goodbyes heard in the last window: relayed
        self._rosters = Rosters(keep=4 * relays)

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
        gap = self.digest_echo_gap if self.reading_digests else self.echo_gap
        return (bool(self.nats.is_connected) and self._hearing_since is not None and self._heard_self is not None
                and now - self._heard_self <= gap)

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
        self._digests = await self.nats.subscribe(self.subjects.all_digests(), cb=self._on_digest)
        self._beats = await self.nats.subscribe(self.subjects.all_heartbeats(), cb=self._on_heartbeat)
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
                await self._steer()
            self.check()

    async def stop(self) -> None:
        """Say goodbye, so others see this node down at once rather than after the window."""
        for subscription in (self._beats, self._digests):
            if subscription is not None:
                await subscription.unsubscribe()
        self._beats = self._digests = None
        self.outbox.publish_nowait(self.subjects.heartbeat(self.node), self._body(bye=True))

    def _body(self, bye: bool = False) -> bytes:
        body: dict[str, Any] = {"node": self.node, "incarnation": self.incarnation, "hosts": self.hosts, "bye": bye}
        cut = self._own_cut()
        if cut:
            body["cut"] = cut_json(cut)
        return json.dumps(body).encode()

    def _own_cut(self) -> dict[str, tuple[str, int]]:
        # Only to nodes heard: an expected one that never beat (perhaps never existed)
        # has nothing to learn, and would grow every heartbeat for good.
        return {p.node: (p.incarnation, p.cuts) for p in self.peers.values() if p.cuts and p.heard}

    def _beat(self) -> None:
        self.outbox.publish_nowait(self.subjects.heartbeat(self.node), self._body())

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = Heartbeat.parse(msg.data)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignoring a malformed heartbeat on %s: %s", msg.subject, err)
            return
        self.heard(beat)

    async def _on_digest(self, msg: Msg) -> None:
        try:
            digest = Digest.parse(msg.data)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignoring a malformed digest on %s: %s", msg.subject, err)
            return
        self.heard_digest(digest)

    # ------------------------------------------------------------ large clusters: relays

    async def _steer(self) -> None:
        """Each interval: relay if this node is one of the lowest-named of a large cluster,
        and read digests instead of every heartbeat while it is not one and hears itself
        in a digest (back to every heartbeat at once when not)."""
        now = self.clock()
        for key, at in list(self._byes.items()):
            if now - at > self.down_after:
                del self._byes[key]  # relayed for a window: enough for anyone reading
        names = sorted([self.node, *self.live()])
        first = self.node in names[:self.relays]
        self.relaying = first and len(names) > self.mesh_up_to // 2
        if self.relaying and self.hearing():
            self.outbox.publish_nowait(self.subjects.digest(self.node), self.digest())
        in_digests = self._digest_echo is not None and now - self._digest_echo <= self.digest_echo_gap
        large = len(names) > (self.mesh_up_to * 3 // 4 if self.reading_digests else self.mesh_up_to)
        if not first and large and in_digests:
            if self._beats is not None:
                log.info("%d nodes: reading the relays' digests instead of every heartbeat", len(names))
                self.reading_digests = True
                beats, self._beats = self._beats, None
                await beats.unsubscribe()
        elif self._beats is None:
            log.info("%d nodes%s: hearing every heartbeat again", len(names),
                     "" if in_digests else ", no recent digest with this node in it")
            self._beats = await self.nats.subscribe(self.subjects.all_heartbeats(), cb=self._on_heartbeat)
            self.reading_digests = False
            self._beat()  # our echo now comes this way: at once, not an interval from now

    def digest(self) -> bytes:
        """What this node heard, as a relay sends it: every node it believes alive (itself
        included, as its own echo), how long ago each was last heard, and recent goodbyes."""
        now = self.clock()
        live = sorted((p for p in self.peers.values() if p.heard and not p.down), key=lambda p: p.node)
        # A beat read before we heard ourselves again (a freeze's backlog) came we know not when: no news.
        since = now if self._hearing_since is None else self._hearing_since
        members = [((p.node, p.incarnation, p.hosts, p.cut), now - p.last_seen if p.last_seen >= since else None)
                   for p in live]
        if self._heard_self is not None:
            members.append(((self.node, self.incarnation, self.hosts, self._own_cut()), now - self._heard_self))
        return self._rosters.encode(self.node, self.incarnation, members, list(self._byes))

    def heard_digest(self, digest: Digest) -> None:
        """A relay's digest arrived. Our own entry is our echo; the others are heartbeats
        heard when the relay heard them, when this node reads digests (otherwise it hears
        them itself). Only what is newer than what this node knows counts."""
        now = self.clock()
        entries = self._rosters.entries(digest)
        for entry in entries:
            if entry.node != self.node or entry.incarnation != self.incarnation:
                continue
            at = now - entry.age
            self._digest_echo = max(self._digest_echo or at, at)
            if self.reading_digests:
                self._heard_echo(at)
        if not self.reading_digests:
            return
        for entry in entries:
            if entry.node == self.node:
                continue
            peer, at = self.peers.get(entry.node), now - entry.age
            if peer is not None and peer.incarnation == entry.incarnation:
                if at <= peer.last_seen:
                    continue  # not news: we knew of a later beat (or declared it down since)
                if peer.heard and not peer.down and peer.hosts == entry.hosts and self.node not in entry.cut:
                    peer.last_seen, peer.cut = at, entry.cut  # the common case: only alive still
                    continue
            self.heard(Heartbeat(entry.node, entry.incarnation, entry.hosts, False, entry.cut), at)
        for node, incarnation in digest.byes:
            self.heard(Heartbeat(node, incarnation, [], True), now)

    # ------------------------------------------------------------ decisions

    def heard(self, beat: Heartbeat, at: float | None = None) -> None:
        """A heartbeat arrived (ours included), now or, read from a digest, ``at``
        (``clock()`` time: when it would have arrived had we heard it ourselves)."""
        now = self.clock() if at is None else at
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
            self._byes[(beat.node, beat.incarnation)] = now
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
        peer.last_seen = max(peer.last_seen, now)
        peer.hosts = beat.hosts
        peer.cut = beat.cut
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
        if self._heard_self is not None and now <= self._heard_self:
            return  # an older echo than one we have (read from a slower relay's digest)
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
        lag = max(0.0, now - self._heard_self - (2 if self.reading_digests else 1) * self.interval)
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
