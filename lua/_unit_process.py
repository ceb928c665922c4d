"""The process side of a unit: what the node provides for the ``process``, ``pg`` and
``system`` modules (:class:`ProcessServices`) and the unit's answers to their requests
(:class:`ProcessRequests`, a mixin of :class:`~moonwire.lua.Unit`).

Lua values are converted here (or in ``_process.py`` for the calls that never wait),
once; the services see Python values and raise :class:`MoonwireError`, which the Lua
caller gets as ``nil, err``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._answer import BLOCKED, Answer
from ._errors import Kind, MoonwireError
from ._process import WATCH_VERBS, SpawnRequest, spawn_request, text
from ._security_context import Security
from ._values import to_python

if TYPE_CHECKING:
    from ._state import LuaState


class ProcessServices(Protocol):
    """What the ``process`` module needs from the node: the unit answers its requests
    with these, and its state's direct calls (``lua._process``) make the ones that never
    wait. Each method raises :class:`MoonwireError` on failure; ``dest`` is a PID or a
    registered name; ``unit`` is the calling :class:`~moonwire.lua.Unit`."""

    def pid_of(self, unit: Any) -> str:
        """The unit's PID, giving it one first if it has none (a function call)."""
        ...

    def send(self, unit: Any, dest: str, topic: str, payloads: list[Any]) -> None: ...

    def spawn(self, unit: Any | None, request: SpawnRequest) -> Answer:
        """Start a process; the answer's value is its PID."""
        ...

    def spawns_here(self, request: SpawnRequest) -> bool:
        """Whether :meth:`spawn` of ``request`` answers now (an Outcome): a host of this
        node, no other node pinned, no cluster name."""
        ...

    def exec(self, unit: Any | None, request: SpawnRequest) -> Answer:
        """Start a process and answer with its result when it exits."""
        ...

    def call_process(self, request: SpawnRequest, reason: str) -> Answer:
        """Start a process here for a function call (a process entry with
        ``default_host``) and answer with its result when it exits; dropping the answer
        sends the process CANCEL with ``reason`` (it may still run on)."""
        ...

    def terminate(self, unit: Any, dest: str) -> Answer | None:
        """None when done at once, else an answer settled when the target's node has done it."""
        ...

    def cancel(self, unit: Any, dest: str, reason: str) -> Answer | None:
        """As :meth:`terminate`."""
        ...

    def watch(self, unit: Any, verb: str, dest: str) -> Answer | None:
        """``monitor``, ``unmonitor``, ``link`` or ``unlink``: None when done at once, else
        an answer settled when the target's node has done it."""
        ...

    def register(self, unit: Any, name: str, pid: str | None) -> None:
        """Register a LOCAL name (cluster scopes go through :meth:`cluster_call`)."""
        ...

    def lookup(self, unit: Any, name: str, node: str | None) -> Answer:
        """The PID registered as ``name`` (cluster-wide first, then on this node), or
        in the LOCAL registry of ``node``."""
        ...

    def unregister(self, unit: Any, name: str) -> bool: ...

    def cluster_call(self, unit: Any, verb: str, args: list[Any]) -> Answer | None:
        """A cluster operation that may wait for JetStream: ``register`` and
        ``unregister`` in a cluster scope, ``pg.join``, ``pg.leave``, ``lock.acquire``,
        ``lock.release``. None when done at once."""
        ...

    def cluster_now(self, unit: Any, verb: str, args: list[Any]) -> Any:
        """A cluster call that never waits (group members and monitors, the node's id,
        the cluster's members): its value."""
        ...

    def upgrade(self, unit: Any, entry: str | None, args: list[Any]) -> Answer:
        """``process.upgrade``: replace the unit's code with ``entry``'s (None: its own
        entry's, as it is now) and call the new ``method`` with ``args``. The answer
        settles only on failure (the unit's thread never resumes on success)."""
        ...

    def update(self, unit: Any, dest: str, name: str, args: list[Any], options: dict[str, Any]) -> Answer:
        """``process.update`` (a moonwire addition): send Temporal update ``name`` with
        ``args`` to workflow ``dest``; the answer is its result or error."""
        ...


class NoProcesses:
    """For units that run with no node around them: every process call fails clearly."""

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise MoonwireError("the process API needs a node (this unit runs without one)", Kind.UNAVAILABLE,
                            retryable=False)

    def spawns_here(self, request: SpawnRequest) -> bool:
        return False  # the request then fails, clearly

    pid_of = send = spawn = exec = call_process = terminate = cancel = watch = register = lookup = unregister = _fail
    cluster_call = cluster_now = upgrade = update = _fail


