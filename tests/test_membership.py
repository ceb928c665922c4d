"""Membership that heals (DESIGN §6, §13; issue 14, finding 2).

The state machine is driven with a fake clock; then real node OS processes on a real
nats-server that is stopped and started again under them, a peer killed during the
outage, and a peer frozen (SIGSTOP) for longer than the window and let go again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from moonwire.broker import Membership, Subjects
from moonwire.broker._membership import Heartbeat
from moonwire.node import ServerProcess, free_port, start_nats
from support import NodeProcess, run_cli, write_project

# ---------------------------------------------------------------- the state machine

INTERVAL, WINDOW = 0.5, 2.5


@dataclass
class FakeNats:
    is_connected: bool = True


@dataclass
class FakeOutbox:
    published: list[tuple[str, bytes]] = field(default_factory=list)

    def publish_nowait(self, subject: str, body: bytes, **_: Any) -> None:
        self.published.append((subject, body))


class Harness:
    """A Membership of node ``me`` with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.nats = FakeNats()
        self.outbox = FakeOutbox()
        self.downs: list[tuple[str, str, str]] = []
        self.down_at: list[float] = []
        self.m = Membership(self.nats, self.outbox, Subjects(), "me", "inc1", [],  # type: ignore[arg-type]
                            interval=INTERVAL, down_after=WINDOW, on_down=self.on_down, clock=lambda: self.now)

    def on_down(self, node: str, incarnation: str, reason: str) -> None:
        self.downs.append((node, incarnation, reason))
        self.down_at.append(self.now)

    def beat(self, node: str, incarnation: str = "p1", *, bye: bool = False,
             cut: dict[str, tuple[str, int]] | None = None) -> None:
        self.m.heard(Heartbeat(node, incarnation, [], bye, cut or {}))

    def run(self, seconds: float, *, beating: tuple[str, ...] = ("me", "peer"), step: float = 0.1) -> None:
        """Let ``seconds`` pass: the nodes in ``beating`` beat every interval, and the
        membership checks every step, as its run loop does."""
        end = self.now + seconds
        next_beat = self.now
        while self.now < end - 1e-9:
            self.now = round(self.now + step, 6)
            if self.now >= next_beat - 1e-9:
                for node in beating:
                    self.beat(node, "inc1" if node == "me" else "p1")
                next_beat = self.now + INTERVAL
            self.m.check()


def test_a_silent_peer_is_down_then_live_again_when_heard() -> None:
    h = Harness()
    h.run(1.0)
    h.run(WINDOW + INTERVAL + 0.3, beating=("me",))
    assert h.downs == [("peer", "p1", h.downs[0][2])] and h.downs[0][2].startswith("no heartbeat for")
    assert h.m.known_down("peer", "p1")
    assert [p["node"] for p in h.m.down_view()] == ["peer"] and h.m.view() == []
    h.m.note_dropped("peer")

    h.beat("peer")  # heard again: a live peer at once
    assert not h.m.known_down("peer", "p1")
    [peer] = h.m.view()
    assert (peer["node"], peer["flaps"], peer["dropped"]) == ("peer", 1, 1)
    assert peer["last_flap_age"] == 0.0 and peer["last_down_reason"].startswith("no heartbeat for")
    h.run(WINDOW * 2)
    assert len(h.downs) == 1  # nothing more fired


def test_no_judgement_while_disconnected_and_one_window_after_hearing_again() -> None:
    h = Harness()
    h.run(1.0)
    h.nats.is_connected = False
    h.run(WINDOW * 4, beating=())  # a broker outage of four windows
    assert h.downs == [] and not h.m.hearing()
    h.nats.is_connected = True
    h.run(WINDOW - 0.2, beating=("me",))  # we hear ourselves; the peer is slower to come back
    assert h.downs == []
    h.run(WINDOW, beating=("me", "peer"))
    assert h.downs == [] and not h.m.known_down("peer", "p1")


