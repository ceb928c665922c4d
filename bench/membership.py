"""Membership at scale, by simulation (issue 20, item 6).

Every node publishes its heartbeat on ``mw.node.<node>.hb``; what hearing them costs as
the cluster grows, at 10, 100, 300 and 500 nodes by default (``--sizes``), all on one
real nats-server started here:

- four real ``moonwire run`` node OS processes: ``a1`` and ``a2`` sort first (in a large
  cluster the lowest-named nodes relay heartbeats in digests, ``broker/_membership.py``),
  ``zo`` sorts last (the observer: a node like most) and ``zv`` is the victim;
- N - 4 simulated nodes, spread over ``--workers`` OS processes, each with its own TCP
  connection to the server (a real node has its own, and the server's fan-out per
  connection is the point). A simulated node speaks the real protocol: it publishes the
  real heartbeat body (checked with ``Heartbeat.parse``) on its own subject every interval
  and subscribes to what a real node of that cluster subscribes to (every heartbeat, or
  the relays' digests when the code has relays and the cluster is large; at once, where
  a real node first hears every heartbeat until a relay names it), and says goodbye when
  it stops. It does not judge its peers: it reads and counts what arrives (a raw NATS
  protocol client, so the simulator stays cheaper than what it simulates; its own CPU
  is reported).

Per size, over ``--rounds`` windows of ``--seconds`` each (medians): the CPU ``zo`` and
``a1`` spend on membership (their CPU minus their CPU with only the four real nodes, the
baseline measured first), nats-server's messages in/out and bytes out per second
(``/varz`` deltas) and CPU (``/proc``), the simulator's CPU, and how many of its
connections the server dropped (slow consumers: the simulator or the server saturated).
Then ``--trials`` times: ``kill -9`` of ``zv`` and the time until ``zo`` logs it down
(read from its log as it is written); ``zv`` is started again between trials.

    python bench/membership.py [--sizes 10,100,300,500] [--workers 3] [--seconds 5]
                               [--rounds 3] [--trials 5]
                               [--json] [--loop asyncio|uvloop]

With ``--json`` the last line is one JSON object with these keys: ``machine``;
``baseline.node_cpu_ms_per_s``, ``baseline.relay_cpu_ms_per_s``,
``baseline.server_cpu_pct``, ``baseline.server_msgs_out_per_s``; per size N,
``nN.node_cpu_ms_per_s`` (zo's CPU on membership: total minus the baseline),
``nN.node_total_cpu_ms_per_s``, ``nN.relay_cpu_ms_per_s`` (a1's, a relay where there
are any), ``nN.server_msgs_in_per_s``, ``nN.server_msgs_out_per_s``,
``nN.server_mb_out_per_s``, ``nN.server_cpu_pct``, ``nN.server_us_per_msg_out``,
``nN.sim_cpu_pct``, ``nN.sim_dropped``, ``nN.detect_p50_s``, ``nN.detect_max_s``; and
the fits at 1,000 nodes (``a + b*N`` or ``a + b*N^2``, whichever is closer to the
points): ``fit.n1000.server_msgs_out_per_s``, ``fit.n1000.server_mb_out_per_s``,
``fit.n1000.server_cpu_pct``, ``fit.n1000.node_cpu_ms_per_s``,
``fit.n1000.relay_cpu_ms_per_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from moonwire.broker import Subjects, _membership as membership
from moonwire.broker._membership import Heartbeat
from moonwire.node import free_port, start_nats

from _support import Figures, parser, run, write
from cluster_singleton import Node, wall

INTERVAL = 0.5  # the default heartbeat (the real nodes run with their defaults too)
PROJECT = {
    "_index.yaml": """
        namespace: m
        entries:
          - {name: idle, kind: function.lua, source: file://idle.lua}
    """,
    "idle.lua": "return function() end",
}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def varz(monitor_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{monitor_url}/varz", timeout=5) as response:
        data = json.loads(response.read())
    return {key: int(data[key]) for key in ("in_msgs", "out_msgs", "out_bytes", "slow_consumers")}


# ------------------------------------------------------------ the simulator (worker side)

class RawNode(asyncio.Protocol):
    """One simulated node: a raw NATS connection that subscribes as a real node does and
    counts what arrives without decoding it (answers the server's PINGs)."""

    def __init__(self, lost: list[int]) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.lost = lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data.count(b"MSG ")
        if b"PING\r\n" in data:
            assert self.transport is not None
            self.transport.write(b"PONG\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost[0] += 1


async def simulate(url: str, listen: str, names: list[str]) -> None:
    """Run the simulated ``names``, subscribed to ``listen``, until stdin closes; print
    one JSON line of counts then."""
    subjects = Subjects()
    host, port = url.removeprefix("nats://").split(":")
    lost = [0]
    loop = asyncio.get_running_loop()
    nodes: list[tuple[str, RawNode, bytes]] = []
    for name in names:
        _, node = await loop.create_connection(lambda: RawNode(lost), host, int(port))
        assert node.transport is not None
        body = json.dumps({"node": name, "incarnation": "sim1", "hosts": [], "bye": False}).encode()
        assert Heartbeat.parse(body).node == name  # the real body format
        node.transport.write(b'CONNECT {"verbose":false,"pedantic":false,"echo":true,"protocol":1}\r\n'
                             + f"SUB {listen} 1\r\n".encode())
        nodes.append((subjects.heartbeat(name), node, body))
    print("ready", flush=True)
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    start, sent, every = loop.time(), 0, INTERVAL / len(nodes)
    while not stop.is_set():  # each node beats every interval, their phases spread evenly
        for _ in range(int((loop.time() - start) / every) + 1 - sent):
            subject, node, body = nodes[sent % len(nodes)]
            if node.transport is not None and not node.transport.is_closing():
                node.transport.write(f"PUB {subject} {len(body)}\r\n".encode() + body + b"\r\n")
            sent += 1
        await asyncio.sleep(max(0.01, start + sent * every - loop.time()))
    for subject, node, _ in nodes:
        if node.transport is not None and not node.transport.is_closing():
            bye = json.dumps({"node": subject.split(".")[2], "incarnation": "sim1", "hosts": [], "bye": True})
            node.transport.write(f"PUB {subject} {len(bye)}\r\n{bye}\r\n".encode())
            node.transport.close()
    print(json.dumps({"received": sum(node.received for _, node, _ in nodes), "lost": lost[0]}), flush=True)


# ------------------------------------------------------------ the bench (driver side)

def real_node(root: Path, name: str, url: str) -> Node:
    """A ``moonwire run`` node OS process (``cluster_singleton.Node``: JSON log lines kept
    as they arrive) of the idle project, with the default liveness."""
    return Node(write(root / name, PROJECT), name, url, ("--log-level", "info"))


async def lines_matching(node: Node, pattern: str, after: int, count: int) -> None:
    """Until ``count`` lines from ``after`` on match ``pattern``."""
    regex, seen = re.compile(pattern), 0
    async with asyncio.timeout(300), node.changed:
        while True:
            for line in node.lines[after:]:
                seen += bool(regex.search(str(line.get("msg", ""))))
            after = len(node.lines)
            if seen >= count:
                return
            await node.changed.wait()


class Simulator:
    """``count`` simulated nodes over ``workers`` OS processes."""

    def __init__(self, url: str, count: int, workers: int, tag: str, listen: str) -> None:
        names = [f"s{tag}x{i}" for i in range(count)]
        self.listen = listen
        self.parts = [names[i::workers] for i in range(workers) if names[i::workers]]
        self.url = url
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        for part in self.parts:
            process = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--simulate", self.url, self.listen, ",".join(part),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            self.processes.append(process)
        for process in self.processes:
            assert process.stdout is not None
            assert (await process.stdout.readline()).strip() == b"ready"

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.processes)

    async def stop(self) -> dict[str, int]:
        totals = {"received": 0, "lost": 0}
        for process in self.processes:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.close()
            line = await process.stdout.readline()
            await process.wait()
            for key, value in json.loads(line or b"{}").items():
                totals[key] += value
        return totals


async def window(seconds: float, server_pid: int, monitor: str, node: Node, relay: Node,
                 sim: Simulator | None) -> dict[str, float]:
    """One steady window: per-second rates of everything measured."""
    assert node.process is not None and relay.process is not None
    pids = (node.process.pid, relay.process.pid, server_pid)
    t0, cpu0, varz0, sim0 = time.monotonic(), [cpu_seconds(p) for p in pids], varz(monitor), sim.cpu() if sim else 0.0
    await asyncio.sleep(seconds)
    t1, cpu1, varz1, sim1 = time.monotonic(), [cpu_seconds(p) for p in pids], varz(monitor), sim.cpu() if sim else 0.0
    elapsed = t1 - t0
    node_s, relay_s, server_s = (b - a for a, b in zip(cpu0, cpu1))
    return {"node_ms": 1000 * node_s / elapsed, "relay_ms": 1000 * relay_s / elapsed,
            "server_pct": 100 * server_s / elapsed,
            "in": (varz1["in_msgs"] - varz0["in_msgs"]) / elapsed,
            "out": (varz1["out_msgs"] - varz0["out_msgs"]) / elapsed,
            "out_mb": (varz1["out_bytes"] - varz0["out_bytes"]) / elapsed / 1e6,
            "slow": varz1["slow_consumers"] - varz0["slow_consumers"], "sim_pct": 100 * (sim1 - sim0) / elapsed}


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


async def detect(node: Node, victim: Node) -> float:
    """Kill -9 ``victim``: seconds until ``node`` logs it down (by their log's clock); the
    victim started again."""
    await asyncio.sleep(INTERVAL * 2)  # A has heard its current incarnation for a while
    mark = len(node.lines)
    killed = time.time()
    await victim.kill()
    seen = wall(await node.wait_for(rf"node {victim.name} is down", mark, timeout=300))
    mark = len(node.lines)
    await victim.start()
    await node.wait_for(rf"node {victim.name} is up", mark, timeout=300)
    return seen - killed


def fit(sizes: list[int], values: list[float], at: int) -> tuple[float, int]:
    """Least squares ``a + b*N`` and ``a + b*N^2`` through the measured points: the
    closer one's value at ``at`` nodes, and its power."""
    best: tuple[float, float, int] | None = None
    for power in (1, 2):
        xs = [n ** power for n in sizes]
        mx, my = statistics.fmean(xs), statistics.fmean(values)
        var = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, values)) / var if var else 0.0
        error = sum((my + b * (x - mx) - y) ** 2 for x, y in zip(xs, values))
        if best is None or error < best[0]:
            best = (error, my + b * (at ** power - mx), power)
    assert best is not None
    return best[1], best[2]


