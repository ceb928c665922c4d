"""Environment variables as Wippy resolves them (wippy-modules §7): ``env.variable``
entries over ``env.storage.*`` entries, built from plain entry data (the registry's
:class:`RegistryEntry`), so this knows nothing of the node or its models.

One :class:`Environment` serves every state of a node: a memory storage's values are
the node's (another node has its own), a file storage's are the file's.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ._entries import RegistryEntry
from ._errors import Kind, MoonwireError

log = logging.getLogger("moonwire.env")

VARIABLE_KIND = "env.variable"
STORAGE_PREFIX = "env.storage."


def _error(message: str, kind: Kind) -> MoonwireError:
    return MoonwireError(message, kind, retryable=False)


class Storage(Protocol):
    """Where variables' values live, by name."""

    read_only: bool

    def get(self, name: str) -> str | None: ...

    def set(self, name: str, value: str) -> None: ...

    def items(self) -> dict[str, str]: ...


class MemoryStorage:
    """Values held by this node while it runs."""

    read_only = False

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def set(self, name: str, value: str) -> None:
        self.values[name] = value

    def items(self) -> dict[str, str]:
        return dict(self.values)


class StaticStorage:
    """The ``values:`` of its entry; read-only."""

    read_only = True

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = {str(k): _scalar(v) for k, v in values.items()}

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def set(self, name: str, value: str) -> None:
        raise _error("storage is read-only", Kind.PERMISSION_DENIED)

    def items(self) -> dict[str, str]:
        return dict(self.values)


class OsStorage:
    """The node process's environment; read-only."""

    read_only = True

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def get(self, name: str) -> str | None:
        return self.environ.get(name)

    def set(self, name: str, value: str) -> None:
        raise _error("storage is read-only", Kind.PERMISSION_DENIED)

    def items(self) -> dict[str, str]:
        return dict(self.environ)


