"""Real servers, started once per test run from the pip-installed binaries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from node import ServerProcess, free_port, start_nats, start_temporal
from support import NodeProcess


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerProcess]:
    """A real nats-server with JetStream on a free port."""
    server = await start_nats(tmp_path_factory.mktemp("nats"), port=free_port(), monitor_port=free_port())
    yield server
    await server.stop()


@pytest.fixture(scope="session")
async def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerProcess]:
    """A real Temporal dev server on a free port, tuned as the embedded one is."""
    server = await start_temporal(tmp_path_factory.mktemp("temporal"), port=free_port())
    yield server
    await server.stop()


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
