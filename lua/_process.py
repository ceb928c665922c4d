"""The ``process`` module's bridge between Lua and the node (wippy-surface §2.1-§2.2).

Lua calls that never wait (send, registering names, options, inbox, listen) are direct
calls into :class:`ProcessFunctions`; calls that may wait for another node or can end a
process (spawn, exec, cancel, terminate, monitor/link and their undoing, lookup) are
requests the unit answers (see ``Unit._op_proc_*``).
Either way, Lua values are converted here, once, and the node's ``ProcessServices``
(declared beside the unit, which holds them) sees Python values and raises
:class:`MoonwireError`, which becomes the Lua ``nil, err`` here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._answer import Outcome
from ._errors import Kind, MoonwireError, invalid
from ._security_context import Security
from ._values import LuaValues, to_lua, to_python

if TYPE_CHECKING:
    from ._protocols import LuaRuntime, Running


@dataclass(slots=True)
class SpawnRequest:
    """One ``spawn*``/``exec``: the entry, where, its arguments and the spawner's settings."""

    entry: str
    host: str
    args: list[Any]
    monitor: bool = False
    link: bool = False
    context: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    messages: list[tuple[str, list[Any]]] = field(default_factory=list)
    scope: str = "local"
    """The registry scope of ``name``: ``local``, or a cluster scope (``eventual``,
    ``consistent``, ``strong``), registered cluster-wide before the child runs."""
    security: Security | None = None
    """The actor and scope the child runs as (wippy-modules §5.3): the spawner's, over
    the parent's for a spawn; only the spawner's for an exec."""
    trace: str | None = None
    """The spawner's ``traceparent``: the child works in it until it takes a message."""


WATCH_VERBS = {b"monitor": "monitor", b"unmonitor": "unmonitor", b"link": "link", b"unlink": "unlink"}


def text(value: Any, what: str) -> str:
    """A Lua string argument as text (Invalid when it is not a string)."""
    if not isinstance(value, bytes):
        raise invalid(f"{what} must be a string")
    return value.decode("utf-8", "replace")


