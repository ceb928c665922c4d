"""How fast a request learns that the node serving it died (issue item 9): from the
``kill -9`` of the serving node to the error the caller's ``funcs.call`` returns, p50 and
max over the trials, beside the same caller's node-down detection measured in the same
trial (a monitor on a process of the killed node gets its EXIT): the floor the call's
error cannot beat. Default liveness (heartbeat 500 ms, down after 2.5 s); the target is
the window plus one second, 3.5 s.

(a) a function call the serving node took and told the caller so (it waits there);
(b) a process-function call (``meta.default_host``) the same way;
(c) a call the serving node never read: it was frozen (SIGSTOP) before the call was
    sent and killed after; timed from the freeze (when it stopped beating). No notice
    came, so the caller finds the call lost by probing the live nodes after the
    node-down.

Without detection each of these would end with the call's timeout (60 s by default).

    python bench/node_death.py [--trials 10] [--only abc] [--json] [--loop asyncio|uvloop]

With ``--json`` the last line is one JSON object with these keys (seconds): ``machine``;
for each part ``P`` run (``a``, ``b``, ``c``): ``P.call_p50_s`` (the median, the trials
under ``P.call_p50_s_rounds``), ``P.call_max_s``, ``P.floor_p50_s`` (the same for the
monitor's EXIT), ``P.floor_max_s`` and ``P.ratio`` (call p50 over floor p50).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import nats

from moonwire.node import free_port, start_nats

from _support import Figures, parser, run, write
from cluster import Node

SERVER = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host}
          - {name: slow, kind: function.lua, source: file://slow.lua, modules: [time]}
          - {name: add, kind: function.lua, source: file://add.lua}
          - {name: slowproc, kind: process.lua, source: file://slowproc.lua, meta: {default_host: host}}
          - {name: idle, kind: process.lua, source: file://idle.lua}
    """,
    "slow.lua": "return function() time.sleep('1h') end",
    "add.lua": "return function(a, b) return a + b end",
    "slowproc.lua": "return function() process.inbox():receive() end",
    "idle.lua": "return function() process.inbox():receive() end",
}

CALLER = {
    "_index.yaml": """
        namespace: d
        entries:
          - {name: drive, kind: process.lua, source: file://drive.lua, modules: [funcs, time]}
    """,
    # Monitors an idle process on the serving node (the node-down floor), then calls.
    "drive.lua": """
        local funcs, time = require("funcs"), require("time")
        return function(node, target, go)
          local idle = assert(process.with_options({ node = node }):spawn("app:idle", "app:host"))
          assert(process.monitor(idle))
          local exit_at = channel.new(1)
          coroutine.spawn(function()
            process.events():receive()
            exit_at:send(time.now():unix_nano() / 1e9)
          end)
          print("driver " .. process.pid())
          if go == "go" then process.inbox():receive() end
          print("calling " .. target)
          local _, err = funcs.call(target, 1, 2)
          local call_at = time.now():unix_nano() / 1e9
          return { call_at = call_at, exit_at = exit_at:receive(), kind = err and err:kind(),
                   message = err and err:message() }
        end""",
}


async def trial(root: Path, url: str, path: str, n: int) -> tuple[float, float]:
    """Seconds from the kill (or freeze) to the call's error, and to the monitor's EXIT."""
    victim_name = f"nv{n}"
    victim = await Node(write(root / "server", SERVER), victim_name, url).start(rf"node {victim_name} running")
    caller = None
    try:
        target = {"a": "app:slow", "b": "app:slowproc", "c": "app:add"}[path]
        go = "go" if path == "c" else "now"
        caller = await Node(write(root / "caller", CALLER), f"nc{n}", url, "--log-level", "debug",
                            "-x", "d:drive", victim_name, target, go).start(None)
        if path == "c":
            line = await caller.wait_for(r"driver \{")
            pid = re.search(r"\{(\S+)@\S+\|(\S+)\}", line)
            assert pid is not None
            nc = await nats.connect(url)
            assert victim.process is not None
            os.kill(victim.process.pid, signal.SIGSTOP)
            since = time.time()
            await nc.publish(f"mw.p.{pid[1]}.{pid[2]}.go", b"")
            await nc.close()
            await caller.wait_for(r"calling app:add")
        else:
            await caller.wait_for(rf"request \d+ taken by {victim_name}\.")
            since = time.time()
        await victim.stop(signal.SIGKILL)
        data = await caller.result()
        assert isinstance(data, dict) and data["kind"] == "Unavailable" and data["message"].startswith(
            f"node down: node {victim_name}"), (data, "\n".join(caller.lines[-40:]))
        return data["call_at"] - since, data["exit_at"] - since
    finally:
        await victim.stop(signal.SIGKILL)
        if caller is not None:
            await caller.stop(signal.SIGKILL)


LABELS = {"a": "(a) function call, taken (notice)", "b": "(b) process-function call, taken",
          "c": "(c) call lost unread (probe)    "}


async def main() -> None:
    args = ARGS
    figures = Figures(args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = await start_nats(root / "nats", port=free_port())
        n = 0
        try:
            for path in args.only:
                calls, floors = [], []
                for _ in range(args.trials):
                    n += 1
                    call, floor = await trial(root, server.address, path, n)
                    calls.append(call)
                    floors.append(floor)
                since = "freeze" if path == "c" else "kill -9"
                call_p50 = figures.median(f"{path}.call_p50_s", calls)
                floor_p50 = figures.median(f"{path}.floor_p50_s", floors)
                figures.add(f"{path}.call_max_s", max(calls)), figures.add(f"{path}.floor_max_s", max(floors))
                figures.add(f"{path}.ratio", call_p50 / floor_p50)
                print(f"{LABELS[path]}  {since} -> call error: p50 {call_p50:.2f} s  "
                      f"max {max(calls):.2f} s   -> monitor EXIT (node-down floor): "
                      f"p50 {floor_p50:.2f} s  max {max(floors):.2f} s   ({args.trials} trials)")
        finally:
            await server.stop()
    print("defaults: heartbeat 500ms, down after 2.5s; target: call error within 3.5 s; "
          "without detection: the call's timeout (60 s)")
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, loop {args.loop}")
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--trials", type=int, default=10)
PARSER.add_argument("--only", default="abc")

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
