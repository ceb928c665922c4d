"""What the modules below the state and the unit use of them, as protocols.

A :class:`~moonwire.lua.LuaState` builds the host and process functions of its Lua
modules and records which :class:`~moonwire.lua.Unit` is running; those functions, and a
unit's timers and futures, reach back into the state and the unit. Described here
rather than imported, the imports inside ``lua/`` point one way (the state and the unit
on top, these and the value conversions below) with no cycle, and nothing is added to
any call: a protocol is read by type checkers only.
"""

from __future__ import annotations

import asyncio
from random import Random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._values import LuaValues

if TYPE_CHECKING:
    from ._entries import Entries
    from ._env import Environment
    from ._mailbox import Mailbox
    from ._security_context import Security


class DirectProcessCalls(Protocol):
    """The calls of the node's ``ProcessServices`` that Lua makes without waiting.

    ``unit`` is the calling :class:`~moonwire.lua.Unit` (which passes itself); it is
    typed loosely because the services' own protocol, beside the unit, names the class.
    """

    def pid_of(self, unit: Any) -> str: ...

    def send(self, unit: Any, dest: str, topic: str, payloads: list[Any]) -> None: ...

    def register(self, unit: Any, name: str, pid: str | None) -> None: ...

    def unregister(self, unit: Any, name: str) -> bool: ...

    def cluster_now(self, unit: Any, verb: str, args: list[Any]) -> Any: ...


class Running(Protocol):
    """The unit whose thread is running (a :class:`~moonwire.lua.Unit`), as the host
    and process functions of its state see it."""

    label: str
    context: dict[str, Any]
    pid: str | None
    frame_id: str | None
    trap_links: bool
    upgradable: bool
    mailbox: Mailbox | None
    security: Security | None

    @property
    def processes(self) -> DirectProcessCalls: ...

    def own(self, awaitable: Awaitable[Any], on_done: Callable[[asyncio.Task[Any]], None]) -> asyncio.Task[Any]: ...


class RegistryView(Protocol):
    """The node's entries and environment a state reads (a ``Registry``)."""

    entries: Entries
    env: Environment


class LuaRuntime(LuaValues, Protocol):
    """What the host and process functions, timers and futures use of their state (a
    :class:`~moonwire.lua.LuaState`): its clock and random source, the running unit,
    and the prelude's constructors of Lua values (Lua functions)."""

    clock: Callable[[], int]
    random: Random | None
    host_error: Callable[..., Any]
    new_payload: Callable[..., Any]
    new_time: Callable[..., Any]
    registry: RegistryView
    log: Any

    @property
    def current(self) -> Running | None: ...