def listening(n: int) -> str:
    """What a simulated node (never one of the lowest-named) of an ``n``-node cluster
    subscribes to, as a real one does: every heartbeat, or (where the code has relays and
    the cluster is large) the relays' digests."""
    subjects, mesh_up_to = Subjects(), getattr(membership, "MESH_UP_TO", None)
    if mesh_up_to is not None and n > mesh_up_to:
        return subjects.all_digests()
    return subjects.all_heartbeats()


def report(figures: Figures, n: int, got: dict[str, float], base: dict[str, float], trials: int) -> None:
    key = f"n{n}"
    figures.add(f"{key}.node_cpu_ms_per_s", round(got["node_ms"] - base["node_ms"], 2))
    figures.add(f"{key}.node_total_cpu_ms_per_s", round(got["node_ms"], 2))
    figures.add(f"{key}.relay_cpu_ms_per_s", round(got["relay_ms"] - base["relay_ms"], 2))
    figures.add(f"{key}.server_msgs_in_per_s", round(got["in"], 1))
    figures.add(f"{key}.server_msgs_out_per_s", round(got["out"], 1))
    figures.add(f"{key}.server_mb_out_per_s", round(got["out_mb"], 3))
    figures.add(f"{key}.server_cpu_pct", round(got["server_pct"], 2))
    figures.add(f"{key}.server_us_per_msg_out",
                round(1e4 * (got["server_pct"] - base["server_pct"]) / max(got["out"], 1.0), 3))
    figures.add(f"{key}.sim_cpu_pct", round(got["sim_pct"], 2))
    figures.add(f"{key}.sim_dropped", int(got["lost"] + got["slow"]))
    figures.add(f"{key}.detect_p50_s", round(got["detect_p50"], 3))
    figures.add(f"{key}.detect_max_s", round(got["detect_max"], 3))
    print(f"N={n:4d}: node on membership {got['node_ms'] - base['node_ms']:6.1f} ms CPU/s, lowest-named "
          f"{got['relay_ms'] - base['relay_ms']:6.1f} | nats-server {got['in']:6.0f} in/s {got['out']:8.0f} out/s "
          f"{got['out_mb']:6.2f} MB/s {got['server_pct']:5.1f}% CPU | simulator {got['sim_pct']:5.1f}% CPU, {int(got['lost'] + got['slow'])} "
          f"dropped | kill -9 -> down p50 {got['detect_p50']:.2f} s max {got['detect_max']:.2f} s ({trials} trials)",
          flush=True)


