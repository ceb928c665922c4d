"""Streams between two nodes: exactly once and in order over a wire that loses,
duplicates and reorders (pure bookkeeping, driven by hand with a fake clock; the
end-to-end test with real NATS servers killed under real nodes is in
test_stream_failover.py)."""

from __future__ import annotations

import json
import random

import pytest

from moonwire.broker import SEQ_HEADER, Streams
from moonwire.broker._streams import RESEND_AFTER


class Wire:
    """Two nodes' Streams joined by a wire the test controls: it may drop, duplicate or
    reorder what is in flight."""

    def __init__(self) -> None:
        self.now = 0.0
        self.in_flight: list[tuple[str, bytes, dict[str, str]]] = []
        self.a: Streams[int] = Streams("a", "inc1", self._publish, lambda n: f"ack.{n}", clock=lambda: self.now)
        self.b: Streams[int] = Streams("b", "inc9", self._publish, lambda n: f"ack.{n}", clock=lambda: self.now)
        self.received: list[int] = []

    def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        self.in_flight.append((subject, body, headers))

    def send(self, n: int) -> None:
        headers = self.a.stamp("b", "p.b.x", str(n).encode(), {"Mw-Topic": "t"})
        self.in_flight.append(("p.b.x", str(n).encode(), headers))

    def deliver(self, order: list[int] | None = None) -> None:
        """Deliver what is in flight (in ``order`` of indexes, default all in order)."""
        flying, self.in_flight = self.in_flight, []
        for i in (order if order is not None else range(len(flying))):
            subject, body, headers = flying[i]
            if subject == "ack.a":
                self.a.on_ack(body)
            elif subject == "p.b.x":
                self.b.receive(headers, int(body), self.received.append)

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.a.tick()
        self.b.tick()


def test_in_order_delivery_and_acks_trim_the_sender() -> None:
    wire = Wire()
    for n in range(1, 6):
        wire.send(n)
    wire.deliver()
    assert wire.received == [1, 2, 3, 4, 5]
    assert wire.a.statistics().unacked == 5
    wire.tick(0.06)  # b acknowledges
    wire.deliver()
    assert wire.a.statistics().unacked == 0
    assert wire.in_flight == []


def test_a_lost_message_is_asked_for_and_sent_again_in_order() -> None:
    wire = Wire()
    for n in range(1, 5):
        wire.send(n)
    wire.deliver([0, 2, 3])  # 2 is lost
    assert wire.received == [1]
    assert wire.b.statistics().held == 2
    nack = json.loads(wire.in_flight[0][1])
    assert nack == {"from": "b", "to": "inc1", "seq": 1, "nack": True}
    wire.deliver()  # the nack reaches a, which sends 2, 3, 4 again
    wire.deliver()
    assert wire.received == [1, 2, 3, 4]
    assert wire.b.statistics().duplicates == 2  # 3 and 4 came twice


def test_a_lost_tail_is_sent_again_after_resend_after() -> None:
    wire = Wire()
    wire.send(1)
    wire.send(2)
    wire.deliver([0])  # 2 is lost, and nothing after it shows the gap
    wire.tick(0.06)
    wire.deliver()  # ack of 1
    assert wire.received == [1]
    wire.tick(RESEND_AFTER)
    wire.deliver()
    assert wire.received == [1, 2]


def test_duplicates_and_reordering_deliver_each_once_in_order() -> None:
    rng = random.Random(7)
    wire = Wire()
    sent = 0
    for _ in range(300):
        for _ in range(rng.randint(0, 5)):
            sent += 1
            wire.send(sent)
        flying = list(range(len(wire.in_flight)))
        rng.shuffle(flying)
        kept = [i for i in flying if rng.random() > 0.2]  # lose a fifth
        kept += [i for i in kept if rng.random() < 0.1]  # duplicate some
        wire.deliver(kept)
        wire.tick(rng.choice([0.01, 0.06, 0.2]))
    for _ in range(40):  # then a perfect wire until everything is through
        wire.tick(RESEND_AFTER)
        wire.deliver()
        wire.deliver()
    assert wire.received == list(range(1, sent + 1))
    assert wire.a.statistics().unacked == 0


def test_a_new_receiver_starts_at_the_floor() -> None:
    wire = Wire()
    for n in range(1, 4):
        wire.send(n)
    wire.deliver()
    wire.tick(0.06)
    wire.deliver()  # 1-3 acknowledged
    # b restarts: a new Streams knows nothing of a's stream
    wire.b = Streams("b", "inc10", wire._publish, lambda n: f"ack.{n}", clock=lambda: wire.now)
    wire.send(4)
    wire.deliver()
    assert wire.received == [1, 2, 3, 4]
    assert wire.b.statistics().held == 0


def test_forgetting_a_node_down_moves_the_floor_past_what_it_missed() -> None:
    wire = Wire()
    wire.send(1)
    wire.deliver()
    wire.send(2)
    wire.in_flight.clear()  # lost while b was believed down
    wire.a.forget("b")
    wire.send(3)
    wire.deliver()
    assert wire.received == [1, 3]  # 2 is accounted for by the node-down, not waited for
    assert wire.b.statistics().held == 0


def test_acks_for_another_incarnation_are_ignored_and_bad_ones_raise() -> None:
    wire = Wire()
    wire.send(1)
    wire.a.on_ack(json.dumps({"from": "b", "to": "inc0", "seq": 1}).encode())
    assert wire.a.statistics().unacked == 1
    for body in (b"[]", b"{}", b'{"from": "b", "to": "inc1", "seq": "1"}', b"not json"):
        with pytest.raises(ValueError):
            wire.a.on_ack(body)


