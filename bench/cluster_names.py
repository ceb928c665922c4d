"""Cluster names (node/cluster) on one real nats-server started here, with raw nats-py
request/reply measured in the same run for scale.

(a) register + unregister of one name, one after the other, by one node: pairs per
    second (each is one JetStream round trip; an unregister uses the replica's
    revision, so no read);
(b) register on node A until the name shows in node B's replica (B's watch): p50, p99;
(c) raw nats-py request/reply round trip to a plain responder, p50, for comparison.

    python bench/cluster_names.py [--pairs 2000] [--trials 500] [--json] [--loop asyncio|uvloop]

With ``--json`` the last line is one JSON object with these keys: ``machine``;
``a.pairs_per_s``, ``a.round_trip_ms`` (half a pair), ``a.ratio`` (that round trip over
(c)'s p50); ``b.p50_ms``, ``b.p99_ms``, ``b.ratio_p50`` (over (c)'s p50); ``c.raw_p50_ms``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import nats

from moonwire.node import free_port, start_nats
from moonwire.node.cluster import ClusterNames, Holder

from _support import Figures, parser, pct, run


async def main() -> None:
    pairs, trials = ARGS.pairs, ARGS.trials
    figures = Figures(ARGS)
    server = await start_nats(Path(tempfile.mkdtemp()), port=free_port())
    clients = [await nats.connect(server.address) for _ in range(3)]
    try:
        seen: dict[str, float] = {}
        arrived = asyncio.Event()

        def on_b(name: str, before: Holder | None, after: Holder | None) -> None:
            if after is not None:
                seen[name] = time.perf_counter()
                arrived.set()

        a = ClusterNames(clients[0], prefix="bench", node="na", incarnation="1")
        b = ClusterNames(clients[1], prefix="bench", node="nb", incarnation="1", on_change=on_b)
        await a.start()
        await b.start()

        pid = "{na@h|1-1}"
        for i in range(50):  # warm up
            await a.register(f"w{i}", pid)
            await a.unregister(f"w{i}", pid)
        started = time.perf_counter()
        for i in range(pairs):
            await a.register(f"p{i}", pid)
            await a.unregister(f"p{i}", pid)
        elapsed = time.perf_counter() - started
        figures.add("a.pairs_per_s", pairs / elapsed), figures.add("a.round_trip_ms", elapsed / pairs / 2 * 1e3)
        print(f"(a) register+unregister: {pairs / elapsed:,.0f} pairs/s "
              f"({elapsed / pairs * 1e3:.2f} ms a pair, {elapsed / pairs / 2 * 1e3:.2f} ms a round trip)")

        lags = []
        for i in range(trials):
            name = f"t{i}"
            arrived.clear()
            sent = time.perf_counter()
            await a.register(name, pid)
            while name not in seen:
                await arrived.wait()
                arrived.clear()
            lags.append(seen[name] - sent)
        figures.add("b.p50_ms", pct(lags, 0.5) * 1e3), figures.add("b.p99_ms", pct(lags, 0.99) * 1e3)
        print(f"(b) register on A -> in B's replica: p50 {pct(lags, 0.5) * 1e3:.2f} ms, "
              f"p99 {pct(lags, 0.99) * 1e3:.2f} ms over {trials}")

        async def echo(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(msg.data)

        await clients[2].subscribe("bench.echo", cb=echo)
        await clients[2].flush()
        rtts = []
        for _ in range(trials):
            t = time.perf_counter()
            await clients[0].request("bench.echo", b"x", timeout=2)
            rtts.append(time.perf_counter() - t)
        raw = figures.add("c.raw_p50_ms", pct(rtts, 0.5) * 1e3)
        print(f"(c) raw nats-py request/reply: p50 {raw:.2f} ms   ratios: (a) round trip "
              f"{figures.add('a.ratio', figures.values['a.round_trip_ms'] / raw):.2f}, "
              f"(b) p50 {figures.add('b.ratio_p50', figures.values['b.p50_ms'] / raw):.2f}")
        await a.stop()
        await b.stop()
    finally:
        for client in clients:
            await client.close()
        await server.stop()
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--pairs", type=int, default=2000)
PARSER.add_argument("--trials", type=int, default=500)

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
