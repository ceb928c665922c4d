"""Everything that runs Lua on a node, composed once: function pools, process hosts,
the process table and the supervisor. The node adds the broker around it; tests of
local semantics run it with no broker at all (functions are then local only)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from moonwire.broker import PidAllocator, Subjects
from moonwire.lua import Kind, MoonwireError, Outcome, SpawnRequest, settled

from .cluster import Cluster
from .project import FunctionEntry, HostSettings, ProcessEntry, ProcessHostEntry
from .functions import Functions
from .processes import ProcessHost
from .processes import NO_WORKFLOWS, TERMINAL_HOST, UNREACHABLE, ProcessTable, RemoteTarget, WorkflowTarget
from .project import Project
from .processes import Supervisor


class Runtime:
    """Functions, process hosts, the process table and the supervisor, built in that
    order. ``functions`` (with their broker), the targets for PIDs that live elsewhere,
    the cluster's stores and ``hearing`` (the liveness's ``Membership.hearing``) come
    from the node; without them, everything is local."""

    def __init__(self, node: str, project: Project, subjects: Subjects, *, functions: Functions | None = None,
                 pids: PidAllocator | None = None, remote: RemoteTarget = UNREACHABLE,
                 workflows: WorkflowTarget = NO_WORKFLOWS, cluster: Cluster | None = None,
                 hearing: Callable[[], bool] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.project = project
        self.functions = functions if functions is not None else Functions(project, subjects)
        registry = self.functions.registry  # one per node: memory env storages are shared
        self.hosts = {entry.id: ProcessHost(entry.id, entry.host, loop, registry=registry, node=node)
                      for entry in project.of_kind("process.host") if isinstance(entry, ProcessHostEntry)}
        # `run -x` of a process.lua needs a host that every node has (wippy's terminal.host).
        self.hosts.setdefault(TERMINAL_HOST, ProcessHost(TERMINAL_HOST, HostSettings(), loop, registry=registry))
        self.processes = ProcessTable(node, project, self.functions, self.hosts, pids=pids, remote=remote,
                                      workflows=workflows, cluster=cluster)
        self.functions.use_processes(self.processes)
        # A singleton service runs only while the node hears the broker (its liveness).
        self.supervisor = Supervisor(project, self.processes, hearing=hearing)

    async def start(self) -> None:
        """Serve functions, then start the auto-start services."""
        await self.functions.serve()
        await self.supervisor.start()

    async def stop(self, timeout: float) -> None:
        """Services in reverse order, then every other process (CANCEL, then terminate
        after ``timeout``), then functions."""
        try:
            await self.supervisor.stop()
            await self.processes.shutdown(timeout)
        finally:
            await self.functions.stop()

    async def execute(self, entry_id: str, args: list[object]) -> Outcome:
        """Run one entry to completion (``moonwire run -x``): a function is called, a
        process is spawned on the terminal host and awaited."""
        entry = self.project.get(entry_id)
        if entry is None:
            return Outcome(error=MoonwireError(f"no entry {entry_id}", Kind.NOT_FOUND, retryable=False))
        if isinstance(entry, FunctionEntry):
            return await settled(self.functions.call(None, entry_id, list(args), {}, {}))
        if isinstance(entry, ProcessEntry):
            return await settled(self.processes.exec(None, SpawnRequest(entry_id, TERMINAL_HOST, list(args))))
        return Outcome(error=MoonwireError(
            f"{entry_id} is a {entry.kind}; -x runs function.lua and process.lua entries", Kind.INVALID,
            retryable=False))
