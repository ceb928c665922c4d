"""Singleton failover after ``kill -9`` (``lifecycle.placement: cluster``, docs/cluster.md).

Three ``moonwire run`` nodes on one real nats-server started here, all candidates for one
singleton service. Each trial kills the node that runs it with SIGKILL and measures, on
the wall clock of this machine:

- lock: from the kill to the log line of the node that took the lock over (detection by
  liveness, the conditional delete of the lock, one acquire);
- running: from the kill to the new instance's first line (the lock, then the service's
  restart delay, then the spawn with its cluster name).

Then the killed node is started again (a new incarnation) for the next trial. Results
are printed beside the node-down window and the restart delay; nothing is asserted.

    python bench/cluster_singleton.py [--trials 10] [--interval 500ms] [--down-after 2.5s] [--delay 1s]
                                      [--json] [--loop asyncio|uvloop]

With ``--json`` the last line is one JSON object with these keys (seconds): ``machine``;
``lock.p50_s`` (the median, the trials under ``lock.p50_s_rounds``), ``lock.max_s``,
``lock.p90_s``, ``lock.ratio`` (p50 over the node-down window); ``running.p50_s``,
``running.max_s``, ``running.p90_s``, ``running.ratio`` (p50 over window + delay);
``window_s``, ``delay_s``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from moonwire.node import free_port, start_nats

from _support import Figures, parser, pct, run, write

MOONWIRE = str(Path(sys.executable).parent / "moonwire")


def project(delay: str) -> dict[str, str]:
    return {
        "_index.yaml": f"""
            namespace: app
            entries:
              - {{name: host, kind: process.host}}
              - {{name: single, kind: process.lua, source: file://single.lua, modules: [system, time]}}
              - name: single.svc
                kind: process.service
                process: single
                host: host
                lifecycle:
                  auto_start: true
                  placement: cluster
                  name: the-one
                  restart: {{initial_delay: {delay}}}
        """,
        "single.lua": """
            local system, time = require("system"), require("time")
            return function()
              print("singleton up on " .. system.node.id() .. " at " .. tostring(time.now():unix_nano()))
              process.inbox():receive()
            end""",
    }


class Node:
    """A ``moonwire run`` OS process logging JSON; every line is kept as it arrives."""

    def __init__(self, root: Path, name: str, url: str, liveness: tuple[str, ...]) -> None:
        self.name = name
        self.argv = [MOONWIRE, "run", str(root), "--node", name, "--nats", url, "--log-format", "json", *liveness]
        self.lines: list[dict[str, object]] = []
        self.changed = asyncio.Condition()
        self.process: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> Node:
        self.lines = []
        self.process = await asyncio.create_subprocess_exec(*self.argv, stdout=asyncio.subprocess.PIPE,
                                                            stderr=asyncio.subprocess.STDOUT)
        self.reader = asyncio.create_task(self._read())
        await self.wait_for(r"node \S+ running", 0)
        return self

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"msg": raw.decode(errors="replace").rstrip()}
            async with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, pattern: str, after: int, timeout: float = 60.0) -> dict[str, object]:
        """The first line matching ``pattern`` from line ``after`` on."""
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout), self.changed:
            while True:
                for line in self.lines[after:]:
                    if regex.search(str(line.get("msg", ""))):
                        return line
                if self.reader is not None and self.reader.done():
                    raise RuntimeError(f"node {self.name} ended:\n" + "\n".join(map(str, self.lines[-20:])))
                await self.changed.wait()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
        if self.reader is not None:
            await self.reader


def wall(line: dict[str, object]) -> float:
    """A JSON log line's timestamp (ms precision), as Unix seconds."""
    return datetime.fromisoformat(str(line["ts"])).timestamp()


def up_at(line: dict[str, object]) -> float:
    return int(float(str(line["msg"]).rsplit(" at ", 1)[1])) / 1e9


async def first_of(nodes: list[Node], pattern: str, marks: dict[str, int]) -> tuple[Node, dict[str, object]]:
    waits = {asyncio.create_task(n.wait_for(pattern, marks[n.name])): n for n in nodes}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    task = done.pop()
    return waits[task], task.result()


async def main() -> None:
    args = ARGS
    figures = Figures(args)
    liveness = ("--set", f"heartbeat.interval={args.interval}", "--set", f"heartbeat.down_after={args.down_after}")
    window = float(args.down_after.removesuffix("s"))
    delay = float(args.delay.removesuffix("ms")) / 1000 if args.delay.endswith("ms") else float(args.delay[:-1])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = await start_nats(root / "nats", port=free_port())
        code = write(root / "project", project(args.delay))
        nodes = {name: Node(code, name, server.address, liveness) for name in ("n1", "n2", "n3")}
        try:
            await asyncio.gather(*(n.start() for n in nodes.values()))
            holder, _ = await first_of(list(nodes.values()), r"singleton up on", {n: 0 for n in nodes})
            locks, runs = [], []
            for trial in range(args.trials):
                others = [n for n in nodes.values() if n is not holder]
                marks = {n.name: len(n.lines) for n in others}
                killed = time.time()
                await holder.kill()
                taker, took = await first_of(others, r"took its lock \S+ over", marks)
                up = await taker.wait_for(r"singleton up on", marks[taker.name])
                locks.append(wall(took) - killed)
                runs.append(up_at(up) - killed)
                print(f"  trial {trial + 1}: killed {holder.name}; {taker.name} took the lock after "
                      f"{locks[-1]:.2f} s, ran it after {runs[-1]:.2f} s", flush=True)
                await holder.start()  # a new incarnation, a candidate again
                holder = taker
        finally:
            for node in nodes.values():
                await node.kill()
            await server.stop()
    figures.add("window_s", window), figures.add("delay_s", delay)
    for part, values, bound in (("lock", locks, window), ("running", runs, window + delay)):
        figures.add(f"{part}.ratio", figures.median(f"{part}.p50_s", values) / bound)
        figures.add(f"{part}.max_s", max(values)), figures.add(f"{part}.p90_s", pct(values, 0.9))
    print(f"singleton failover after kill -9, {args.trials} trials (heartbeat {args.interval}, node-down window "
          f"{window:g} s, restart delay {delay:g} s):")
    print(f"  kill -> lock taken over       p50 {statistics.median(locks):.2f} s   max {max(locks):.2f} s   "
          f"p90 {pct(locks, 0.9):.2f} s   (the window: {window:g} s; ratio {figures.values['lock.ratio']:.2f})")
    print(f"  kill -> new instance running  p50 {statistics.median(runs):.2f} s   max {max(runs):.2f} s   "
          f"p90 {pct(runs, 0.9):.2f} s   (window + delay: {window + delay:g} s; target window + 1 s: "
          f"{window + 1:g} s; ratio to window + delay {figures.values['running.ratio']:.2f})")
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, loop {args.loop}")
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--trials", type=int, default=10)
PARSER.add_argument("--interval", default="500ms", help="heartbeat.interval (the default)")
PARSER.add_argument("--down-after", default="2.5s", help="heartbeat.down_after, the node-down window (the default)")
PARSER.add_argument("--delay", default="1s", help="the service's restart.initial_delay (the default)")

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