_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*?)\s*$")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def parse_dotenv(text: str) -> dict[str, str]:
    """``NAME=value`` lines: ``#`` comments, an optional ``export``, single quotes
    literal, double quotes with ``\\n``-style escapes, an unquoted value ending at `` #``."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        name, raw = match.groups()
        if len(raw) >= 2 and raw[0] == raw[-1] == "'":
            value = raw[1:-1]
        elif len(raw) >= 2 and raw[0] == raw[-1] == '"':
            value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), raw[1:-1])
        else:
            value = re.split(r"\s+#", raw, maxsplit=1)[0]
        values[name] = value
    return values


def format_dotenv(values: Mapping[str, str]) -> str:
    lines = []
    for name, value in values.items():
        if value == "" or re.fullmatch(r"[A-Za-z0-9_./:@%+,-]+", value):
            lines.append(f"{name}={value}")
        else:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
            lines.append(f'{name}="{escaped}"')
    return "".join(line + "\n" for line in lines)


class FileStorage:
    """A ``.env`` file, read on every get (so edits show at once) and rewritten whole on
    every set. A relative path is relative to the node's working directory, as Wippy's."""

    read_only = False

    def __init__(self, path: str, *, auto_create: bool = False, file_mode: int = 0o644, dir_mode: int = 0o755) -> None:
        self.path = Path(path)
        self.auto_create = auto_create
        self.file_mode = file_mode
        self.dir_mode = dir_mode

    def items(self) -> dict[str, str]:
        try:
            return parse_dotenv(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as err:
            raise _error(f"cannot read {self.path}: {err}", Kind.INTERNAL) from err

    def get(self, name: str) -> str | None:
        return self.items().get(name)

    def set(self, name: str, value: str) -> None:
        if not self.path.exists() and not self.auto_create:
            raise _error(f"{self.path} does not exist (auto_create is off)", Kind.INTERNAL)
        values = self.items()
        values[name] = value
        try:
            self.path.parent.mkdir(mode=self.dir_mode, parents=True, exist_ok=True)
            temporary = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.file_mode)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(format_dotenv(values))
            os.replace(temporary, self.path)  # readers never see half a file
        except OSError as err:
            raise _error(f"cannot write {self.path}: {err}", Kind.INTERNAL) from err


class RouterStorage:
    """Several storages: reads try them in order, writes go to the first."""

    def __init__(self, storages: list[Storage]) -> None:
        self.storages = storages

    @property
    def read_only(self) -> bool:
        return not self.storages or self.storages[0].read_only

    def get(self, name: str) -> str | None:
        for storage in self.storages:
            value = storage.get(name)
            if value is not None and value != "":
                return value
        return None

    def set(self, name: str, value: str) -> None:
        if not self.storages:
            raise _error("router has no storages", Kind.PERMISSION_DENIED)
        self.storages[0].set(name, value)

    def items(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for storage in self.storages:
            for name, value in storage.items().items():
                merged.setdefault(name, value)
        return merged


@dataclass(frozen=True, slots=True)
class Variable:
    """An ``env.variable`` entry: ``name`` is its public name (``variable:``, or else
    its entry id), the name its storage holds it under."""

    id: str
    name: str
    storage: str
    default: str | None
    readonly: bool


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _mode(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, str):
        return int(value, 8)
    return int(value)


class Environment:
    """The variables and storages of one project, for one node."""

    def __init__(self, entries: Iterable[RegistryEntry], *, environ: Mapping[str, str] | None = None) -> None:
        specs: dict[str, RegistryEntry] = {}
        variables: list[RegistryEntry] = []
        for entry in sorted(entries, key=lambda e: e.id):
            if entry.kind.startswith(STORAGE_PREFIX):
                specs[entry.id] = entry
            elif entry.kind == VARIABLE_KIND:
                variables.append(entry)
        self.storages: dict[str, Storage] = {}
        for storage_id in specs:
            self._storage(storage_id, specs, environ, ())
        self.by_name: dict[str, Variable] = {}
        self.by_id: dict[str, Variable] = {}
        for entry in variables:
            data = entry.data if isinstance(entry.data, dict) else {}
            name = data.get("variable") or entry.id
            default = data.get("default")
            variable = Variable(entry.id, str(name), str(data.get("storage", "")),
                                None if default is None else _scalar(default), bool(data.get("readonly", False)))
            self.by_id[entry.id] = variable
            if variable.name in self.by_name:
                log.warning("env.variable %s: public name %r is already %s's; ignored", entry.id, variable.name,
                            self.by_name[variable.name].id)
                continue
            self.by_name[variable.name] = variable

    def _storage(self, storage_id: str, specs: dict[str, RegistryEntry], environ: Mapping[str, str] | None,
                 seen: tuple[str, ...]) -> Storage | None:
        if storage_id in self.storages:
            return self.storages[storage_id]
        spec = specs.get(storage_id)
        if spec is None or storage_id in seen:
            log.warning("env storage %s: %s", storage_id, "routes to itself" if spec else "no such storage")
            return None
        data = spec.data if isinstance(spec.data, dict) else {}
        kind = spec.kind.removeprefix(STORAGE_PREFIX)
        storage: Storage | None
        if kind == "memory":
            storage = MemoryStorage()
        elif kind == "static":
            storage = StaticStorage(data.get("values") or {})
        elif kind == "os":
            storage = OsStorage(environ)
        elif kind == "file":
            storage = FileStorage(str(data.get("file_path", "")), auto_create=bool(data.get("auto_create", False)),
                                  file_mode=_mode(data.get("file_mode"), 0o644),
                                  dir_mode=_mode(data.get("dir_mode"), 0o755))
        elif kind == "router":
            routed = [self._storage(str(i), specs, environ, (*seen, storage_id)) for i in data.get("storages") or ()]
            storage = RouterStorage([s for s in routed if s is not None])
        else:
            log.warning("env storage %s: unknown kind %s", storage_id, spec.kind)
            storage = None
        if storage is not None:
            self.storages[storage_id] = storage
        return storage

    # ------------------------------------------------------------ what env.* does

    def resolve(self, key: str, namespace: str) -> Variable:
        """The variable ``key`` names, as Wippy looks it up: a public name, then
        ``<namespace>:key`` for a key without one, then an entry id.

        Raises:
            MoonwireError: NOT_FOUND, no such variable.
        """
        variable = self.by_name.get(key)
        if variable is None and ":" not in key and namespace:
            variable = self.by_id.get(f"{namespace}:{key}")
        if variable is None:
            variable = self.by_id.get(key)
        if variable is None:
            raise _error(f"environment variable not found: {key}", Kind.NOT_FOUND)
        return variable

    def _storage_of(self, variable: Variable) -> Storage:
        storage = self.storages.get(variable.storage)
        if storage is None:
            raise _error(f"storage {variable.storage} of variable {variable.id} not found", Kind.NOT_FOUND)
        return storage

    def get(self, key: str, namespace: str) -> str:
        """Raises: MoonwireError: NOT_FOUND (unknown, or unset without a default)."""
        variable = self.resolve(key, namespace)
        value = self._storage_of(variable).get(variable.name)
        if value is None or value == "":
            if variable.default:
                return variable.default
            raise _error(f"environment variable not set: {key}", Kind.NOT_FOUND)
        return value

    def set(self, key: str, value: str, namespace: str) -> None:
        """Raises: MoonwireError: NOT_FOUND (unknown), PERMISSION_DENIED (read-only
        variable or storage), INTERNAL (a file that cannot be written)."""
        variable = self.resolve(key, namespace)
        if variable.readonly:
            raise _error(f"environment variable is read-only: {key}", Kind.PERMISSION_DENIED)
        storage = self._storage_of(variable)
        if storage.read_only:
            raise _error(f"storage {variable.storage} is read-only", Kind.PERMISSION_DENIED)
        storage.set(variable.name, value)

    def all(self) -> dict[str, str]:
        """Every name every storage lists, by its raw storage name (an OS storage
        gives the whole process environment); for a name in several, the storage with
        the smallest entry id wins."""
        merged: dict[str, str] = {}
        for storage_id in sorted(self.storages):
            for name, value in self.storages[storage_id].items().items():
                merged.setdefault(name, value)
        return merged
