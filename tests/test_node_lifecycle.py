"""The node as an OS process: connecting, embedded servers, joining them, stopping, SIGKILL."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import nats
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from moonwire.node import ServerProcess, free_port, read_registry
from support import pid_running, run_cli, wait_until, write_project

TEMPORAL_PROJECT = {"app.yaml": "namespace: app\nentries:\n  - {name: temporal, kind: temporal.client}\n"}
PLAIN_PROJECT = {"app.yaml": "namespace: app\nentries:\n  - {name: host, kind: process.host}\n"}


async def connections(monitor_url: str) -> list[dict[str, object]]:
    def fetch() -> list[dict[str, object]]:
        with urllib.request.urlopen(f"{monitor_url}/connz", timeout=5) as response:
            return json.load(response).get("connections") or []

    return await asyncio.to_thread(fetch)


async def test_fixture_servers_are_real(nats_server: ServerProcess, temporal_server: ServerProcess) -> None:
    nc = await nats.connect(nats_server.address)
    try:
        sub = await nc.subscribe("fixture.check")
        await nc.publish("fixture.check", b"ping")
        assert (await sub.next_msg(timeout=5)).data == b"ping"
    finally:
        await nc.close()
    client = await Client.connect(temporal_server.address)
    info = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
    assert info.namespace_info.name == "default"


async def test_node_connects_and_stops_cleanly_on_sigterm(project_dir: Path, nats_server: ServerProcess, spawn_node) -> None:
    write_project(project_dir, PLAIN_PROJECT)
    node = await spawn_node(project_dir, "life-1", nats_url=nats_server.address)
    assert nats_server.monitor_url is not None
    names = [c.get("name") for c in await connections(nats_server.monitor_url)]
    assert "moonwire-life-1" in names
    assert await node.stop() == 0
    assert "stopping NATS connection" in node.output
    names = [c.get("name") for c in await connections(nats_server.monitor_url)]
    assert "moonwire-life-1" not in names
    assert not (project_dir / ".moonwire" / "servers.json").exists()  # nothing embedded was started


async def test_unreachable_nats_is_a_clear_error(project_dir: Path) -> None:
    write_project(project_dir, PLAIN_PROJECT)
    url = f"nats://127.0.0.1:{free_port()}"
    code, _, err = await run_cli("run", str(project_dir), "--nats", url, timeout=30)
    assert code == 1
    assert f"cannot connect to NATS at {url}" in err


async def test_embedded_servers_start_are_joined_and_stop_with_their_node(project_dir: Path, spawn_node) -> None:
    write_project(project_dir, TEMPORAL_PROJECT)
    state = project_dir / ".moonwire"
    first = await spawn_node(project_dir, "emb-a")
    servers = read_registry(state)
    assert set(servers) == {"nats", "temporal"}
    assert all(record.owner_pid == first.pid and record.owner_node == "emb-a" for record in servers.values())
    assert all(pid_running(record.pid) for record in servers.values())
    await first.wait_for_line(rf"embedded nats listening on {servers['nats'].address}")
    await first.wait_for_line(rf"embedded temporal listening on {servers['temporal'].address}")

    # The servers are real and reachable at the recorded addresses.
    nc = await nats.connect(servers["nats"].address)
    await nc.close()
    client = await Client.connect(servers["temporal"].address)
    await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))

    second = await spawn_node(project_dir, "emb-b")
    await second.wait_for_line(rf"joining embedded nats at {servers['nats'].address} \(started by node emb-a\)")
    await second.wait_for_line(r"joining embedded temporal")
    assert read_registry(state) == servers  # the second node started nothing
    assert await second.stop() == 0
    assert all(pid_running(record.pid) for record in servers.values())  # not the second node's to stop

    assert await first.stop() == 0
    assert not any(pid_running(record.pid) for record in servers.values())
    assert read_registry(state) == {}


async def test_sigkill_of_the_node_takes_its_servers_down(project_dir: Path, spawn_node) -> None:
    write_project(project_dir, TEMPORAL_PROJECT)
    state = project_dir / ".moonwire"
    node = await spawn_node(project_dir, "doomed")
    servers = read_registry(state)
    assert set(servers) == {"nats", "temporal"}

    await node.kill()
    await wait_until(lambda: not any(pid_running(r.pid) for r in servers.values()), timeout=5.0,
                     what="embedded servers to exit after SIGKILL of their node")

    # The stale record does not fool the next node: it starts servers of its own.
    successor = await spawn_node(project_dir, "successor")
    await successor.wait_for_line(r"embedded nats listening on")
    assert read_registry(state)["nats"].owner_pid == successor.pid
    assert await successor.stop() == 0
