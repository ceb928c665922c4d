"""Helpers shared by the tests: real node OS processes, project folders, and waiting on events."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

MOONWIRE = str(Path(sys.executable).parent / "moonwire")
HANG = 60.0
"""Seconds after which an operation bounded at a second or less is taken to hang: a guard
for ``asyncio.wait_for``, not a measure (no timed assertions; the bound an operation used
is the one its error names)."""
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
CLUSTER_CONF = DEPLOY / "nats-cluster.conf"
"""The NATS cluster configuration of ``deploy/``, which the cluster tests use."""
AUTH_CONF = DEPLOY / "nats-auth.conf"
TLS_CONF = DEPLOY / "nats-tls.conf"
"""moonwire's NATS authorization (nkeys; TLS client certificates), which tests/test_nats_permissions.py starts."""


def write_project(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (relative path -> text, dedented) under ``root``; return ``root``."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def pid_running(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _threads_stopped(pid: int) -> bool:
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except OSError:
            continue  # a thread that just ended
    return bool(states) and all(state in "tT" for state in states)


async def freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and return once every one of its threads has stopped. kill()
    returns when the signal is queued: a thread running on another core (a Go server's,
    say) stops at its next kernel entry, and on a loaded machine may first answer a
    request sent right after (a "frozen" server that still answered made a test flaky)."""
    os.kill(pid, signal.SIGSTOP)
    await wait_until(lambda: _threads_stopped(pid), 10, f"every thread of process {pid} to stop")


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> float:
    """Poll ``predicate`` until true; return the seconds it took. For the rare state
    that offers no event to await (a process disappearing, say). ``what`` may be a
    function, to describe the state at the time out."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                  timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``moonwire ARGS`` to completion: (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        MOONWIRE, *args, cwd=cwd, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class NodeProcess:
    """``moonwire run`` as a separate OS process that a test can stop or kill.

    Its output is read line by line as it arrives, so a test can await a line.
    """

    def __init__(self, project: Path, name: str, *, nats_url: str | None = None,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.project = project
        self.name = name
        self.argv = [MOONWIRE, "run", str(project), "--node", name, *(["--nats", nats_url] if nats_url else []), *args]
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def start(self, *, ready: str | None = r"node \S+ running", timeout: float = 60.0) -> NodeProcess:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read(), name=f"output of node {self.name}")
        if ready is not None:
            await self.wait_for_line(ready, timeout)
        return self

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_line(self, pattern: str, timeout: float = 30.0) -> str:
        """The first output line matching ``pattern``; fails if the node exits first."""
        regex = re.compile(pattern)

        def found() -> str | None:
            return next((line for line in self.lines if regex.search(line)), None)

        async def wait() -> str:
            async with self._changed:
                while (line := found()) is None:
                    if self._reader is not None and self._reader.done():
                        raise AssertionError(f"node {self.name} ended before printing /{pattern}/:\n{self.output}")
                    await self._changed.wait()
                return line

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"node {self.name} printed no /{pattern}/ within {timeout}s:\n{self.output}") from None

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"node {self.name} still running after {timeout}s:\n{self.output}") from None
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for a clean exit."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def kill(self) -> int:
        """SIGKILL: no chance to clean up."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
        return await self.wait()

    async def aclose(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await self.kill()
        elif self._reader is not None:
            await self._reader


async def run_lua(source: str, *args: object, modules: tuple[str, ...] = ("time", "json", "uuid", "logger", "ctx", "funcs"),
                  limits: object = None, context: dict[str, object] | None = None, state: object = None,
                  name: str = "test:fn") -> object:
    """Run ``source`` (a chunk returning a function) as one unit; returns its Outcome."""
    from moonwire.lua import Limits, LuaCode, LuaState, Unit

    lua_state = state if state is not None else LuaState(limits if limits is not None else Limits())
    code = LuaCode(id=name, source=textwrap.dedent(source).encode(), chunkname=f"{name}.lua", modules=frozenset(modules))
    fn = lua_state.load(code)  # type: ignore[union-attr]
    unit = Unit(lua_state, name, context=dict(context or {}))  # type: ignore[arg-type]
    return await unit.run(fn, list(args))


class LocalRuntime:
    """A node's runtime (functions, hosts, processes, services) in this test's event loop,
    with no broker: for the local semantics of processes, which never touch NATS."""

    def __init__(self, root: Path, files: dict[str, str], node: str = "t1", remote: object = None) -> None:
        self.root, self.files, self.node, self.remote = root, files, node, remote
        self.runtime: object = None

    async def __aenter__(self) -> object:
        from moonwire.broker import Subjects
        from moonwire.node import load_project
        from moonwire.node._runtime import Runtime

        project = load_project(write_project(self.root, self.files))
        self.runtime = Runtime(self.node, project, Subjects(),
                               **({"remote": self.remote} if self.remote is not None else {}))  # type: ignore[arg-type]
        await self.runtime.start()  # type: ignore[attr-defined]
        return self.runtime

    async def __aexit__(self, *exc: object) -> None:
        await self.runtime.stop(2.0)  # type: ignore[attr-defined]


def process_project(sources: dict[str, str], *, extra_yaml: str = "") -> dict[str, str]:
    """Files for a project with one ``process.host`` (``app:host``) and a ``process.lua``
    entry ``app:<name>`` (method ``main``) for each Lua source given."""
    entries = ["  - name: host\n    kind: process.host\n"]
    files: dict[str, str] = {}
    for name, source in sources.items():
        entries.append(f"  - name: {name}\n    kind: process.lua\n    source: file://{name}.lua\n    method: main\n"
                       "    modules: [time, json, funcs, ctx, uuid]\n")
        files[f"{name}.lua"] = source
    files["_index.yaml"] = "namespace: app\nentries:\n" + "".join(entries) + textwrap.indent(textwrap.dedent(extra_yaml).strip("\n") + "\n", "  ")
    return files