class ProcessRequests:
    """The requests of the ``process``, ``pg`` and ``system`` modules that may wait, as
    :class:`~moonwire.lua.Unit` answers them (a mixin; the unit provides ``state``,
    ``processes`` and ``_reply``)."""

    __slots__ = ()

    if TYPE_CHECKING:
        state: LuaState
        processes: ProcessServices
        security: Security | None
        threads: set[int]

        def _reply(self, tid: int, answer: Answer) -> object: ...

        def traceparent(self) -> str: ...

    def _op_proc_spawn(self, tid: int, *args: Any) -> object:
        return self._proc_start(tid, self.processes.spawn, args, inherit=True)

    def _op_proc_exec(self, tid: int, *args: Any) -> object:
        # wippy-modules §5.3 (R): an exec'd child starts without the caller's actor and scope.
        return self._proc_start(tid, self.processes.exec, args, inherit=False)

    def _proc_start(self, tid: int, start: Callable[[Any, SpawnRequest], Answer], args: tuple[Any, ...], *,
                    inherit: bool) -> object:
        try:
            request = spawn_request(self.state, *args)
            request.trace = self.traceparent()
            if inherit:
                request.security = Security.overlay(self.security, request.security)
            answer = start(self, request)
        except MoonwireError as err:
            return (None, self.state.make_error(err))
        return self._reply(tid, answer)

    def _op_proc_watch(self, tid: int, verb: bytes, dest: bytes) -> object:
        return self._proc(tid, lambda: self.processes.watch(self, WATCH_VERBS[verb], text(dest, "destination")))

    def _op_proc_terminate(self, tid: int, dest: bytes) -> object:
        return self._proc(tid, lambda: self.processes.terminate(self, text(dest, "destination")))

    def _op_proc_cancel(self, tid: int, dest: bytes, reason: Any) -> object:
        return self._proc(tid, lambda: self.processes.cancel(
            self, text(dest, "destination"), "" if reason is None else text(reason, "reason")))

    def _op_proc_lookup(self, tid: int, name: bytes, node: Any) -> object:
        return self._proc(tid, lambda: self.processes.lookup(
            self, text(name, "name"), None if node is None else text(node, "node")))

    def _op_proc_upgrade(self, tid: int, entry: Any, packed: Any) -> object:
        state = self.state
        try:  # arguments Lua cannot copy: nothing is upgraded, the caller gets nil, err
            n = packed[b"n"] or 0
            args = [to_python(state, packed[i]) for i in range(1, n + 1)]
            answer = self.processes.upgrade(self, None if entry is None else text(entry, "entry id"), args)
        except MoonwireError as err:
            return (None, state.make_error(err))
        if tid not in self.threads:  # replaced (or ended): the calling thread went with the old code
            return BLOCKED
        return self._reply(tid, answer)

    def _op_proc_update(self, tid: int, dest: bytes, name: bytes, options: Any, packed: Any) -> object:
        state = self.state
        try:  # arguments Lua cannot copy: the caller gets nil, err, as from process.send
            n = packed[b"n"] or 0
            args = [to_python(state, packed[i]) for i in range(1, n + 1)]
            py_options = to_python(state, options) if options is not None else {}
        except MoonwireError as err:
            return (None, state.make_error(err))
        return self._proc(tid, lambda: self.processes.update(
            self, text(dest, "destination"), text(name, "update name"), args,
            py_options if isinstance(py_options, dict) else {}))

    def _op_cluster(self, tid: int, verb: bytes, *args: Any) -> object:
        state = self.state
        return self._proc(tid, lambda: self.processes.cluster_call(
            self, text(verb, "verb"), [to_python(state, a) for a in args]))

    def _proc(self, tid: int, call: Callable[[], Answer | None]) -> object:
        """A process request: ``true`` when done at once (None), else its answer."""
        try:
            answer = call()
        except MoonwireError as err:
            return (None, self.state.make_error(err))
        return (True,) if answer is None else self._reply(tid, answer)


PROCESS_OPS: dict[bytes, Callable[..., Any]] = {
    b"proc_spawn": ProcessRequests._op_proc_spawn, b"proc_exec": ProcessRequests._op_proc_exec,
    b"proc_terminate": ProcessRequests._op_proc_terminate, b"proc_watch": ProcessRequests._op_proc_watch,
    b"proc_cancel": ProcessRequests._op_proc_cancel, b"proc_lookup": ProcessRequests._op_proc_lookup,
    b"proc_upgrade": ProcessRequests._op_proc_upgrade, b"proc_update": ProcessRequests._op_proc_update,
    b"cluster": ProcessRequests._op_cluster,
}
"""The process requests a Lua thread can make, by name (merged into the unit's)."""
