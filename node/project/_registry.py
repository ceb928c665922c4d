"""A loaded project as the Lua ``registry`` and ``env`` modules see it: plain data
(``moonwire.lua.Entries``), made once, since a project does not change while it runs."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from moonwire.lua import RegistryEntry

from ._entries import Entry, InertEntry
from ._project import Project

_RESERVED = {"id", "kind", "meta"}


def entry_data(entry: Entry) -> Any:
    """The kind's fields, as written: a ``data:`` field of an entry of a kind this
    runtime does not know is taken whole (Wippy's rule); otherwise every field but
    ``name``, ``kind`` and ``meta``, defaults left out, paths as strings."""
    if isinstance(entry, InertEntry) and entry.model_extra and "data" in entry.model_extra:
        return copy.deepcopy(entry.model_extra["data"])
    data = entry.model_dump(mode="json", exclude_unset=True, exclude=_RESERVED)
    return data or None


class ProjectEntries:
    """``moonwire.lua.Entries`` over a loaded :class:`Project`."""

    def __init__(self, project: Project) -> None:
        self._entries = {
            entry.id: RegistryEntry(entry.id, entry.kind, copy.deepcopy(entry.meta), entry_data(entry))
            for entry in project.entries.values()
        }

    def get(self, entry_id: str) -> RegistryEntry | None:
        return self._entries.get(entry_id)

    def all(self) -> Iterable[RegistryEntry]:
        return self._entries.values()
