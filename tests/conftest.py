"""Real servers, started once per test run from the pip-installed binaries."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from moonwire.node import ServerProcess, free_port, start_nats, start_temporal
from support import CLUSTER_CONF, NodeProcess, wait_until


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerProcess]:
    """A real nats-server with JetStream on a free port."""
    server = await start_nats(tmp_path_factory.mktemp("nats"), port=free_port(), monitor_port=free_port())
    yield server
    await server.stop()


@pytest.fixture(scope="session")
async def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerProcess]:
    """A real Temporal dev server on a free port, tuned as the embedded one is, except
    that a workflow may continue as new more than once a second (the server's default
    spacing, against runaway loops, would make the continue-as-new tests last minutes)."""
    server = await start_temporal(tmp_path_factory.mktemp("temporal"), port=free_port(),
                                  extra=("--dynamic-config-value", 'history.workflowIdReuseMinimalInterval="0s"'))
    yield server
    await server.stop()


@pytest.fixture
async def plain_nats(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """A nats-server of the test's own, without JetStream."""
    server = await start_nats(tmp_path / "plain", port=free_port(), jetstream=False)
    yield server
    await server.stop()


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """A nats-server (with JetStream) of the test's own: one it may freeze (SIGSTOP) or
    kill, and whose buckets no other test sees."""
    server = await start_nats(tmp_path / "own", port=free_port())
    yield server
    if server.process.returncode is None:
        os.kill(server.process.pid, signal.SIGCONT)
    await server.stop()


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[list[ServerProcess]]:
    """Three real nats-servers routed into one cluster by ``deploy/nats-cluster.conf``,
    each with its monitoring endpoint; returned once every server has both routes."""
    ports = [(free_port(), free_port(), free_port()) for _ in range(3)]  # client, route, monitor
    servers: list[ServerProcess] = []
    try:
        for i, (client, route, monitor) in enumerate(ports):
            routes = [f"nats://127.0.0.1:{other[1]}" for j, other in enumerate(ports) if j != i]
            env = {"MW_NATS_NAME": f"s{i + 1}", "MW_NATS_PORT": str(client), "MW_NATS_CLUSTER_PORT": str(route),
                   "MW_NATS_ROUTES": json.dumps(routes)}
            servers.append(await start_nats(tmp_path / f"nats-s{i + 1}", port=client, monitor_port=monitor,
                                            args=("-c", str(CLUSTER_CONF)), env=env))

        def routed() -> bool:
            return all(len(monitor_json(s, "routez")["routes"]) >= 2 for s in servers)

        await wait_until(routed, 30, "the NATS servers to route to each other")  # no event to await
        yield servers
    finally:
        for server in servers:
            await server.stop()


@pytest.fixture(params=["one-server", "three-server-cluster"])
def nats_urls(request: pytest.FixtureRequest) -> str:
    """The client URLs of a single NATS server, then of a three-server cluster: for tests
    that must hold on both."""
    if request.param == "one-server":
        return request.getfixturevalue("nats_server").address
    return ",".join(server.address for server in request.getfixturevalue("nats_cluster"))


def monitor_json(server: ServerProcess, endpoint: str) -> dict[str, Any]:
    """A nats-server monitoring endpoint (``routez``, ``connz``...) as JSON."""
    assert server.monitor_url is not None
    with urllib.request.urlopen(f"{server.monitor_url}/{endpoint}", timeout=5) as response:
        return json.loads(response.read())


SpawnNode = Callable[..., Awaitable[NodeProcess]]


@pytest.fixture
async def spawn_node() -> AsyncIterator[SpawnNode]:
    """Start ``moonwire run`` OS processes; any still running when the test ends are killed.

    ``await spawn_node(project, name, nats_url=..., ready=regex|None, args=(...), env={...})``
    """
    started: list[NodeProcess] = []

    async def spawn(project: Path, name: str, *, ready: str | None = r"node \S+ running",
                    timeout: float = 60.0, **kwargs: Any) -> NodeProcess:
        node = NodeProcess(project, name, **kwargs)
        started.append(node)
        return await node.start(ready=ready, timeout=timeout)

    yield spawn
    for node in started:
        await node.aclose()


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path
