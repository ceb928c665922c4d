"""Real servers, started once per test run (once per xdist worker) from the pip-installed
binaries; and the ``broker`` marker, which selects the tests CI runs a second time with
the broker's fast paths off (``MOONWIRE_FAST_PATHS=0 pytest -m broker``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import CodeType, FunctionType
from typing import Any, TypeVar

import pytest

from moonwire.broker import Client
from moonwire.node import ServerProcess, free_port, start_nats, start_temporal
from moonwire.node.servers import EmbeddedServerError
from moonwire.node.servers._embedded import REGISTRY_FILE
from support import CLUSTER_CONF, NodeProcess, wait_until

# --- The ``broker`` marker ------------------------------------------------------------
# MOONWIRE_FAST_PATHS changes what a broker Client does, in this process or in a node or
# command it starts (they inherit the variable); nothing else. So the second pass runs
# only the tests that may create one, marked ``broker`` here at collection: those that
# use a fixture below that starts NATS or nodes, or whose code (with the module's helpers
# and fixtures it calls) names one of BROKER_NAMES. A test may also say
# ``@pytest.mark.broker`` itself. What collection cannot see, the first pass checks: an
# unmarked test that creates a broker Client or starts ``moonwire`` fails (_broker_guard).

BROKER_FIXTURES = frozenset({"nats_server", "own_nats", "plain_nats", "nats_cluster", "nats_urls", "spawn_node"})
BROKER_NAMES = frozenset({
    "nats", "Client", "connect", "start_nats", "Node",  # a NATS connection or server in the test process
    "run_cli", "NodeProcess", "MOONWIRE",  # a moonwire command or node (tests/support.py)
})
NO_CLIENT = frozenset({"--help", "-h", "--version"})
"""Arguments with which a ``moonwire`` process only prints and exits."""


def _code_names(code: CodeType, module: dict[str, Any], seen: set[CodeType]) -> set[str]:
    """The global names ``code`` uses, with those of its nested functions and of the
    module-level functions it calls, recursively."""
    if code in seen:
        return set()
    seen.add(code)
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _code_names(const, module, seen)
    for name in code.co_names:
        helper = module.get(name)
        if isinstance(helper, FunctionType) and helper.__module__ == module.get("__name__"):
            names |= _code_names(helper.__code__, module, seen)
    return names


def _uses_broker(item: pytest.Function) -> bool:
    if BROKER_FIXTURES & set(item.fixturenames):
        return True
    functions = [item.function]
    for name in item.fixturenames:  # the fixtures' own code: one may start a node itself
        functions += [getattr(d.func, "__wrapped__", d.func) for d in item._fixtureinfo.name2fixturedefs.get(name, ())]
    seen: set[CodeType] = set()
    return any(BROKER_NAMES & _code_names(f.__code__, f.__globals__, seen)
               for f in functions if isinstance(f, FunctionType))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "broker: may create a broker Client (here or in a node or command it "
                                       "starts); CI runs these again with MOONWIRE_FAST_PATHS=0")
    _watch_broker_use()


# --- xdist: which tests share a worker ------------------------------------------------
# ``pytest -n auto`` (``--dist loadgroup``, pyproject) hands each worker whole groups: a
# test module is one (its module-scoped fixtures are built once), except these modules,
# whose nodes start embedded servers. Those prefer the fixed ports 4222 and 7233, so two
# started at once on two workers could both find the port free, and the loser's node
# would join the winner's server (start_nats waits for the port to accept, whoever
# listens). One worker runs them all, one after another. _embedded_guard checks the list.
EMBEDDED_MODULES = frozenset({"test_event_loop", "test_example_shop", "test_node_lifecycle", "test_test_runner"})
EMBEDDED_GROUP = "embedded-servers"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and not item.get_closest_marker("broker") and _uses_broker(item):
            item.add_marker(pytest.mark.broker)
        module = item.path.stem
        item.add_marker(pytest.mark.xdist_group(EMBEDDED_GROUP if module in EMBEDDED_MODULES else module))


_broker_use: list[str] = []
"""What the running test did that MOONWIRE_FAST_PATHS changes (see _watch_broker_use)."""


def _watch_broker_use() -> None:
    """Record each broker Client created in this process, and each ``moonwire`` process
    started (a node or a command: it makes its own)."""
    client_init, popen_init = Client.__init__, subprocess.Popen.__init__

    def init_client(self: Client, *args: Any, **kwargs: Any) -> None:
        _broker_use.append("created a broker Client")
        client_init(self, *args, **kwargs)

    def init_popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        if argv and Path(os.fsdecode(argv[0])).name == "moonwire" and not NO_CLIENT & set(map(os.fsdecode, argv)):
            _broker_use.append(f"started {' '.join(map(os.fsdecode, argv[:3]))}")
        popen_init(self, args, *rest, **kwargs)

    Client.__init__ = init_client  # type: ignore[method-assign]
    subprocess.Popen.__init__ = init_popen  # type: ignore[method-assign]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _broker_use.clear()  # before any fixture of the test, of whatever scope, is set up


@pytest.fixture(autouse=True)
def _broker_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test that used the broker without the ``broker`` marker: the second pass
    would leave it out."""
    yield
    if _broker_use and not request.node.get_closest_marker("broker"):
        pytest.fail(f"{request.node.nodeid} {_broker_use[0]} but is not marked broker: add @pytest.mark.broker, "
                    "or name what it used in tests/conftest.py's BROKER_NAMES", pytrace=False)