def test_a_stale_own_heartbeat_means_no_judgement() -> None:
    """A stalled loop or a delayed inbound path: connected, but our echo is late too."""
    h = Harness()
    h.run(1.0)
    h.run(WINDOW * 3, beating=())  # nothing read: not even our own beats
    assert h.downs == [] and h.m.hearing_for() == 0.0
    h.run(0.5, beating=("me", "peer"))
    assert h.downs == []


def test_a_peer_that_died_during_the_outage_is_reported_one_window_after_it() -> None:
    h = Harness()
    h.run(1.0)
    h.nats.is_connected = False
    h.run(WINDOW * 2, beating=())
    h.nats.is_connected = True
    back = h.now
    h.run(WINDOW * 2, beating=("me",))
    [(node, _, reason)] = h.downs
    assert node == "peer" and reason.startswith("no heartbeat for")
    # Reported after one full window of hearing ourselves (not at once), by the first
    # own echo past it.
    assert WINDOW < h.down_at[0] - back <= WINDOW + INTERVAL + 0.2


def test_goodbye_and_new_incarnation_are_down_at_once_and_stay_down() -> None:
    h = Harness()
    h.run(1.0)
    h.beat("peer", bye=True)
    assert h.downs == [("peer", "p1", "left the cluster")]
    h.beat("peer")  # a late beat of the incarnation that left
    assert h.m.known_down("peer", "p1") and h.m.view() == []
    h.beat("peer", "p2")
    assert h.m.known_down("peer", "p1") and not h.m.known_down("peer", "p2")
    h.beat("peer", "p3")
    assert h.downs[-1] == ("peer", "p2", "restarted as a new incarnation")
    h.beat("peer", "p2")  # late: ignored
    assert [p["incarnation"] for p in h.m.view()] == ["p3"] and len(h.downs) == 2
    # A PID of an incarnation newer than any heard is not known down.
    assert not h.m.known_down("peer", "p4")


def test_a_peer_that_cut_us_off_makes_us_fire_our_watches_of_it_once() -> None:
    h = Harness()
    h.run(1.0)
    h.beat("peer", cut={"me": ("inc1", 1)})
    h.beat("peer", cut={"me": ("inc1", 1)})
    h.beat("peer", cut={"me": ("inc0", 5)})  # an earlier incarnation of us: not ours
    assert h.downs == [("peer", "p1", "node peer declared this node down")]
    assert not h.m.known_down("peer", "p1")  # it stays a live peer


def test_a_cut_is_a_node_down_for_our_watches_but_not_gone() -> None:
    """A live peer that declared us down: our monitors of its processes fire (on_down),
    but it is not gone, so what it holds in the cluster stays (on_gone is not called)."""
    h = Harness()
    gone: list[tuple[str, str]] = []
    h.m.on_gone = lambda node, incarnation: gone.append((node, incarnation))
    h.run(1.0)
    h.beat("peer", cut={"me": ("inc1", 1)})
    assert [d[0] for d in h.downs] == ["peer"] and gone == []
    h.run(WINDOW + 1.0, beating=("me",))  # now it really goes silent
    assert gone == [("peer", "p1")]


def test_our_beat_names_the_peers_we_declared_down() -> None:
    h = Harness()
    h.run(1.0)
    h.run(WINDOW + 1.0, beating=("me",))
    h.outbox.published.clear()
    h.run(INTERVAL, beating=())
    h.m._beat()
    body = json.loads(h.outbox.published[-1][1])
    assert body["cut"] == {"peer": ["p1", 1]}


def test_a_peer_expected_but_never_heard_is_down_after_a_window_of_hearing() -> None:
    h = Harness()
    h.run(1.0, beating=("me",))
    h.m.expect("peer", "p1")
    h.run(WINDOW - 0.2, beating=("me",))
    assert h.downs == []
    h.run(INTERVAL + 0.3, beating=("me",))
    assert [d[0] for d in h.downs] == ["peer"]