async def main(args: argparse.Namespace) -> None:
    figures = Figures(args)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = await start_nats(root / "nats", port=free_port(), monitor_port=free_port())
        assert server.monitor_url is not None
        monitor, server_pid = server.monitor_url, server.process.pid
        # a1 and a2 sort first (the relays, where there are any), the simulated nodes next,
        # then zo (the observer: a node like most) and zv (the victim).
        reals: list[Node] = []
        try:
            for name in ("a1", "a2", "zo", "zv"):
                reals.append(await real_node(root, name, server.address).start())
            relay, _, node, victim = reals
            await node.wait_for(r"node zv is up", 0)
            await asyncio.sleep(2)
            base = medians([await window(args.seconds, server_pid, monitor, node, relay, None)
                            for _ in range(args.rounds)])
            figures.add("baseline.node_cpu_ms_per_s", round(base["node_ms"], 2))
            figures.add("baseline.relay_cpu_ms_per_s", round(base["relay_ms"], 2))
            figures.add("baseline.server_cpu_pct", round(base["server_pct"], 2))
            figures.add("baseline.server_msgs_out_per_s", round(base["out"], 1))
            print(f"baseline (4 real nodes): a node {base['node_ms']:.1f} ms CPU/s, the lowest-named "
                  f"{base['relay_ms']:.1f}, nats-server {base['server_pct']:.1f}% CPU, {base['out']:.0f} msgs out/s",
                  flush=True)
            curve: dict[int, dict[str, float]] = {}
            for n in sizes:
                sim = Simulator(server.address, n - len(reals), args.workers, str(n), listening(n))
                mark = len(node.lines)
                await sim.start()
                try:
                    await lines_matching(node, r"node s\d+x\d+ is up", mark, n - len(reals))  # heard every one
                    await asyncio.sleep(4 * INTERVAL)
                    got = medians([await window(args.seconds, server_pid, monitor, node, relay, sim)
                                   for _ in range(args.rounds)])
                    times = []
                    for _ in range(args.trials):
                        took = await detect(node, victim)
                        times.append(took)
                finally:
                    counts = await sim.stop()
                got["lost"] = counts["lost"]
                got["detect_p50"], got["detect_max"] = statistics.median(times), max(times)
                curve[n] = got
                report(figures, n, got, base, args.trials)
            if len(curve) >= 2:
                ns = sorted(curve)
                # Every node hearing every other: deliveries (the server's work) grow as
                # N^2, what one node reads as N. Relays: both as N (bytes still as N^2).
                fitted = []
                for name, values in (("server_msgs_out_per_s", [curve[n]["out"] for n in ns]),
                                     ("server_mb_out_per_s", [curve[n]["out_mb"] for n in ns]),
                                     ("server_cpu_pct", [curve[n]["server_pct"] for n in ns]),
                                     ("node_cpu_ms_per_s", [curve[n]["node_ms"] - base["node_ms"] for n in ns]),
                                     ("relay_cpu_ms_per_s", [curve[n]["relay_ms"] - base["relay_ms"] for n in ns])):
                    value, power = fit(ns, values, 1000)
                    figures.add(f"fit.n1000.{name}", round(value, 1))
                    fitted.append(f"{name} {value:.1f} (a + b*N{'^2' if power == 2 else ''})")
                print("fitted, at 1,000 nodes: " + ", ".join(fitted))
        finally:
            for real in reals:
                await real.kill()
            await server.stop()
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}; "
          f"heartbeat {INTERVAL * 1000:.0f} ms, down after 2.5 s (defaults)")
    figures.emit()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--simulate":
        asyncio.run(simulate(sys.argv[2], sys.argv[3], sys.argv[4].split(",")))
    else:
        cli = parser(__doc__)
        cli.add_argument("--sizes", default="10,100,300,500", help="cluster sizes, comma-separated (at least 3)")
        cli.add_argument("--workers", type=int, default=3, help="OS processes the simulated nodes are spread over")
        cli.add_argument("--seconds", type=float, default=5.0, help="length of one measuring window")
        cli.add_argument("--rounds", type=int, default=3, help="measuring windows per size (medians)")
        cli.add_argument("--trials", type=int, default=5, help="kill -9 trials per size")
        parsed = cli.parse_args()
        run(lambda: main(parsed), parsed.loop)