@pytest.fixture(autouse=True)
def _embedded_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test outside EMBEDDED_MODULES whose node started embedded servers (their
    registry, ``servers.json``, is left in the project's state folder under tmp_path)."""
    watched = "tmp_path" in request.fixturenames and request.node.path.stem not in EMBEDDED_MODULES
    tmp_path = request.getfixturevalue("tmp_path") if watched else None
    yield
    if tmp_path is not None:
        registries = list(tmp_path.rglob(REGISTRY_FILE))
        if registries:
            pytest.fail(f"{request.node.nodeid} started embedded servers ({registries[0]}): add its module to "
                        "tests/conftest.py's EMBEDDED_MODULES", pytrace=False)


T = TypeVar("T")


async def on_free_ports(start: Callable[[], Awaitable[T]], attempts: int = 3) -> T:
    """``start()``, which picks its servers' ports with ``free_port``, again with new
    ports when a port it picked was taken before its server bound it: ``free_port``
    checks a port and the server binds it later, and other pytest workers, their nodes
    and servers pick from the same range meanwhile."""
    for attempt in range(attempts):
        try:
            return await start()
        except EmbeddedServerError as err:
            if "address already in use" not in str(err) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerProcess]:
    """A real nats-server with JetStream on a free port."""
    path = tmp_path_factory.mktemp("nats")
    server = await on_free_ports(lambda: start_nats(path, port=free_port(), monitor_port=free_port()))
    yield server
    await server.stop()


@pytest.fixture(scope="session")
async def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerProcess]:
    """A real Temporal dev server on a free port, tuned as the embedded one is, except
    that a workflow may continue as new more than once a second (the server's default
    spacing, against runaway loops, would make the continue-as-new tests last minutes)."""
    path = tmp_path_factory.mktemp("temporal")
    server = await on_free_ports(lambda: start_temporal(
        path, port=free_port(), extra=("--dynamic-config-value", 'history.workflowIdReuseMinimalInterval="0s"')))
    yield server
    await server.stop()


@pytest.fixture
async def plain_nats(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """A nats-server of the test's own, without JetStream."""
    server = await on_free_ports(lambda: start_nats(tmp_path / "plain", port=free_port(), jetstream=False))
    yield server
    await server.stop()


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """A nats-server (with JetStream) of the test's own: one it may freeze (SIGSTOP) or
    kill, and whose buckets no other test sees."""
    server = await on_free_ports(lambda: start_nats(tmp_path / "own", port=free_port()))
    yield server
    if server.process.returncode is None:
        os.kill(server.process.pid, signal.SIGCONT)
    await server.stop()


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[list[ServerProcess]]:
    """Three real nats-servers routed into one cluster by ``deploy/nats-cluster.conf``,
    each with its monitoring endpoint; returned once every server has both routes."""
    servers: list[ServerProcess] = []

    async def start() -> None:
        ports = [(free_port(), free_port(), free_port()) for _ in range(3)]  # client, route, monitor
        try:
            for i, (client, route, monitor) in enumerate(ports):
                routes = [f"nats://127.0.0.1:{other[1]}" for j, other in enumerate(ports) if j != i]
                env = {"MW_NATS_NAME": f"s{i + 1}", "MW_NATS_PORT": str(client), "MW_NATS_CLUSTER_PORT": str(route),
                       "MW_NATS_ROUTES": json.dumps(routes)}
                servers.append(await start_nats(tmp_path / f"nats-s{i + 1}", port=client, monitor_port=monitor,
                                                args=("-c", str(CLUSTER_CONF)), env=env))
        except EmbeddedServerError:
            for server in servers:  # a port was taken: all three again, on new ports
                await server.stop()
            servers.clear()
            raise

    try:
        await on_free_ports(start)

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