def test_an_expected_incarnation_is_a_claim_the_live_one_replaces_whichever_is_newer() -> None:
    """A holder in the cluster's buckets may name an incarnation that is not the live
    one (left by an earlier run after a clock step, or written by hand): expected, it
    must not make the live node's heartbeats look stale, nor ride in our heartbeats."""
    h = Harness()
    h.run(1.0, beating=("me",))
    h.m.expect("peer", "zzzz")  # "newer" than p1
    h.run(WINDOW + INTERVAL + 0.3, beating=("me",))
    assert [(d[0], d[1]) for d in h.downs] == [("peer", "zzzz")]
    h.m._beat()
    assert "cut" not in json.loads(h.outbox.published[-1][1])  # never heard: nothing to tell it
    h.run(1.0)  # the live peer, p1, beats
    assert h.m.peers["peer"].incarnation == "p1" and not h.m.peers["peer"].down
    assert not h.m.known_down("peer", "p1") and h.m.known_down("peer", "zzzz")
    # Expected while up: the same, reported at once when the live one is heard.
    h2 = Harness()
    h2.run(0.5, beating=("me",))
    h2.m.expect("peer", "zzzz")
    h2.run(0.5)
    assert [(d[0], d[1]) for d in h2.downs] == [("peer", "zzzz")] and h2.m.peers["peer"].incarnation == "p1"


def test_never_hearing_our_own_heartbeat_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    h.run(WINDOW * 2, beating=("peer",))  # connected, but our own beats never come back
    assert h.downs == []
    assert [r.message for r in caplog.records if "no echo" in r.message] == [
        "no echo of this node's own heartbeat after 2.6s; judging no peer until one arrives"]


@pytest.mark.parametrize("body", [b"[]", b'{"node": "x"}', b'{"node": "x", "incarnation": "1", "cut": [1]}',
                                  b'{"node": "x", "incarnation": "1", "cut": {"me": 5}}', b"[" * 100_000,
                                  b"\xff", b'{"node": "x", "incarnation": "1", "hosts": 3}', b" " * 300_000,
                                  b'{"node": "x", "incarnation": "1", "cut": {"me": ["1", 1e400]}}'])
