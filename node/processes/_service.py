"""A ``process.service`` as its supervisor keeps it (``_supervisor.py``): its state, its
restarts and the events dependents wait on, and the backoff between restarts
(wippy-surface §3.8)."""

from __future__ import annotations

import asyncio
import enum
import random
from dataclasses import dataclass, field

from moonwire.lua import MoonwireError, Outcome

from ..project import Lifecycle, ProcessServiceEntry, RestartPolicy
from ._singleton import Tenure


class ServiceState(enum.StrEnum):
    UNKNOWN = "Unknown"
    STANDBY = "Standby"
    """A singleton whose lock another node holds (or this node cannot take yet)."""
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    FAILED = "Failed"
    EXITED = "Exited"


def backoff_delay(policy: RestartPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before restart number ``attempt`` (1-based):
    ``min(initial * factor^(attempt-1), max_delay)`` times a random factor in
    ``[1 - jitter, 1 + jitter]``."""
    base = min(policy.initial_delay * policy.backoff_factor ** (attempt - 1), policy.max_delay)
    if policy.jitter:
        base *= (rng or random).uniform(1 - policy.jitter, 1 + policy.jitter)
    return base


@dataclass(frozen=True, slots=True)
class Restart:
    """One restart, as recorded for ``status`` and tests: when and after what wait."""

    attempt: int
    delay: float
    started_at: float


@dataclass(eq=False)
class Service:
    entry: ProcessServiceEntry
    state: ServiceState = ServiceState.UNKNOWN
    pid: str | None = None
    attempts: int = 0
    last_error: MoonwireError | None = None
    last_outcome: Outcome | None = None
    """How the service's latest process ended (stops included)."""
    restarts: list[Restart] = field(default_factory=list)
    running: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the service's process has been started, or a singleton stands by (it runs
    elsewhere in the cluster): dependents wait for it."""
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the service is running, stands by (a singleton) or has settled, whichever
    comes first."""
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the service stops running for good (Exited, Failed or Stopped)."""
    stopping: bool = False
    task: asyncio.Task[None] | None = None
    tenure: Tenure | None = None
    """A singleton's current hold (or wait) of its cluster lock."""
    _exit: asyncio.Future[Outcome] | None = None
    _starting: asyncio.Future[Outcome] | None = None
    """A start with a cluster name on its way."""
    _instance: str | None = None
    """The PID of the latest process started (it may have exited)."""

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def singleton(self) -> bool:
        return self.entry.lifecycle.placement == "cluster"

    @property
    def lifecycle(self) -> Lifecycle:
        return self.entry.lifecycle
