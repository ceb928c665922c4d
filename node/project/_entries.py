"""Pydantic models for the entry kinds the runtime knows (wippy-surface §1).

Entry fields sit at the top level of an entry in YAML; ``name``, ``kind`` and ``meta``
are reserved and the rest is the kind's data. References to other entries are stored
fully qualified (``ns:name``) once the loader has resolved them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from moonwire.broker import name_problem  # the rules of cluster names (lifecycle.name)

from ._types import ByteSize, Seconds


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entry(_Model):
    """Fields every entry has."""

    id: str
    kind: str
    meta: dict[str, Any] = Field(default_factory=dict)

    # Reference fields, as (dotted field path, accepted kinds); the loader resolves and checks them.
    references: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]] = ()

    @property
    def name(self) -> str:
        return self.id.rpartition(":")[2]


# ---------------------------------------------------------------- lifecycle


class RestartPolicy(_Model):
    initial_delay: Seconds = 1.0
    max_delay: Seconds = 90.0
    backoff_factor: float = Field(2.0, ge=1.0)
    jitter: float = Field(0.1, ge=0.0, le=1.0)
    max_attempts: int = Field(0, ge=0, description="0 retries for ever")


class SecurityActor(_Model):
    id: str
    meta: dict[str, Any] = Field(default_factory=dict)


class Security(_Model):
    actor: SecurityActor | None = None
    groups: list[str] = Field(default_factory=list)
    policies: list[str] = Field(default_factory=list)


class Lifecycle(_Model):
    auto_start: bool = False
    start_timeout: Seconds = 10.0
    stop_timeout: Seconds = 10.0
    stable_threshold: Seconds = 5.0
    requires: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list, description="Legacy alias of requires; merged.")
    restart: RestartPolicy = RestartPolicy()
    security: Security | None = None
    startup: Literal["required", "optional"] = "required"
    placement: Literal["node", "cluster"] = Field(
        "node", description="process.service only. node: every node that has the entry runs its own copy. "
        "cluster: a singleton, at most one instance in the cluster, run by whichever candidate node holds "
        "its cluster lock (docs/cluster.md, Singleton services).")
    name: str | None = Field(
        None, description="placement: cluster only. The cluster name the instance is spawned with (CONSISTENT "
        "scope), so mw.n.<name>.<topic> and sends by name reach it wherever it runs.")

    @field_validator("name")
    @classmethod
    def _cluster_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("placement") != "cluster":
            raise ValueError("lifecycle.name is the cluster name of a singleton service: it needs placement: cluster")
        # The cluster's rules (JetStream key characters, length): checked here so a bad
        # name is a loader error naming the entry, not a service failing at every start.
        if (problem := name_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @property
    def dependencies(self) -> list[str]:
        """``requires`` and ``depends_on`` merged, in order, without repeats."""
        return list(dict.fromkeys([*self.requires, *self.depends_on]))


class _HasLifecycle(Entry):
    lifecycle: Lifecycle = Lifecycle()


LIFECYCLE_KINDS = ("process.host", "process.service", "temporal.client", "temporal.worker")
_LIFECYCLE_REFS = (("lifecycle.requires", LIFECYCLE_KINDS), ("lifecycle.depends_on", LIFECYCLE_KINDS))


# ---------------------------------------------------------------- Lua entries


LUA_KINDS = ("library.lua", "function.lua", "process.lua", "workflow.lua")


class LuaEntry(Entry):
    """``source``/``method``/``modules``/``imports``, common to the Lua kinds."""

    source: Path = Field(description="Absolute path, resolved from file:// against the YAML file.")
    method: str | None = None
    modules: list[str] = Field(default_factory=list)
    imports: dict[str, str] = Field(default_factory=dict)

    # Any Lua entry may be imported (wippy-surface §1.2): ``require(alias)`` gives its
    # chunk's return value, instantiated once per importing instance.
    references = (("imports", LUA_KINDS),)


DEFAULT_MEMORY_LIMIT = 64 * 1024 * 1024
DEFAULT_INSTRUCTION_BUDGET = 10_000_000


class LuaLimits(_Model):
    """Runaway protection for the Lua states of a pool or host (moonwire's own fields)."""

    memory_limit: ByteSize = Field(DEFAULT_MEMORY_LIMIT, ge=1024 * 1024, description="per Lua state")
    instruction_budget: int = Field(DEFAULT_INSTRUCTION_BUDGET, ge=1000,
                                    description="VM instructions a thread may run between two yields")


class FunctionPool(LuaLimits):
    type: Literal["inline", "lazy", "static", "adaptive"] | None = None
    workers: int | None = Field(None, ge=1)
    size: int | None = Field(None, ge=1)
    buffer: int | None = Field(None, ge=0)
    max_size: int = Field(16, ge=1)
    idle_timeout: Seconds = 30.0

    @property
    def effective_type(self) -> str:
        if self.type is not None:
            return self.type
        return "static" if (self.workers or self.size) else "lazy"

    @property
    def effective_workers(self) -> int:
        return self.workers or self.size or 8

    @property
    def effective_buffer(self) -> int:
        return self.buffer if self.buffer is not None else self.effective_workers * 64


_ACTIVITY_REF = ("meta.temporal.activity.worker", ("temporal.worker",))


class FunctionEntry(LuaEntry):
    kind: Literal["function.lua"] = "function.lua"
    pool: FunctionPool = FunctionPool()

    references = (*LuaEntry.references, _ACTIVITY_REF)


class ProcessEntry(LuaEntry):
    kind: Literal["process.lua"] = "process.lua"

    # wippy-modules §12.2: a process entry with a default host is also a function.
    references = (*LuaEntry.references, _ACTIVITY_REF, ("meta.default_host", ("process.host",)),
                  ("meta.options.default_host", ("process.host",)))

    @field_validator("meta")
    @classmethod
    def _default_host_is_an_id(cls, meta: dict[str, Any]) -> dict[str, Any]:
        options = meta.get("options", {})
        for where, holder in (("default_host", meta), ("options.default_host", options)):
            if isinstance(holder, dict) and "default_host" in holder and not (
                    isinstance(holder["default_host"], str) and holder["default_host"]):
                raise ValueError(f"{where} must be a process.host id (namespace:name), "
                                 f"got {holder['default_host']!r}")
        return meta

    @property
    def default_host(self) -> str | None:
        """The host a call of this entry as a function spawns it on: ``meta.options.default_host``,
        else ``meta.default_host`` (wippy-modules §12.2); None: not a function."""
        options = self.meta.get("options")
        host = options.get("default_host") if isinstance(options, dict) else None
        return host or self.meta.get("default_host") or None


class WorkflowEntry(LuaEntry):
    kind: Literal["workflow.lua"] = "workflow.lua"

    references = (*LuaEntry.references, ("meta.temporal.workflow.worker", ("temporal.worker",)))


class LibraryEntry(LuaEntry):
    kind: Literal["library.lua"] = "library.lua"

    @field_validator("method")
    @classmethod
    def _no_method(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError("a library.lua entry has no method; its chunk's return value is the module")
        return value


# ---------------------------------------------------------------- hosts and services


DEFAULT_HOST_MEMORY_LIMIT = 256 * 1024 * 1024


class HostSettings(LuaLimits):
    """``host:`` of a ``process.host``. ``max_processes`` is Wippy's and enforced (none:
    no limit). ``workers``/``queue_size``/``local_queue_size`` are Wippy's and accepted but
    ignored, with a warning at load (``_checks.py`` says why); the rest are moonwire's."""

    max_processes: int | None = Field(None, ge=1, description="processes the host holds at most; a spawn past it "
                                      "is refused with Unavailable")
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    queue_size: int = Field(1024, ge=1)
    local_queue_size: int = Field(256, ge=1)
    memory_limit: ByteSize = Field(DEFAULT_HOST_MEMORY_LIMIT, ge=1024 * 1024,
                                   description="per Lua state; a state holds up to processes_per_state processes")
    processes_per_state: int = Field(1024, ge=1)
    mailbox_limit: int = Field(4096, ge=1, description="messages a process holds unread before sends to it fail")


class ProcessHostEntry(_HasLifecycle):
    kind: Literal["process.host"] = "process.host"
    host: HostSettings = HostSettings()

    references = _LIFECYCLE_REFS


class ProcessServiceEntry(_HasLifecycle):
    kind: Literal["process.service"] = "process.service"
    process: str
    host: str
    input: list[Any] = Field(default_factory=list)

    references = (("process", ("process.lua",)), ("host", ("process.host",)), *_LIFECYCLE_REFS)


# ---------------------------------------------------------------- Temporal


class TemporalAuth(_Model):
    type: Literal["none", "api_key", "mtls"] = "none"
    api_key: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> TemporalAuth:
        if self.type == "api_key" and not self.api_key:
            raise ValueError("auth.type api_key needs api_key")
        if self.type == "mtls" and not (self.cert_file and self.key_file):
            raise ValueError("auth.type mtls needs cert_file and key_file")
        return self


class TemporalTls(_Model):
    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


EMBEDDED = "embedded"


class TemporalClientEntry(_HasLifecycle):
    kind: Literal["temporal.client"] = "temporal.client"
    address: str | None = Field(None, description="host:port; none or 'embedded' starts the dev server.")
    namespace: str = "default"
    tq_prefix: str = ""
    connection_timeout: Seconds = 10.0
    keep_alive_time: Seconds = 30.0
    keep_alive_timeout: Seconds = 10.0
    auth: TemporalAuth = TemporalAuth()
    tls: TemporalTls = TemporalTls()
    health_check: dict[str, Any] = Field(default_factory=dict)
    search_attributes: dict[str, str] = Field(
        default_factory=dict, description="The namespace's custom search attributes, name -> type (Keyword, Text, "
        "Int, Double, Bool, Datetime, KeywordList); nodes register them at start (docs/workflows.md).")

    references = _LIFECYCLE_REFS

    @property
    def embedded(self) -> bool:
        return self.address in (None, "", EMBEDDED)

    @field_validator("search_attributes")
    @classmethod
    def _search_attribute_types(cls, value: dict[str, str]) -> dict[str, str]:
        types = {t.lower(): t for t in SEARCH_ATTRIBUTE_TYPES}
        out = {}
        for name, kind in value.items():
            canonical = types.get(str(kind).replace("_", "").lower())
            if not name or canonical is None:
                raise ValueError(f"search attribute {name!r}: type {kind!r} is not one of "
                                 f"{', '.join(SEARCH_ATTRIBUTE_TYPES)}")
            out[name] = canonical
        return out


SEARCH_ATTRIBUTE_TYPES = ("Keyword", "Text", "Int", "Double", "Bool", "Datetime", "KeywordList")
"""Temporal's search attribute types, by its own names."""


class TemporalWorkerEntry(_HasLifecycle):
    kind: Literal["temporal.worker"] = "temporal.worker"
    client: str
    task_queue: str = Field(min_length=1)
    worker_options: dict[str, Any] = Field(default_factory=dict)

    references = (("client", ("temporal.client",)), *_LIFECYCLE_REFS)


class InertEntry(Entry):
    """An entry of a kind this runtime does not run; kept so others may reference it."""

    model_config = ConfigDict(extra="allow", frozen=True)


KNOWN_KINDS: dict[str, type[Entry]] = {
    model.model_fields["kind"].default: model
    for model in (
        FunctionEntry,
        ProcessEntry,
        WorkflowEntry,
        LibraryEntry,
        ProcessHostEntry,
        ProcessServiceEntry,
        TemporalClientEntry,
        TemporalWorkerEntry,
    )
}
