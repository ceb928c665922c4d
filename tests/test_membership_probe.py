"""Fault probes of the membership relays (``broker/_membership.py``, ``_heartbeats.py``),
on a fake clock: what a digest says of a node must never be younger than the truth."""

from __future__ import annotations

from moonwire.broker import Membership, Subjects
from moonwire.broker._heartbeats import NOT_HEARD, Digest
from moonwire.broker._membership import Heartbeat

from test_membership_relays import FakeNats, FakeOutbox

INTERVAL, WINDOW = 0.5, 2.5


class Clock:
    """One fake clock, and the down reports of the node named ``me``."""

    def __init__(self) -> None:
        self.now = 100.0
        self.downs: list[tuple[str, str, str]] = []

    def membership(self, node: str) -> Membership:
        return Membership(FakeNats(), FakeOutbox(), Subjects(), node, "inc1", [],  # type: ignore[arg-type]
                          interval=INTERVAL, down_after=WINDOW, clock=lambda: self.now,
                          on_down=(lambda *down: self.downs.append(down)) if node == "me" else (lambda *_: None))


def test_an_age_past_what_two_bytes_hold_is_no_news_not_65_seconds() -> None:
    body = Digest.encode("r1", "i", [("a", "p1", [], {}), ("b", "p1", [], {})], [1.5, 100.0], [],
                         whole=True, rid="x")
    assert Digest.parse(body).ages == [1.5, None]
    assert (NOT_HEARD - 1) / 1000 < 100.0


def test_a_relay_back_from_a_long_deafness_does_not_bring_back_a_peer_long_dead() -> None:
    """A relay that could not hear for 100 s judged no one meanwhile, so it still names a
    peer that died then, last heard 100 s ago, for one more window. A reader that
    declared that peer down long ago must not take it for news (a beat 65.5 s old)."""
    c = Clock()
    relay, reader, downs = c.membership("r1"), c.membership("me"), c.downs
    reader.reading_digests = True
    for m in (relay, reader):
        m.heard(Heartbeat("peer", "p1", [], False))
        m.heard(Heartbeat(m.node, "inc1", [], False))
    for _ in range(8):  # the reader hears itself (through another relay), the peer is silent
        c.now += INTERVAL
        reader.heard(Heartbeat("me", "inc1", [], False))
        reader.check()
    assert downs == [("peer", "p1", downs[0][2])] and reader.known_down("peer", "p1")
    c.now = 200.0  # the relay was deaf all along (it judged no one); it hears itself again
    relay.heard(Heartbeat("r1", "inc1", [], False))
    reader.heard(Heartbeat("me", "inc1", [], False))
    reader.heard_digest(Digest.parse(relay.digest()))
    assert reader.known_down("peer", "p1") and "peer" not in reader.live()
    assert reader.peers["peer"].flaps == 0 and len(downs) == 1


def test_a_relay_thawed_from_a_freeze_does_not_relay_the_beats_it_read_late_as_fresh() -> None:
    """A relay frozen (SIGSTOP) for a while reads, when thawed, the beats the broker kept
    for it, before its own echo: a peer that died meanwhile looks heard just now. A
    reader that declared that peer down (through the other relay) must not take the
    thawed relay's digest for news: the relay vouches only for beats heard since it
    hears itself again."""
    c = Clock()
    relay, reader, downs = c.membership("r1"), c.membership("me"), c.downs
    reader.reading_digests = True
    for _ in range(4):  # all beat, the relay relays
        c.now += INTERVAL
        for node in ("r1", "me", "peer"):
            relay.heard(Heartbeat(node, "p1" if node == "peer" else "inc1", [], False))
        reader.heard_digest(Digest.parse(relay.digest()))
        reader.check()
    assert sorted(reader.live()) == ["peer", "r1"]
    # The relay freezes; the peer dies; the reader hears itself through another relay.
    for _ in range(12):
        c.now += INTERVAL
        reader.heard(Heartbeat("me", "inc1", [], False), c.now)
        reader.check()
    assert sorted(d[0] for d in downs) == ["peer", "r1"]
    # Thawed: the broker's backlog first (the peer's last beat), then the relay's own echo.
    relay.heard(Heartbeat("peer", "p1", [], False))
    relay.heard(Heartbeat("me", "inc1", [], False))
    c.now += 0.01
    relay.heard(Heartbeat("r1", "inc1", [], False))
    reader.heard_digest(Digest.parse(relay.digest()))
    assert reader.known_down("peer", "p1") and reader.peers["peer"].flaps == 0
