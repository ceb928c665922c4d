"""The Python functions behind the Lua ``registry`` and ``env`` modules of one state
(``_registry.lua``, wippy-modules §6, §7), and what the node hands a state for them.

The node owns the project; this package only sees entries as plain data, through the
:class:`Entries` protocol, wrapped once per node in a :class:`Registry` (which also
holds the node's :class:`Environment`, so memory storages are shared by its states).
Every entry handed to Lua is a fresh copy: no state can change what another sees.
"""

from __future__ import annotations

import re2
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._entries import Entries, NoEntries, RegistryEntry
from ._env import Environment
from ._errors import MoonwireError
from ._values import as_text, to_lua, to_python

if TYPE_CHECKING:
    from ._protocols import LuaRuntime


class Registry:
    """What one node's states read entries and environment variables from."""

    def __init__(self, entries: Entries, *, environ: Mapping[str, str] | None = None) -> None:
        self.entries = entries
        self.env = Environment(entries.all(), environ=environ)


EMPTY_REGISTRY = Registry(NoEntries())


# ---------------------------------------------------------------- find


def _glob(value: str, pattern: str) -> bool:
    """Wippy's match: exact, or one ``*`` as ``pre*``, ``*suf`` or ``pre*suf``."""
    if "*" not in pattern:
        return value == pattern
    prefix, _, suffix = pattern.partition("*")  # a second star is compared literally, as Wippy
    return value.startswith(prefix) and value.endswith(suffix) and len(value) >= len(prefix) + len(suffix)


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(expected, list):  # every string listed must be in the entry's list
        return (isinstance(actual, list) and all(isinstance(e, str) for e in expected)
                and all(e in actual for e in expected))
    if isinstance(expected, dict):
        return False  # a table value never matches (Wippy: undefined)
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is type(expected) and actual == expected
    return actual == expected  # numbers compare by value, 1 == 1.0 (Wippy: by host type)


def _contains(actual: Any, text: str) -> bool:
    if isinstance(actual, str):
        return text in actual
    if isinstance(actual, list):
        return any(isinstance(item, str) and text in item for item in actual)
    return False


@dataclass(slots=True)
class Filter:
    """A ``registry.find`` filter, parsed once (wippy-modules §6, "find keys")."""

    root: dict[str, str] = field(default_factory=dict)
    checks: list[tuple[str, str, Any]] = field(default_factory=list)
    """``(operator, meta field, operand)``; operator one of = ~ * ^ $."""

    @classmethod
    def parse(cls, spec: Mapping[Any, Any], warn: Any) -> Filter:
        parsed = cls()
        for key, value in spec.items():
            if not isinstance(key, str):
                warn(f"registry.find: key {key!r} ignored: keys are strings such as '.kind' or 'meta.type'")
                continue
            if key.startswith("."):
                if key[1:] in ("kind", "ns", "name", "id") and isinstance(value, str):
                    parsed.root[key[1:]] = value
                continue  # other root fields and non-string values: ignored, as Wippy
            operator = key[0] if key[0] in "~*^$" else "="
            name = key[1:] if operator != "=" else key
            if not name.startswith("meta."):
                warn(f"registry.find: key {key!r} ignored: use '.kind', '.ns', '.name', '.id' "
                     f"or 'meta.<field>' (with ~ * ^ $ for regex, contains, prefix, suffix)")
                continue
            name = name[5:]
            if operator == "=":
                parsed.checks.append(("=", name, value))
            elif not isinstance(value, str):
                continue  # the string operators ignore other values, as Wippy
            elif operator == "~":
                # RE2, as Wippy's Go regexp: linear time, so no pattern can hold the loop
                # (Python's backtracking re took 16 s on one 27-character value).
                try:
                    parsed.checks.append(("~", name, re2.compile(value)))
                except re2.error as err:
                    warn(f"registry.find: invalid regex for {key!r} ignored: {err}")
            else:
                parsed.checks.append((operator, name, value))
        return parsed

    def matches(self, entry: RegistryEntry) -> bool:
        namespace, _, name = entry.id.partition(":")
        fields = {"kind": entry.kind, "ns": namespace, "name": name, "id": entry.id}
        if not all(_glob(fields[k], pattern) for k, pattern in self.root.items()):
            return False
        meta = entry.meta
        for operator, name, operand in self.checks:
            actual = meta.get(name)
            if operator == "=":
                if name not in meta or not _equal(actual, operand):
                    return False
            elif operator == "*":
                if not _contains(actual, operand):
                    return False
            elif not isinstance(actual, str):
                return False
            elif operator == "~" and operand.search(actual) is None:
                return False
            elif operator == "^" and not actual.startswith(operand):
                return False
            elif operator == "$" and not actual.endswith(operand):
                return False
        return True


# ---------------------------------------------------------------- host functions


def _failure(err: MoonwireError) -> tuple[None, bytes, bytes]:
    return (None, err.message.encode(), str(err.kind).encode())


class RegistryFunctions:
    def __init__(self, state: LuaRuntime) -> None:
        self.state = state

    def table(self) -> Any:
        names = ["registry_get", "registry_find", "env_get", "env_set", "env_all"]
        return self.state.table_from({name.encode(): getattr(self, name) for name in names})

    def _entry(self, entry: RegistryEntry) -> Any:
        return to_lua(self.state, {"id": entry.id, "kind": entry.kind, "meta": dict(entry.meta), "data": entry.data})

    # ------------------------------------------------------------ registry

    def registry_get(self, entry_id: bytes) -> tuple[Any, ...]:
        text = as_text(entry_id)
        namespace, colon, name = text.partition(":")
        entry = self.state.registry.entries.get(text) if colon and namespace else None
        if entry is None:
            return (None, f"entry not found: {text}".encode(), b"NotFound")
        return (self._entry(entry),)

    def registry_find(self, spec: Any) -> Any:
        try:
            value = to_python(self.state, spec)
        except MoonwireError as err:
            return _failure(err)
        if value == []:
            value = {}
        if isinstance(value, list):
            value = dict(enumerate(value, 1))
        found = Filter.parse(value, self.state.log.warning)
        entries = [self._entry(e) for e in self.state.registry.entries.all() if found.matches(e)]
        return (self.state.table_from(entries),)

    # ------------------------------------------------------------ env

    def _namespace(self) -> str | None:
        unit = self.state.current
        if unit is None:
            return None
        return unit.label.rpartition(":")[0]

    def env_get(self, key: bytes) -> tuple[Any, ...]:
        namespace = self._namespace()
        if namespace is None:
            return (None, b"env.get: no calling entry (called outside a function or process)", b"Internal")
        try:
            return (self.state.registry.env.get(as_text(key), namespace).encode(),)
        except MoonwireError as err:
            return _failure(err)

    def env_set(self, key: bytes, value: bytes) -> tuple[Any, ...]:
        namespace = self._namespace()
        if namespace is None:
            return (None, b"env.set: no calling entry (called outside a function or process)", b"Internal")
        try:
            self.state.registry.env.set(as_text(key), as_text(value), namespace)
        except MoonwireError as err:
            return _failure(err)
        return (True,)

    def env_all(self) -> Any:
        try:
            values = self.state.registry.env.all()
        except MoonwireError as err:
            self.state.log.warning("env.get_all: %s", err.message)
            values = {}
        return self.state.table_from({k.encode(): v.encode() for k, v in values.items()})
