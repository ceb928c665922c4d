"""Node configuration: defaults, then ``moonwire.yaml``, then ``MOONWIRE_*`` variables,
then command-line flags; a later source wins, and every value remembers its source."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from moonwire.broker import ConnectOptions, is_token, to_token

from moonwire.lua import SECOND, format_duration

from ._types import ByteSize, Seconds, is_seconds
from ._yaml import LocatedMap, YamlError, load_yaml

CONFIG_FILE = "moonwire.yaml"
ENV_PREFIX = "MOONWIRE_"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    hostname: str | None = None


class NatsConfig(_Strict):
    url: list[str] = Field(default_factory=list, description="Empty: start or join the embedded server.")
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkeys_seed: str | None = Field(None, description="Path to an nkey seed file.")
    creds_file: str | None = None
    tls: TlsConfig = TlsConfig()

    @field_validator("url", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class HeartbeatConfig(_Strict):
    interval: Seconds = 0.5
    down_after: Seconds = 2.5

    @field_validator("interval", "down_after")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than zero")
        return value


class ClusterConfig(_Strict):
    """The cluster's stores on JetStream (docs/cluster.md)."""

    replicas: int | None = Field(None, ge=1, le=5, description="copies of each bucket this node creates; unset: "
                                 "as many servers as its NATS cluster has, at most 3 (1 on one server); an existing "
                                 "bucket is used as it is")
    timeout: Seconds = Field(2.0, gt=0, description="bound on every round trip to JetStream; past it a "
                                                   "registration or lock fails Unavailable")


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class MetricsConfig(_Strict):
    """What the node tells operators (docs/operations.md)."""

    listen: str | None = Field(None, description="HOST:PORT to serve Prometheus metrics (/metrics) and /healthz "
                               "on; unset: no metrics server")
    discovery: bool = Field(True, description="answer NATS service discovery ($SRV, `nats micro`): one service "
                            "per node, an endpoint per function it serves")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            listen_address(value)
            return value.strip()
        return None

    @property
    def address(self) -> tuple[str, int] | None:
        return None if self.listen is None else listen_address(self.listen)