def test_a_malformed_heartbeat_is_refused_with_a_value_error(body: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        Heartbeat.parse(body)


# ---------------------------------------------------------------- real nodes

FAST = ("--set", "heartbeat.interval=100ms", "--set", "heartbeat.down_after=1s")
WINDOW_S = 1.0

PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host}
          - {name: relay, kind: process.lua, source: file://relay.lua}
    """,
    # Attached to a peer relay (monitor and link, trapping): prints every event; a
    # "relay" message is forwarded to the peer as "got", which the peer prints.
    "relay.lua": """
        local function main(peer, attach)
          process.set_options({ trap_links = true })
          local inbox, events = process.inbox(), process.events()
          local function hold(pid)
            peer = pid
            assert(process.monitor(peer)); assert(process.link(peer))
            print("attached to " .. peer)
          end
          if peer and attach then hold(peer); process.send(peer, "hello", process.pid()) end
          while true do
            local r = channel.select({ inbox:case_receive(), events:case_receive() })
            if r.channel == events then
              local err = r.value.result and r.value.result.error
              print("event " .. r.value.kind .. " from " .. r.value.from .. ": " .. tostring(err))
            else
              local topic, body = r.value:topic(), r.value:payload():data()
              if topic == "hello" then hold(body)
              elseif topic == "relay" then process.send(peer, "got", body)
              elseif topic == "got" then print("got " .. tostring(body))
              elseif topic == "quit" then error("quitting") end
            end
          end
        end
        return main
    """,
}


class RestartableNats:
    """A real nats-server the test can stop and start again on the same port and store."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.server: ServerProcess | None = None

    @property
    def address(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await start_nats(self.data_dir, port=self.port)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None


@pytest.fixture
async def restartable_nats(tmp_path: Path):
    nats = RestartableNats(tmp_path / "nats")
    await nats.start()
    yield nats
    await nats.stop()


@dataclass
class Pair:
    """Nodes na and nb, a relay on each attached to the other."""

    a: NodeProcess
    b: NodeProcess
    relay_a: str
    relay_b: str
    project: Path
    url: str

    async def cli(self, command: str, *args: str) -> str:
        code, out, err = await run_cli(command, "--project", str(self.project), "--nats", self.url, *args)
        assert code == 0, (out, err)
        return out

    async def relay(self, via: str, text: str) -> None:
        """Ask the relay ``via`` to send ``text`` to its peer (which prints ``got text``)."""
        await self.cli("send", via, "relay", json.dumps(text))

    async def info(self) -> dict[str, Any]:
        return json.loads(await self.cli("nodes", "--json"))


async def start_pair(tmp_path: Path, url: str, spawn_node) -> Pair:
    project = write_project(tmp_path / "project", PROJECT)
    a = await spawn_node(project, "na", nats_url=url, args=FAST)
    b = await spawn_node(project, "nb", nats_url=url, args=FAST)
    pair = Pair(a, b, "", "", project, url)
    pair.relay_a = (await pair.cli("spawn", "--host", "app:host", "--node", "na", "app:relay")).strip()
    pair.relay_b = (await pair.cli("spawn", "--host", "app:host", "--node", "nb", "app:relay",
                                   json.dumps(pair.relay_a), "true")).strip()
    await a.wait_for_line(r"attached to \{nb@")
    await b.wait_for_line(r"attached to \{na@")
    return pair


async def flows(pair: Pair, tag: str) -> None:
    """A message sent now crosses both ways between the relays."""
    await pair.relay(pair.relay_a, f"{tag}-ab")
    await pair.relay(pair.relay_b, f"{tag}-ba")
    await pair.b.wait_for_line(f"got {tag}-ab")
    await pair.a.wait_for_line(f"got {tag}-ba")


async def info_until(pair: Pair, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """``moonwire nodes --json`` again until ``predicate`` holds of it (state the nodes
    offer no event for); each round is one CLI run."""
    answer: dict[str, Any] = {}
    for _ in range(60):
        answer = await pair.info()
        if predicate(answer):
            return answer
    raise AssertionError(f"timed out waiting for {what}: {answer}")


async def hearing_for(pair: Pair, seconds: float) -> dict[str, Any]:
    """Both nodes answer and have heard themselves for ``seconds``: long enough after a
    reconnect that a false node-down would have fired."""
    return await info_until(pair, lambda answer: all(
        n in answer["nodes"] and answer["nodes"][n]["hearing_for"] > seconds for n in ("na", "nb")),
        f"both nodes to hear themselves for {seconds}s")


@pytest.mark.parametrize("outage", [1.0, 2.5 * WINDOW_S], ids=["outage-1s", "outage-2.5-windows"])
async def test_broker_restart_fires_no_node_down_and_sends_flow_after(tmp_path: Path, restartable_nats: RestartableNats,
                                                                     spawn_node, outage: float) -> None:
    pair = await start_pair(tmp_path, restartable_nats.address, spawn_node)
    await flows(pair, "before")
    await restartable_nats.stop()
    await pair.a.wait_for_line("disconnected from NATS")
    await pair.b.wait_for_line("disconnected from NATS")
    await asyncio.sleep(outage)  # the outage itself: nothing to wait for but time
    await restartable_nats.start()
    await pair.a.wait_for_line("reconnected to NATS")
    await pair.b.wait_for_line("reconnected to NATS")
    await flows(pair, "after")
    answer = await hearing_for(pair, 2 * WINDOW_S)
    for node in (pair.a, pair.b):
        assert "is down" not in node.output, node.output
        assert "event " not in node.output, node.output  # no monitor or link fired
        assert "exited with an error" not in node.output, node.output
    assert all(answer["nodes"][n]["down"] == [] and answer["nodes"][n]["dropped_to_down_nodes"] == 0
               for n in ("na", "nb")), answer
    await flows(pair, "later")


async def test_a_peer_killed_during_an_outage_is_reported_down_after_it(tmp_path: Path,
                                                                        restartable_nats: RestartableNats,
                                                                        spawn_node) -> None:
    pair = await start_pair(tmp_path, restartable_nats.address, spawn_node)
    await restartable_nats.stop()
    await pair.a.wait_for_line("disconnected from NATS")
    await pair.b.kill()
    await asyncio.sleep(2 * WINDOW_S)  # the outage: nothing to wait for but time
    assert "is down" not in pair.a.output  # na cannot hear: it judges nobody
    await restartable_nats.start()
    await pair.a.wait_for_line("node nb is down: no heartbeat for")
    await pair.a.wait_for_line(r"event pid\.exit from \{nb@.*node down")
    await pair.a.wait_for_line(r"event pid\.link\.down from \{nb@.*node down")
    lines = pair.a.lines
    reconnected = next(i for i, line in enumerate(lines) if "reconnected to NATS" in line)
    down = next(i for i, line in enumerate(lines) if "node nb is down" in line)
    assert reconnected < down, pair.a.output
    answer = await pair.info()
    assert [d["node"] for d in answer["nodes"]["na"]["down"]] == ["nb"]
    assert answer["down"]["nb"]["believed_down_by"][0]["by"] == "na"


async def test_a_peer_declared_down_is_live_again_when_heard(tmp_path: Path, nats_server, spawn_node) -> None:
    """SIGSTOP nb past the window: na declares it down (its monitor and link of nb's relay
    fire, once), drops and counts sends to it; SIGCONT: nb is a live peer again with one
    flap, sends flow, and nb's own watches of na's relay fire too (both saw the cut)."""
    pair = await start_pair(tmp_path, nats_server.address, spawn_node)
    os.kill(pair.b.pid, signal.SIGSTOP)
    try:
        await pair.a.wait_for_line("node nb is down: no heartbeat for")
        await pair.a.wait_for_line(r"event pid\.exit from \{nb@.*node down")
        await pair.relay(pair.relay_a, "while-down")  # dropped at na, and counted
        answer = await info_until(pair, lambda answer: answer["nodes"]["na"]["dropped_to_down_nodes"] == 1,
                                  "na to count the send it dropped")
        [down] = answer["nodes"]["na"]["down"]
        assert (down["node"], down["dropped"]) == ("nb", 1), answer
        assert answer["down"]["nb"]["believed_down_by"][0]["by"] == "na"
    finally:
        os.kill(pair.b.pid, signal.SIGCONT)
    await pair.a.wait_for_line("node nb is back")
    assert "node na is down" not in pair.b.output  # nb was stalled: it judged nobody
    # nb learns from na's heartbeat that na cut it off: its watches of na's relay fire.
    await pair.b.wait_for_line("node na declared this node down")
    await pair.b.wait_for_line(r"event pid\.exit from \{na@.*node down")
    await flows(pair, "after")  # both relays still hold each other's PID; sends flow

    answer = await pair.info()
    nb = answer["nodes"]["nb"]
    assert (nb["flaps"], nb["believed_down_by"]) == (1, []), answer
    [seen_by_a] = answer["nodes"]["na"]["peers"]
    assert (seen_by_a["node"], seen_by_a["flaps"], seen_by_a["dropped"]) == ("nb", 1, 1)
    assert seen_by_a["last_down_reason"].startswith("no heartbeat for")
    assert answer["nodes"]["na"]["down"] == []
    table = await pair.cli("nodes")
    row = next(line for line in table.splitlines() if line.startswith("nb "))
    assert "1 (last " in row, table
    assert "DROPPED" in table and next(line for line in table.splitlines() if line.startswith("na ")).endswith(" 1")

    # The monitor and link that fired do not fire again: nb's relay now dies, and a
    # message that nb sends after its EXIT (same connection, so it arrives after it) is
    # the last thing na's relay prints.
    await pair.cli("send", pair.relay_b, "quit", '""')
    await pair.b.wait_for_line("exited with an error")
    second = (await pair.cli("spawn", "--host", "app:host", "--node", "nb", "app:relay",
                             json.dumps(pair.relay_a))).strip()
    await pair.relay(second, "marker")
    await pair.a.wait_for_line("got marker")
    events = [line for line in pair.a.lines if "event " in line]
    assert len(events) == 2 and all("node down" in line for line in events), pair.a.output
