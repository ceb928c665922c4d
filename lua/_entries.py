"""Entries as the Lua side sees them: plain data the node supplies (wippy-modules §6).
The node adapts its loaded project to :class:`Entries`; nothing here knows the node."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """An entry as Lua sees it: ``data`` is the kind's fields (plain data) or None."""

    id: str
    kind: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    data: Any = None


class Entries(Protocol):
    """A project's entries, as plain data (the node adapts its loaded project)."""

    def get(self, entry_id: str) -> RegistryEntry | None: ...

    def all(self) -> Iterable[RegistryEntry]: ...


class NoEntries:
    """No project: the registry is empty (states made without a node, in tests)."""

    def get(self, entry_id: str) -> RegistryEntry | None:
        return None

    def all(self) -> Iterable[RegistryEntry]:
        return ()
