"""Models for the ``env.variable`` and ``env.storage.*`` kinds (wippy-modules §7).

Registered in ``KNOWN_KINDS`` when this module is imported (the package imports it).
The Lua ``env`` module reads these entries as plain data (``lua/_env.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from ._entries import KNOWN_KINDS, Entry


def _text(value: Any) -> Any:
    # YAML reads `default: 8080` or `DEBUG: true` as a number or boolean; a variable's
    # value is a string all the same.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_text)]


def _mode(value: Any) -> Any:
    # `file_mode: 0644` is already octal to YAML 1.1 (420); a string is read as octal.
    if isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            raise ValueError(f"expected an octal file mode such as '0644', got {value!r}") from None
    return value


FileMode = Annotated[int, BeforeValidator(_mode), Field(ge=0, le=0o7777)]

ENV_STORAGE_KINDS = ("env.storage.memory", "env.storage.file", "env.storage.os", "env.storage.static",
                     "env.storage.router")


class EnvVariableEntry(Entry):
    kind: Literal["env.variable"] = "env.variable"
    storage: str
    variable: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$",
                                 description="Public name; without it the entry id is the name.")
    default: Text | None = None
    readonly: bool = False

    references = (("storage", ENV_STORAGE_KINDS),)


class MemoryStorageEntry(Entry):
    kind: Literal["env.storage.memory"] = "env.storage.memory"


class FileStorageEntry(Entry):
    kind: Literal["env.storage.file"] = "env.storage.file"
    file_path: str = Field(min_length=1, description="A .env file; relative to the node's working directory.")
    auto_create: bool = False
    file_mode: FileMode = 0o644
    dir_mode: FileMode = 0o755


class OsStorageEntry(Entry):
    kind: Literal["env.storage.os"] = "env.storage.os"


class StaticStorageEntry(Entry):
    kind: Literal["env.storage.static"] = "env.storage.static"
    values: dict[str, Text] = Field(default_factory=dict)


class RouterStorageEntry(Entry):
    kind: Literal["env.storage.router"] = "env.storage.router"
    storages: list[str] = Field(min_length=1, description="Read in order; writes go to the first.")

    references = (("storages", ENV_STORAGE_KINDS),)


ENV_KINDS: dict[str, type[Entry]] = {
    model.model_fields["kind"].default: model
    for model in (EnvVariableEntry, MemoryStorageEntry, FileStorageEntry, OsStorageEntry, StaticStorageEntry,
                  RouterStorageEntry)
}
KNOWN_KINDS.update(ENV_KINDS)