class ProcessFunctions:
    """The direct (non-waiting) calls behind the ``process`` module of one state."""

    def __init__(self, state: LuaRuntime) -> None:
        self.state = state

    def table(self) -> dict[bytes, Any]:
        names = ["proc_pid", "proc_id", "proc_send", "proc_spawn_here", "proc_traceparent", "box_hand",
                 "proc_options", "proc_set_options", "proc_inbox", "proc_events", "proc_listen", "proc_unlisten",
                 "proc_register", "proc_unregister", "cluster_now", "pg_subscribe", "pg_unsubscribe"]
        return {name.encode(): getattr(self, name) for name in names}

    def _unit(self) -> Running:
        unit = self.state.current
        if unit is None:
            raise MoonwireError("not running in a process or call", Kind.INTERNAL, retryable=False)
        return unit

    def _fail(self, err: MoonwireError) -> tuple[Any, ...]:
        return (None, self.state.make_error(err))

    def proc_pid(self) -> Any:
        try:
            unit = self._unit()
            return unit.processes.pid_of(unit).encode()
        except MoonwireError as err:
            return self._fail(err)

    def proc_id(self) -> bytes:
        unit = self._unit()
        if unit.frame_id is None:
            unit.frame_id = unit.pid or uuid.uuid4().hex
        return unit.frame_id.encode()

    def proc_send(self, dest: bytes, topic: bytes, *payloads: Any) -> tuple[Any, ...]:
        try:
            unit = self._unit()
            values = [to_python(self.state, p) for p in payloads]
            # The Lua side has checked that both are strings.
            unit.processes.send(unit, dest.decode("utf-8", "replace"), topic.decode("utf-8", "replace"), values)
            return (True,)
        except MoonwireError as err:
            return self._fail(err)

    def proc_spawn_here(self, entry: bytes, host: bytes, monitor: Any, link: Any, *args: Any) -> tuple[Any, ...]:
        """``process.spawn*`` of the plain spawner (no context, options, name, messages,
        actor or scope) when ``host`` runs on this node: started now, answered with the
        PID or ``nil, err``, without the request's yield and resume. ``(False,)`` when the
        spawn is not one of those (another node's host, a workflow): the Lua side then
        makes the request."""
        try:
            unit = self._unit()
            request = SpawnRequest(text(entry, "entry id"), text(host, "host"),
                                   [to_python(self.state, a) for a in args], monitor=bool(monitor), link=bool(link),
                                   security=unit.security)
            if not unit.processes.spawns_here(request):
                return (False,)
            request.trace = unit.traceparent()
            answer = unit.processes.spawn(unit, request)
        except MoonwireError as err:
            return self._fail(err)
        assert isinstance(answer, Outcome), "spawns_here promised an answer now"
        if answer.error is not None:
            return self._fail(answer.error)
        return (to_lua(self.state, answer.value),)

    def proc_traceparent(self) -> bytes:
        """The running process's trace context, made now if it has none (the local path
        sends in it, as ``send`` does)."""
        unit = self._unit()
        trace = unit.traceparent().encode()
        if unit.mailbox is not None:
            unit.mailbox.mirrored(trace)
        return trace

    def box_hand(self, box_id: int) -> None:
        """The local path put a message in the box of a process that may wait on its inbox."""
        mailbox = self.state.boxes.get(box_id)
        if mailbox is not None:
            mailbox.hand()

    def proc_options(self) -> Any:
        unit = self._unit()
        return self.state.table_from({b"trap_links": unit.trap_links, b"upgradable": unit.upgradable})

    def proc_set_options(self, trap_links: Any, upgradable: Any = None) -> bool:
        unit = self._unit()
        if trap_links is not None:
            unit.trap_links = bool(trap_links)
        if upgradable is not None:
            unit.upgradable = bool(upgradable)
        return True

    def _mailbox(self) -> Any:
        unit = self._unit()
        unit.processes.pid_of(unit)  # a function gets its PID (and mailbox) on first use
        assert unit.mailbox is not None
        return unit.mailbox

    def proc_inbox(self) -> Any:
        return self._mailbox().inbox()

    def proc_events(self) -> Any:
        return self._mailbox().events()

    def proc_listen(self, topic: bytes, as_message: Any) -> Any:
        return self._mailbox().listen(text(topic, "topic"), bool(as_message))

    def proc_unlisten(self, channel: Any) -> bool:
        return self._mailbox().unlisten(channel)

    def pg_subscribe(self, match: bytes, prefix: Any, strip: int) -> Any:
        """A channel of the caller's group events for ``match`` (see Mailbox.subscribe_groups)."""
        return self._mailbox().subscribe_groups(text(match, "group"), bool(prefix), int(strip))

    def pg_unsubscribe(self, channel: Any, flush: Any) -> bool:
        return self._mailbox().unsubscribe_groups(channel, bool(flush))

    def proc_register(self, name: bytes, pid: Any) -> tuple[Any, ...]:
        """A LOCAL name (the Lua side sends the cluster scopes as requests)."""
        try:
            unit = self._unit()
            unit.processes.register(unit, text(name, "name"), None if pid is None else text(pid, "pid"))
            return (True,)
        except MoonwireError as err:
            return self._fail(err)

    def cluster_now(self, verb: bytes, *args: Any) -> tuple[Any, ...]:
        """A cluster call that never waits (``system.node.id``, ``pg.members``, ...)."""
        try:
            unit = self._unit()
            value = unit.processes.cluster_now(unit, text(verb, "verb"), [to_python(self.state, a) for a in args])
            return (to_lua(self.state, value),)
        except MoonwireError as err:
            return self._fail(err)

    def proc_unregister(self, name: bytes) -> tuple[Any, ...]:
        try:
            unit = self._unit()
            return (unit.processes.unregister(unit, text(name, "name")),)
        except MoonwireError as err:
            return self._fail(err)


def spawn_request(state: LuaValues, entry: bytes, host: bytes, packed: Any, monitor: Any, link: Any, context: Any,
                  options: Any, name: Any, messages: Any, scope: Any = None, security: Any = None) -> SpawnRequest:
    """A :class:`SpawnRequest` from the Lua arguments of ``proc_spawn``/``proc_exec``;
    its ``security`` is the spawner's own (the unit adds the parent's)."""
    n = packed[b"n"] or 0
    args = [to_python(state, packed[i]) for i in range(1, n + 1)]
    py_context = to_python(state, context) if context is not None else {}
    py_options = to_python(state, options) if options is not None else {}
    queued: list[tuple[str, list[Any]]] = []
    if messages is not None:
        for i in range(1, len(messages) + 1):
            topic, payloads = messages[i][1], messages[i][2]
            count = payloads[b"n"] or 0
            queued.append((text(topic, "topic"), [to_python(state, payloads[j]) for j in range(1, count + 1)]))
    return SpawnRequest(
        entry=text(entry, "entry id"), host=text(host, "host"), args=args, monitor=bool(monitor), link=bool(link),
        context=py_context if isinstance(py_context, dict) else {},
        name=None if name is None else text(name, "name"),
        options=py_options if isinstance(py_options, dict) else {}, messages=queued,
        scope="local" if scope is None else text(scope, "scope"),
        security=None if security is None else Security.from_wire(to_python(state, security)),
    )
