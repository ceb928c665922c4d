"""Process messages between two nodes arrive exactly once and in order while the NATS
servers under them are killed (``kill -9``) and restarted: core NATS loses what was in
flight then, and the nodes reconnect to another server of the cluster within
milliseconds, so nothing else would notice (the chaos run found such holes at every
few server kills). Real servers, real node processes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from moonwire.node import ServerProcess, free_port, start_nats
from support import CLUSTER_CONF, NodeProcess, run_cli, write_project

COUNT = 6000

PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host}
          - {name: rx, kind: process.lua, source: file://rx.lua}
          - {name: tx, kind: process.lua, source: file://tx.lua, modules: [time]}
    """,
    # Checks the stream as it arrives: says at once when a number is missing or repeated.
    "rx.lua": """
        return function(count)
          local inbox, expected = process.inbox(), 1
          print("rx ready")
          while expected <= count do
            local n = inbox:receive():payload():data()
            if n ~= expected then print("rx bad: expected " .. expected .. ", got " .. n) return end
            expected = expected + 1
          end
          print("rx got all " .. count)
        end
    """,
    # Sends numbers in small bursts so that messages are in flight whenever a server dies.
    "tx.lua": """
        local time = require("time")
        return function(to, count)
          for n = 1, count do
            assert(process.send(to, "n", n))
            if n % 20 == 0 then time.sleep("2ms") end
            if n % 1000 == 0 then print("tx sent " .. n) end
          end
        end
    """,
}


class Cluster:
    """Three routed nats-servers, each of which the test may kill and start again on the
    same ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = [(free_port(), free_port(), free_port()) for _ in range(3)]  # client, route, monitor
        self.servers: list[ServerProcess | None] = [None, None, None]

    def url(self, i: int) -> str:
        return f"nats://127.0.0.1:{self.ports[i][0]}"

    async def start(self, i: int) -> None:
        client, route, monitor = self.ports[i]
        routes = [f"nats://127.0.0.1:{other[1]}" for j, other in enumerate(self.ports) if j != i]
        env = {"MW_NATS_NAME": f"s{i + 1}", "MW_NATS_PORT": str(client), "MW_NATS_CLUSTER_PORT": str(route),
               "MW_NATS_ROUTES": json.dumps(routes)}
        self.servers[i] = await start_nats(self.root / f"s{i + 1}", port=client, monitor_port=monitor,
                                           args=("-c", str(CLUSTER_CONF)), env=env)

    async def kill(self, i: int) -> None:
        server = self.servers[i]
        assert server is not None
        os.kill(server.pid, signal.SIGKILL)
        await server.process.wait()
        self.servers[i] = None

    async def stop(self) -> None:
        for server in self.servers:
            if server is not None:
                await server.stop()


async def test_messages_cross_server_kills_exactly_once_and_in_order(tmp_path: Path, spawn_node) -> None:
    cluster = Cluster(tmp_path)
    try:
        for i in range(3):
            await cluster.start(i)
        project = write_project(tmp_path / "project", PROJECT)
        fast = ("--set", "heartbeat.interval=200ms", "--set", "heartbeat.down_after=2s")
        # Each node knows one server; it learns the others from the cluster and fails over.
        sender: NodeProcess = await spawn_node(project, "na", nats_url=cluster.url(0), args=fast)
        receiver: NodeProcess = await spawn_node(project, "nb", nats_url=cluster.url(1), args=fast)

        async def cli(*args: str) -> str:
            code, out, err = await run_cli(*args, "--project", str(project), "--nats", cluster.url(2))
            assert code == 0, (out, err)
            return out.strip()

        rx = await cli("spawn", "--host", "app:host", "--node", "nb", "app:rx", str(COUNT))
        await receiver.wait_for_line("rx ready")
        await cli("spawn", "--host", "app:host", "--node", "na", "app:tx", json.dumps(rx), str(COUNT))

        # The sender's server dies under it, then the receiver's, each while messages fly.
        await sender.wait_for_line("tx sent 1000")
        await cluster.kill(0)
        await sender.wait_for_line("tx sent 2000")
        await cluster.start(0)
        await sender.wait_for_line("tx sent 3000")
        await cluster.kill(1)
        await sender.wait_for_line("tx sent 4000")
        await cluster.start(1)

        verdict = await receiver.wait_for_line(r"rx (bad|got all)", timeout=60)
        assert f"rx got all {COUNT}" in verdict, verdict
        for node in (sender, receiver):
            assert " is down" not in node.output, node.output[-3000:]
    finally:
        await cluster.stop()
