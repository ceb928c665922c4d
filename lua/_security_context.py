"""The security context of a unit (wippy-modules §5.3): its actor and scope.

They are not context *values* (``ctx`` does not show them) but a :class:`Security`,
plain data that travels with every function call and spawn, to other nodes too (the
optional ``security`` field of a call or spawn body, ``docs/wire.md``), and that the
callee's ``security`` module turns back into Lua objects (``_security.lua``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ._errors import MoonwireError, invalid
from ._values import check_portable

MAX_POLICIES = 1024
"""How many policy ids one scope may name on the wire (a scope is a handful of policies)."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who a unit acts as: an id and metadata (a map of plain data; never mutated)."""

    id: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Security:
    """A unit's actor and scope. ``policies`` is the scope as its policy ids (the
    receiver resolves them in its own policy registry); None: no scope, which is not the
    same as an empty one (§5.4)."""

    actor: Actor | None = None
    policies: tuple[str, ...] | None = None

    def to_wire(self) -> dict[str, Any]:
        """``{"actor"?: {"id", "meta"}, "policies"?: [ids]}``, Wippy's security header."""
        data: dict[str, Any] = {}
        if self.actor is not None:
            data["actor"] = {"id": self.actor.id, "meta": self.actor.meta}
        if self.policies is not None:
            data["policies"] = list(self.policies)
        return data

    @staticmethod
    def from_wire(data: Any) -> Security | None:
        """The security of a call or spawn body (or of a Lua override, which has the
        same shape); None when it names neither an actor nor a scope.

        Raises:
            MoonwireError: (Invalid) naming what is malformed.
        """
        if data is None:
            return None
        if not isinstance(data, dict) or not set(data) <= {"actor", "policies"}:
            raise invalid("malformed security: expected a map with 'actor' and/or 'policies'")
        actor, policies = data.get("actor"), data.get("policies")
        parsed_actor: Actor | None = None
        if actor is not None:
            if not isinstance(actor, dict) or not set(actor) <= {"id", "meta"} or not isinstance(actor.get("id"), str):
                raise invalid("malformed security: 'actor' must be {id = text, meta = map}")
            parsed_actor = Actor(actor["id"], check_meta(actor.get("meta")))
        parsed_policies: tuple[str, ...] | None = None
        if policies is not None:
            if not (isinstance(policies, list) and len(policies) <= MAX_POLICIES
                    and all(isinstance(p, str) for p in policies)):
                raise invalid(f"malformed security: 'policies' must be a list of at most {MAX_POLICIES} policy ids")
            parsed_policies = tuple(policies)
        if parsed_actor is None and parsed_policies is None:
            return None
        return Security(parsed_actor, parsed_policies)

    @staticmethod
    def overlay(base: Security | None, override: Security | None) -> Security | None:
        """``base`` with what ``override`` sets (an executor's or spawner's
        ``with_actor``/``with_scope``) in its place."""
        if override is None:
            return base
        if base is None:
            return override
        return Security(override.actor if override.actor is not None else base.actor,
                        override.policies if override.policies is not None else base.policies)


def check_meta(meta: Any) -> dict[str, Any]:
    """An actor's metadata as it may travel: a map with text keys of what JSON and
    msgpack both say (nil, booleans, numbers, UTF-8 text, arrays, maps with text keys).
    An empty Lua table arrives as an empty list and is the empty map.

    Raises:
        MoonwireError: (Invalid) naming the first value that cannot travel.
    """
    if meta is None or meta == []:
        return {}
    if not isinstance(meta, dict):
        raise invalid("actor meta must be a table with string keys")
    check_portable(meta)  # depth and size first: the walk below then cannot run away
    stack: list[tuple[Any, str]] = [(meta, "meta")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise invalid(f"actor {path} has a non-string key {key!r}: meta must be JSON-like data")
                stack.append((item, f"{path}.{key}"))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i + 1}]") for i, item in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise invalid(f"actor {path} is {value}: meta must be JSON-like data")
        elif isinstance(value, (bytes, MoonwireError)):
            what = "an error object" if isinstance(value, MoonwireError) else "not valid UTF-8"
            raise invalid(f"actor {path} is {what}: meta must be JSON-like data")
    return meta
