"""The node as an OS process: connecting, embedded servers, joining them, stopping, SIGKILL."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import nats
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

import pytest

from moonwire.broker import BrokerUnavailable, Membership
from moonwire.node import Node, NodeFailed, ServerProcess, free_port, load_config, load_project, read_registry
from moonwire.node._runtime import Runtime
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
    assert "Traceback" not in err and "ExceptionGroup" not in err, err  # one line, not a stack


def in_process_node(project_dir: Path, url: str, name: str) -> Node:
    write_project(project_dir, PLAIN_PROJECT)
    flags = {"nats.url": (url, "--nats"), "node": (name, "--node"), "shutdown_timeout": ("3s", "--set")}
    return Node(load_config(project_dir, environ={}, flags=flags), load_project(project_dir, environ={}))


async def test_a_start_that_fails_raises_its_own_error(project_dir: Path) -> None:
    node = in_process_node(project_dir, f"nats://127.0.0.1:{free_port()}", "nostart")
    with pytest.raises(BrokerUnavailable):
        async with node.running():
            pass


class LoopFails:
    """Makes the node's heartbeat loop fail once ``trigger`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trigger = asyncio.Event()
        original = Membership.run

        async def run(membership: Membership) -> None:
            beating = asyncio.ensure_future(original(membership))
            try:
                await self.trigger.wait()
                raise RuntimeError("heartbeat loop broke")
            finally:
                beating.cancel()

        monkeypatch.setattr(Membership, "run", run)


async def test_a_loop_that_fails_stops_the_node_in_order_and_says_why(
        project_dir: Path, nats_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = LoopFails(monkeypatch)
    node = in_process_node(project_dir, nats_server.address, "loopfail")
    with pytest.raises(NodeFailed) as failed:
        async with node.running():
            loop.trigger.set()
            await asyncio.sleep(30)  # ended by the failure, not by this sleep
    assert isinstance(failed.value.__cause__, RuntimeError) and "heartbeat" in str(failed.value)
    assert node._steps == [] and node._nats is None and node._data is None  # every shutdown step ran


async def test_a_loop_that_fails_during_shutdown_does_not_cut_the_shutdown_short(
        project_dir: Path, nats_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = LoopFails(monkeypatch)
    stop = Runtime.stop

    async def stopping(runtime: Runtime, timeout: float) -> None:
        loop.trigger.set()
        await asyncio.sleep(0.1)  # the loop fails while this step runs
        await stop(runtime, timeout)

    monkeypatch.setattr(Runtime, "stop", stopping)
    node = in_process_node(project_dir, nats_server.address, "shutfail")
    with pytest.raises(NodeFailed):
        async with node.running():
            pass
    assert node._steps == [] and node._nats is None and node._data is None


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
