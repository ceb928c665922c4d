"""Where a PID that is not in this node's table lives: a process on another node, or a
workflow. The process table chooses the target once from the PID (as OTP's ``gen:call``
makes one path for local and remote) and asks it through this small interface; the
table keeps every record, name and monitor/link pair of its own processes either way.

Events about the other side come back through the ``fire`` function given with each
watch, so a target holds no reference to the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from moonwire.broker import Pid
from moonwire.lua import Answer, Event, Kind, Message, MoonwireError, Outcome, Pending, SpawnRequest, not_found

Fire = Callable[[str, Event], None]
"""An EXIT or LINK_DOWN for a watcher PID (here, or on the node that asked)."""

class Target(Protocol):
    """Operations on PIDs that live elsewhere."""

    def send(self, pid: Pid, message: Message) -> None:
        """Deliver ``message`` (no acknowledgement, wippy-surface §3.1).

        Raises:
            MoonwireError: it cannot even be handed on (no route, a full queue)."""

    def end(self, pid: Pid, verb: str, by: str, reason: str) -> Answer:
        """``cancel`` (with ``reason``) or ``terminate`` ``pid``; settled once done there."""

    def watch(self, watcher: str, pid: Pid, verb: str, fire: Fire) -> Answer | None:
        """Add or drop the ``watcher``'s monitor or link on ``pid`` (one of WATCH_VERBS).
        When ``pid`` ends, or cannot be watched, ``fire`` gets the EXIT or LINK_DOWN.

        Raises:
            MoonwireError: the watch cannot be asked for at all."""

    def tell(self, pid: Pid, event: Event) -> None:
        """``pid`` monitors or is linked to a local process that ended: its EXIT or LINK_DOWN."""

    def forget(self, watcher: str, pid: Pid) -> None:
        """The local ``watcher`` ended while it monitored ``pid``."""

    def expect(self, pid: Pid) -> None:
        """A local process now holds a monitor or link on ``pid``: its end, or its node's,
        must be noticed."""


class RemoteTarget(Target, Protocol):
    """Processes on other nodes: a Target that also spawns and looks names up there."""

    def spawn(self, request: SpawnRequest, parent: str, node: str | None,
              on_reply: Callable[[Outcome], None]) -> Callable[[], None]:
        """Start ``request`` on ``node``, or on any node that runs its host; ``on_reply``
        gets the child's PID (or the error). Returns a function that abandons it."""

    def lookup(self, node: str, name: str) -> Answer:
        """The PID registered as ``name`` on ``node``."""

    def describe(self) -> dict[str, Any]:
        """What ``moonwire nodes`` shows about the other nodes (liveness as this node sees it)."""


class WorkflowTarget(Target, Protocol):
    """Workflows: a Target that also starts them, on the ``temporal.worker`` hosts it knows."""

    @property
    def workers(self) -> list[str]:
        """The worker hosts this node can start workflows on."""

    def serves(self, host: str) -> bool:
        """Whether ``host`` is a worker host (a spawn there starts a workflow)."""

    def spawn(self, request: SpawnRequest, parent: str, wait_exit: bool, fire: Fire) -> Pending:
        """Start a workflow; its PID, or with ``wait_exit`` its result. ``fire`` gets the
        EXIT or LINK_DOWN for the monitor or link ``parent`` asked for."""

    def update(self, pid: Pid, name: str, args: list[Any], options: dict[str, Any]) -> Answer:
        """Send Temporal update ``name`` to workflow ``pid``: its result or error.

        Raises:
            MoonwireError: a bad option."""


class _Unreachable:
    """What this node cannot reach (it has no broker): every operation that would need
    one fails with the error ``error`` gives; there is nothing to tell or forget, and
    dropping a watch is done. Serves the process table run without a broker."""

    def __init__(self, error: Callable[[Pid], MoonwireError]) -> None:
        self._error = error

    def send(self, pid: Pid, message: Message) -> None:
        raise self._error(pid)

    def end(self, pid: Pid, verb: str, by: str, reason: str) -> Answer:
        raise self._error(pid)

    def watch(self, watcher: str, pid: Pid, verb: str, fire: Fire) -> Answer | None:
        if verb in ("monitor", "link"):
            raise self._error(pid)
        return None

    def tell(self, pid: Pid, event: Event) -> None:
        pass

    def forget(self, watcher: str, pid: Pid) -> None:
        pass

    def expect(self, pid: Pid) -> None:
        pass


class NoNodes(_Unreachable):
    """Other nodes, for a table without a broker."""

    def __init__(self) -> None:
        super().__init__(lambda pid: MoonwireError(f"process {pid} is on node {pid.node}, which this node cannot "
                                                   "reach", Kind.UNAVAILABLE, retryable=True))

    def describe(self) -> dict[str, Any]:
        return {"peers": [], "down": [], "hearing_for": 0.0, "dropped_to_down_nodes": 0}

    def lookup(self, node: str, name: str) -> Answer:
        return Outcome(error=MoonwireError(f"node {node} is unreachable: this node has no broker", Kind.UNAVAILABLE,
                                           retryable=False))

    def spawn(self, request: SpawnRequest, parent: str, node: str | None,
              on_reply: Callable[[Outcome], None]) -> Callable[[], None]:
        if node is not None:
            on_reply(Outcome(error=MoonwireError(f"node {node} is unreachable: this node has no broker",
                                                 Kind.UNAVAILABLE, retryable=False)))
        else:
            on_reply(Outcome(error=not_found(f"no process host {request.host} on this node")))
        return lambda: None


class NoWorkflows(_Unreachable):
    """Workflows, for a table without a broker: no worker hosts, so nothing to start."""

    def __init__(self) -> None:
        super().__init__(lambda pid: MoonwireError("this node does not talk to Temporal (it has no broker)",
                                                   Kind.UNAVAILABLE, retryable=False))

    @property
    def workers(self) -> list[str]:
        return []

    def serves(self, host: str) -> bool:
        return False

    def spawn(self, request: SpawnRequest, parent: str, wait_exit: bool, fire: Fire) -> Pending:
        raise self._error(Pid("", request.host, request.entry))

    def update(self, pid: Pid, name: str, args: list[Any], options: dict[str, Any]) -> Answer:
        raise self._error(pid)


UNREACHABLE: RemoteTarget = NoNodes()
NO_WORKFLOWS: WorkflowTarget = NoWorkflows()