def listen_address(value: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (``[::1]:9464`` for IPv6; no host: every interface).

    Raises:
        ValueError: naming what is wrong.
    """
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:9464, 127.0.0.1:9464)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


class NodeConfig(_Strict):
    """The effective configuration of one node."""

    node: str = Field(default_factory=lambda: to_token(socket.gethostname()))
    prefix: str = "mw"
    nats: NatsConfig = NatsConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    cluster: ClusterConfig = ClusterConfig()
    state_dir: Path = Path(".moonwire")
    shutdown_timeout: Seconds = 30.0
    max_message_bytes: ByteSize = Field(1024 * 1024, ge=64, description="largest message body a process accepts")
    workers: bool = Field(True, description="run the project's temporal.worker entries; false: this node "
                                            "only starts, signals and watches workflows")
    watch: bool = Field(False, description="reload changed Lua code and entries while running (run --watch)")
    loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto", description="the event loop: auto is uvloop when installed on Linux (moonwire[uvloop]), else "
                            "asyncio's own")
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("node")
    @classmethod
    def _node_token(cls, value: str) -> str:
        if not is_token(value):
            raise ValueError(f"{value!r} is not a valid node name: use letters, digits, '_' and '-'")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix_tokens(cls, value: str) -> str:
        if not all(is_token(part) for part in value.split(".")):
            raise ValueError(f"{value!r} is not a valid subject prefix")
        return value

    def connect_options(self, servers: list[str] | None = None) -> ConnectOptions:
        """What ``broker.connect`` needs; ``servers`` replaces ``nats.url`` (e.g. the embedded one)."""
        nats = self.nats
        return ConnectOptions(
            servers=list(servers or nats.url),
            name=f"moonwire-{self.node}",
            user=nats.user,
            password=nats.password,
            token=nats.token,
            nkeys_seed=nats.nkeys_seed,
            creds_file=nats.creds_file,
            tls_ca_file=nats.tls.ca_file,
            tls_cert_file=nats.tls.cert_file,
            tls_key_file=nats.tls.key_file,
            tls_hostname=nats.tls.hostname,
        )


def _leaves(model: type[BaseModel], prefix: str = "") -> dict[str, FieldInfo]:
    leaves: dict[str, FieldInfo] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves.update(_leaves(annotation, f"{prefix}{name}."))
        else:
            leaves[f"{prefix}{name}"] = info
    return leaves


def config_keys() -> list[str]:
    """Every leaf key of :class:`NodeConfig`, dotted (``nats.tls.ca_file``)."""
    return list(_leaves(NodeConfig))


_DURATION_KEYS = frozenset(key for key, info in _leaves(NodeConfig).items() if is_seconds(info))


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace(".", "_")


SECRET_KEYS = frozenset({"nats.password", "nats.token"})


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every reason, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


@dataclass(frozen=True, slots=True)
class ResolvedConfig:
    config: NodeConfig
    sources: dict[str, str]
    """Where each leaf key's value came from: ``default``, ``moonwire.yaml:LINE``,
    ``env MOONWIRE_X`` or ``flag --x``."""
    project_dir: Path

    @property
    def state_dir(self) -> Path:
        return (self.project_dir / self.config.state_dir).resolve()

    def describe(self) -> list[tuple[str, str, str]]:
        """``(key, value, source)`` rows for ``moonwire config``, secrets masked."""
        rows = []
        data = self.config.model_dump(mode="json")
        for key in config_keys():
            value: Any = data
            for part in key.split("."):
                value = value[part]
            if key in SECRET_KEYS and value:
                shown = "***"
            elif key in _DURATION_KEYS:
                shown = format_duration(round(value * SECOND))
            else:
                shown = _show(value)
            rows.append((key, shown, self.sources.get(key, "default")))
        return rows


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _flatten(data: Mapping[str, Any], prefix: str, out: dict[str, tuple[Any, int | None]]) -> None:
    lines = data.key_lines if isinstance(data, LocatedMap) else {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, dotted + ".", out)
        else:
            out[dotted] = (value, lines.get(key))


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def load_config(
    project_dir: Path,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, tuple[Any, str]] | None = None,
) -> ResolvedConfig:
    """Build the node configuration for ``project_dir``.

    Args:
        environ: the environment to read ``MOONWIRE_*`` from (default ``os.environ``).
        flags: values given on the command line, ``{dotted key: (value, flag text)}``.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or invalid YAML;
            every problem is listed with its source.
    """
    environ = os.environ if environ is None else environ
    known = config_keys()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []

    path = project_dir / CONFIG_FILE
    if path.is_file():
        try:
            document = load_yaml(path)
        except YamlError as err:
            raise ConfigError([str(err)]) from err
        if document is None:
            document = LocatedMap()
        if not isinstance(document, Mapping):
            raise ConfigError([f"{path}: expected a mapping of configuration keys"])
        flat: dict[str, tuple[Any, int | None]] = {}
        _flatten(document, "", flat)
        for key, (value, line) in flat.items():
            where = f"{CONFIG_FILE}:{line}" if line else CONFIG_FILE
            if key not in known:
                problems.append(f"{where} {key}: unknown configuration key")
                continue
            values[key] = value
            sources[key] = where

    for key in known:
        name = env_name(key)
        if name in environ:
            values[key] = environ[name]
            sources[key] = f"env {name}"

    for key, (value, flag) in (flags or {}).items():
        if key not in known:
            problems.append(f"{flag}: unknown configuration key {key!r}")
            continue
        values[key] = value
        sources[key] = f"flag {flag}"

    if problems:
        raise ConfigError(problems)
    try:
        config = NodeConfig.model_validate(_unflatten(values))
    except ValidationError as err:
        for error in err.errors():
            key = ".".join(str(part) for part in error["loc"])
            problems.append(f"{sources.get(key, 'default')} {key}: {error['msg']}")
        raise ConfigError(problems) from err
    return ResolvedConfig(config=config, sources=sources, project_dir=project_dir.resolve())
