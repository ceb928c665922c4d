"""The Python functions behind the Lua ``security`` module of one state
(``_security.lua``). Trusted Lua code holds them as upvalues only; they take and return
Lua-ready values. The unit's actor and scope are a :class:`~._security_context.Security`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import MoonwireError
from ._security_context import check_meta
from ._values import to_lua, to_python

if TYPE_CHECKING:
    from ._protocols import LuaRuntime


class SecurityFunctions:
    """The Python side of ``_security.lua`` in one state."""

    def __init__(self, state: LuaRuntime) -> None:
        self.state = state

    def table(self) -> Any:
        names = ["in_workflow", "actor_meta", "current"]
        return self.state.table_from({name.encode(): getattr(self, name) for name in names})

    def in_workflow(self) -> bool:
        """A workflow's state (it replays): no ``security`` module there (§0)."""
        return self.state.random is not None

    def actor_meta(self, meta: Any) -> tuple[Any, ...]:
        """A private copy of ``new_actor``'s meta, checked: ``(copy,)`` or ``(nil, message)``."""
        try:
            value = to_python(self.state, meta)
        except MoonwireError as err:
            return (None, f"actor meta must be JSON-like data: {err.message}".encode())
        try:
            return (to_lua(self.state, check_meta(value)),)
        except MoonwireError as err:
            return (None, err.message.encode())

    def current(self) -> tuple[Any, ...]:
        """The running unit's ``(actor id, actor meta, policy ids)``, nil where absent."""
        unit = self.state.current
        security = unit.security if unit is not None else None
        if security is None:
            return (None, None, None)
        actor = security.actor
        policies = security.policies
        return (None if actor is None else actor.id.encode(),
                None if actor is None else to_lua(self.state, actor.meta),
                None if policies is None else to_lua(self.state, list(policies)))
