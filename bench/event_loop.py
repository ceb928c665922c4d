"""A node's function-call path on asyncio's loop and on uvloop, in the same run, each
beside a raw nats-py responder on the same loop.

Two ``moonwire run`` nodes on one real nats-server started here, one with
``--loop asyncio`` and one with ``--loop uvloop``, each serving a trivial Lua function
(``asyncio:ping``, ``uvloop:ping``); two raw nats-py responders (OS processes), one on
each loop. This process calls them with nats-py request/reply, in rounds that alternate
the loops (the machine's load hits both alike):

(seq) one call in flight: p50 latency;
(par) ``--concurrency`` calls in flight: calls per second, and the serving process's CPU
      per call (from /proc: steadier than any rate on a shared machine).

    python bench/event_loop.py [--calls 3000] [--concurrency 32] [--rounds 5]
                               [--json] [--loop asyncio|uvloop]

``--loop`` is this (calling) process's loop; the nodes and responders run on both.

With ``--json`` the last line is one JSON object with these keys, each the median of
the rounds (the rounds under ``KEY_rounds``): ``machine``; for each loop ``L``
(``asyncio``, ``uvloop``): ``L.moonwire_p50_us``, ``L.raw_p50_us``, ``L.ratio_p50``;
``L.moonwire_calls_per_s``, ``L.raw_calls_per_s``, ``L.ratio``; ``L.moonwire_cpu_us``,
``L.raw_cpu_us``, ``L.ratio_cpu``; and ``uvloop_gain.p50`` (asyncio's p50 over
uvloop's), ``uvloop_gain.calls_per_s`` (uvloop's over asyncio's), ``uvloop_gain.cpu``
(asyncio's CPU per call over uvloop's), for moonwire and ``uvloop_gain.raw_calls_per_s``,
``uvloop_gain.raw_cpu`` for the raw responders.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import nats

from moonwire.node import free_port, start_nats

from _support import CHILD_LOOP, Figures, parser, pct, run, write
from flood import RAW_RESPONDER, Node

LOOPS = ("asyncio", "uvloop")


def project(namespace: str) -> dict[str, str]:
    return {"_index.yaml": f"namespace: {namespace}\nentries:\n"
                           "  - {name: ping, kind: function.lua, source: file://ping.lua}\n",
            "ping.lua": "return function(x) return x end\n"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def calls(nc: nats.NATS, subject: str, count: int, concurrency: int) -> tuple[list[float], float]:
    """Latencies of ``count`` calls made ``concurrency`` at a time, and the seconds they took."""
    samples: list[float] = []

    async def caller(n: int) -> None:
        for _ in range(n):
            started = time.perf_counter()
            reply = await nc.request(subject, b"[1]", timeout=30)
            samples.append(time.perf_counter() - started)
            assert reply.data in (b"[1]", b'{"result":1}', b'{"result": 1}'), reply.data

    started = time.perf_counter()
    await asyncio.gather(*(caller(count // concurrency) for _ in range(concurrency)))
    return samples, time.perf_counter() - started


async def measure(nc: nats.NATS, subject: str, pid: int, opts: object) -> dict[str, float]:
    """p50 with one call in flight; calls/s and the server's CPU per call with many."""
    count, concurrency = opts.calls, opts.concurrency  # type: ignore[attr-defined]
    seq, _ = await calls(nc, subject, count // 4, 1)
    cpu = cpu_seconds(pid)
    par, seconds = await calls(nc, subject, count, concurrency)
    return {"p50_us": pct(seq, 0.5) * 1e6, "calls_per_s": len(par) / seconds,
            # /proc counts in clock ticks (10 ms): a run too short for one counts one
            "cpu_us": max(cpu_seconds(pid) - cpu, 1 / os.sysconf("SC_CLK_TCK")) / len(par) * 1e6}


async def main() -> None:
    opts = ARGS
    figures = Figures(opts)
    rounds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = await start_nats(root / "nats", port=free_port())
        nodes: dict[str, Node] = {}
        raws: dict[str, asyncio.subprocess.Process] = {}
        nc = None
        try:
            for loop in LOOPS:
                node = nodes[loop] = Node(write(root / loop, project(loop)), f"e-{loop}", server.address)
                node.argv += ["--loop", loop]
                await node.start(rf"node e-{loop} running on {loop}")
                raw = raws[loop] = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", CHILD_LOOP + RAW_RESPONDER.replace("raw.ping", f"raw.{loop}"),
                    server.address, stdout=asyncio.subprocess.PIPE, env={**os.environ, "MOONWIRE_LOOP": loop})
                assert raw.stdout is not None
                await raw.stdout.readline()
            nc = await nats.connect(server.address)
            for loop in LOOPS:  # warm up
                await calls(nc, f"mw.fn.{loop}:ping", 200, 8)
            for n in range(opts.rounds):
                for loop in LOOPS if n % 2 == 0 else LOOPS[::-1]:
                    assert nodes[loop].process is not None
                    raw_figures = await measure(nc, f"raw.{loop}", raws[loop].pid, opts)
                    ours = await measure(nc, f"mw.fn.{loop}:ping", nodes[loop].process.pid, opts)
                    for key in ours:
                        rounds.setdefault(f"{loop}.moonwire_{key}", []).append(ours[key])
                        rounds.setdefault(f"{loop}.raw_{key}", []).append(raw_figures[key])
                    rounds.setdefault(f"{loop}.ratio_p50", []).append(ours["p50_us"] / raw_figures["p50_us"])
                    rounds.setdefault(f"{loop}.ratio", []).append(ours["calls_per_s"] / raw_figures["calls_per_s"])
                    rounds.setdefault(f"{loop}.ratio_cpu", []).append(ours["cpu_us"] / raw_figures["cpu_us"])
                    print(f"round {n + 1} {loop:8s} moonwire p50 {ours['p50_us']:6.0f} us "
                          f"{ours['calls_per_s']:7.0f} calls/s {ours['cpu_us']:5.1f} us CPU/call   raw p50 "
                          f"{raw_figures['p50_us']:6.0f} us {raw_figures['calls_per_s']:7.0f} calls/s "
                          f"{raw_figures['cpu_us']:5.1f} us CPU/call   load {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            if nc is not None:
                await nc.close()
            for process in raws.values():
                process.kill()
                await process.wait()
            for node in nodes.values():
                await node.stop()
            await server.stop()
    value = {key: figures.median(key, values) for key, values in sorted(rounds.items())}
    for loop in LOOPS:
        print(f"median {loop:8s} moonwire p50 {value[f'{loop}.moonwire_p50_us']:6.0f} us (ratio "
              f"{value[f'{loop}.ratio_p50']:.2f})   {value[f'{loop}.moonwire_calls_per_s']:7.0f} calls/s (ratio "
              f"{value[f'{loop}.ratio']:.2f})   {value[f'{loop}.moonwire_cpu_us']:5.1f} us CPU/call (ratio "
              f"{value[f'{loop}.ratio_cpu']:.2f})")
    gains = {"p50": value["asyncio.moonwire_p50_us"] / value["uvloop.moonwire_p50_us"],
             "calls_per_s": value["uvloop.moonwire_calls_per_s"] / value["asyncio.moonwire_calls_per_s"],
             "cpu": value["asyncio.moonwire_cpu_us"] / value["uvloop.moonwire_cpu_us"],
             "raw_calls_per_s": value["uvloop.raw_calls_per_s"] / value["asyncio.raw_calls_per_s"],
             "raw_cpu": value["asyncio.raw_cpu_us"] / value["uvloop.raw_cpu_us"]}
    for key, gain in gains.items():
        figures.add(f"uvloop_gain.{key}", gain)
    print("uvloop over asyncio (x, higher is better): " + ", ".join(f"{k} {v:.2f}" for k, v in gains.items())
          + f"   machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, caller on {opts.loop}")
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--calls", type=int, default=3000)
PARSER.add_argument("--concurrency", type=int, default=32)
PARSER.add_argument("--rounds", type=int, default=5)

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