@pytest.mark.parametrize("stamp", ["", "a", "a.b.c", "a.inc.x.1", "a.inc.1.2", "a.inc.3.0", ".inc.1.1"])
def test_a_malformed_stamp_raises(stamp: str) -> None:
    wire = Wire()
    with pytest.raises(ValueError):
        wire.b.receive({SEQ_HEADER: stamp}, 1, lambda item: None)


def test_messages_outside_a_stream_pass_through() -> None:
    wire = Wire()
    got: list[int] = []
    wire.b.receive(None, 5, got.append)
    wire.b.receive({"Mw-Topic": "x"}, 6, got.append)
    assert got == [5, 6]


def test_the_sender_holds_at_most_max_unacked() -> None:
    sent: list[str] = []
    a: Streams[int] = Streams("a", "i", lambda s, b, h: sent.append(s), lambda n: n, max_unacked=3)
    for n in range(5):
        a.stamp("b", "p", b"", {})
    stats = a.statistics()
    assert stats.unacked == 3 and stats.dropped_unacked == 2


def test_a_control_request_waits_for_the_stream_messages_sent_before_it() -> None:
    wire = Wire()
    for n in range(1, 4):
        wire.send(n)
    headers = wire.a.after("b", {"x": "y"})  # a cancel sent after message 3, on another connection
    assert headers["Mw-After"] == "a.inc1.3" and headers["x"] == "y"
    ran: list[list[int]] = []
    wire.b.when_delivered(headers, lambda: ran.append(list(wire.received)))
    assert ran == []  # the cancel came first: it waits
    wire.deliver([1, 0])  # 2 comes early; 3 is lost
    assert ran == []
    wire.tick(RESEND_AFTER)
    wire.deliver()  # b's ack of 2 reaches a
    assert ran == []
    wire.tick(RESEND_AFTER)
    wire.deliver()  # a sends 3 again
    assert ran == [[1, 2, 3]]  # and the request runs once message 3 was handled
    wire.b.when_delivered(headers, lambda: ran.append([]))
    assert len(ran) == 2  # the stream is past it already: at once


def test_a_control_request_runs_anyway_after_waiting_too_long() -> None:
    wire = Wire()
    wire.send(1)
    headers = wire.a.after("b", None)
    wire.in_flight.clear()
    wire.a.forget("b")  # message 1 will never come
    ran: list[bool] = []
    wire.b.when_delivered(headers, lambda: ran.append(True))
    wire.tick(1.0)
    assert ran == []
    wire.tick(5.0)
    assert ran == [True]


def test_a_control_request_with_nothing_before_it_or_no_stamp_runs_at_once() -> None:
    wire = Wire()
    ran: list[int] = []
    wire.b.when_delivered(wire.a.after("b", None), lambda: ran.append(1))  # a has sent b nothing
    wire.b.when_delivered(None, lambda: ran.append(2))
    assert ran == [1, 2]
    with pytest.raises(ValueError):
        wire.b.when_delivered({"Mw-After": "a.b"}, lambda: None)


def test_a_stream_nothing_acknowledges_is_never_sent_again() -> None:
    # Its subject may be a plain subscriber's (a tap, a test's observer), not a node's.
    published: list[str] = []
    a: Streams[int] = Streams("a", "i", lambda s, b, h: published.append(s), lambda n: f"ack.{n}",
                              clock=lambda: now)
    now = 0.0
    for _ in range(2000):
        a.stamp("tap", "p.tap.x", b"", {})
    now = 10.0
    a.tick()
    assert published == []
    assert a.statistics().unacked == 1024  # and it keeps a bounded tail


def test_acknowledged_once_every_node_that_acknowledges_has_everything() -> None:
    wire = Wire()
    assert wire.a.acknowledged()
    wire.send(1)
    wire.deliver()
    wire.tick(0.06)
    wire.deliver()  # established, and 1 acknowledged
    assert wire.a.acknowledged()
    wire.send(2)
    wire.a.stamp("tap", "p.tap.x", b"", {})  # a plain subscriber never acknowledges: not waited for
    assert not wire.a.acknowledged()
    wire.deliver()
    wire.tick(0.06)
    wire.deliver()
    assert wire.a.acknowledged()
    fresh = Wire()  # a first message, nothing acknowledged yet: waited for once the caller knows b is a node
    fresh.send(1)
    assert fresh.a.acknowledged() and not fresh.a.acknowledged(lambda node: node == "b")


def test_a_gap_that_stays_open_is_skipped_and_what_waited_behind_it_handled() -> None:
    # A forged stamp from outside (or a sender gone for good): nothing ever fills the gap.
    wire = Wire()
    got: list[int] = []
    wire.b.receive({SEQ_HEADER: "x.forged.5.1"}, 5, got.append)
    wire.b.receive({SEQ_HEADER: "x.forged.6.1"}, 6, got.append)
    assert got == [] and wire.b.statistics().held == 2
    wire.now += 9.0
    wire.b.tick(got.append)
    assert got == []
    wire.now += 1.0
    wire.b.tick(got.append)
    assert got == [5, 6] and wire.b.statistics().held == 0


def test_early_messages_are_held_up_to_a_bound_across_all_streams() -> None:
    b: Streams[int] = Streams("b", "i", lambda s, body, h: None, lambda n: n, max_held=10)
    for n in range(20):  # twenty forged streams, each with a gap
        b.receive({SEQ_HEADER: f"x{n}.i.2.1"}, n, lambda item: None)
    stats = b.statistics()
    assert stats.held == 10 and stats.dropped_early == 10


@pytest.mark.parametrize("body", [b"[" * 1000 + b"]" * 1000, b" " * 2000])
def test_an_oversize_or_deep_ack_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        Wire().a.on_ack(body)
