"""``process.service`` entries and their supervisor (wippy-surface §1.7-§1.9, §3.8).

A service is an ordinary process started with an exit hook; the supervisor restarts it
after an abnormal exit with exponential backoff. One asyncio task per service (there are
few) runs its loop: start, wait for the exit, decide, sleep, start again.

States: Unknown -> Starting -> Running -> (Failed -> Starting ...) and at the end
Stopping -> Stopped (the node stops it), Exited (it returned normally or was
terminated) or Failed (an error marked not retryable, or restarts exhausted).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from dataclasses import dataclass, field

from moonwire.broker import TaskSet
from moonwire.lua import Kind, MoonwireError, Outcome, SpawnRequest

from ..project import Lifecycle, ProcessServiceEntry, RestartPolicy
from ._table import ProcessTable
from ..project import Project

log = logging.getLogger("moonwire.services")

STOP_REASON = "service stopping"


class ServiceState(enum.StrEnum):
    UNKNOWN = "Unknown"
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
    """Set once the service's process has been started (dependents wait for it)."""
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the service is running or has settled, whichever comes first."""
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the service stops running for good (Exited, Failed or Stopped)."""
    stopping: bool = False
    task: asyncio.Task[None] | None = None
    _exit: asyncio.Future[Outcome] | None = None

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def lifecycle(self) -> Lifecycle:
        return self.entry.lifecycle


class Supervisor:
    """Starts auto-start services (and what they require) in dependency order, restarts
    them by their policy, and stops them in reverse order."""

    def __init__(self, project: Project, processes: ProcessTable) -> None:
        self.project = project
        self.processes = processes
        self.services: dict[str, Service] = {
            entry.id: Service(entry) for entry in project.of_kind("process.service")
            if isinstance(entry, ProcessServiceEntry)
        }
        self._order: list[Service] = []
        self._tasks = TaskSet(log)

    def status(self, service_id: str) -> Service:
        return self.services[service_id]

    def _dependencies(self, service: Service) -> list[Service]:
        return [self.services[dep] for dep in service.lifecycle.dependencies if dep in self.services]

    def _start_order(self) -> list[Service]:
        """Auto-start services and their service dependencies, dependencies first (the
        loader has rejected cycles)."""
        order: list[Service] = []
        seen: set[str] = set()

        def visit(service: Service) -> None:
            if service.id in seen:
                return
            seen.add(service.id)
            for dep in self._dependencies(service):
                visit(dep)
            order.append(service)

        for service in sorted(self.services.values(), key=lambda s: s.id):
            if service.lifecycle.auto_start:
                visit(service)
        return order

    async def start(self) -> None:
        """Start every auto-start service; returns once each has been started (its
        process spawned), in dependency order. A service whose start fails keeps
        retrying in the background by its restart policy."""
        self._order = self._start_order()
        for service in self._order:
            service.task = self._tasks.start(self._supervise(service), f"service {service.id}")
        for service in self._order:
            await service.decided.wait()
        if self._order:
            log.info("started %d service(s): %s", len(self._order), ", ".join(s.id for s in self._order))

    async def _supervise(self, service: Service) -> None:
        lifecycle = service.lifecycle
        try:
            await self._wait_for_dependencies(service)
        except MoonwireError as err:
            self._settle(service, ServiceState.FAILED, err)
            return
        while not service.stopping:
            service.state = ServiceState.STARTING
            started = time.monotonic()
            outcome = await self._run_once(service)
            if service.stopping:
                break
            if outcome.ok:
                log.info("service %s exited normally; not restarting", service.id)
                self._settle(service, ServiceState.EXITED, None)
                return
            error = outcome.error
            assert error is not None
            service.last_error = error
            if error.kind == Kind.CANCELED:  # terminated from outside: an end, not a failure
                log.warning("service %s was terminated; not restarting", service.id)
                self._settle(service, ServiceState.EXITED, error)
                return
            if error.retryable is False:
                log.error("service %s failed with a non-retryable error; not restarting: %s", service.id, error)
                self._settle(service, ServiceState.FAILED, error)
                return
            service.state = ServiceState.FAILED
            if time.monotonic() - started >= lifecycle.stable_threshold:
                service.attempts = 0
            service.attempts += 1
            limit = lifecycle.restart.max_attempts
            if limit and service.attempts > limit:
                log.error("service %s failed %d time(s) in a row; giving up: %s", service.id, service.attempts, error)
                self._settle(service, ServiceState.FAILED, error)
                return
            delay = backoff_delay(lifecycle.restart, service.attempts)
            log.warning("service %s failed (%s); restart %d in %.3fs", service.id, error, service.attempts, delay)
            await asyncio.sleep(delay)
            service.restarts.append(Restart(service.attempts, delay, time.monotonic()))
        self._settle(service, ServiceState.STOPPED, None)

    async def _run_once(self, service: Service) -> Outcome:
        loop = asyncio.get_running_loop()
        service._exit = loop.create_future()
        exit_future = service._exit

        def exited(outcome: Outcome) -> None:
            if not exit_future.done():
                exit_future.set_result(outcome)

        entry = service.entry
        try:
            service.pid = self.processes.start(SpawnRequest(entry.process, entry.host, list(entry.input)),
                                               on_exit=exited)
        except MoonwireError as err:
            log.error("service %s could not start: %s", service.id, err)
            return Outcome(error=err)
        service.state = ServiceState.RUNNING
        service.running.set()
        service.decided.set()
        try:
            outcome = await exit_future
            service.last_outcome = outcome
            return outcome
        finally:
            service.pid = None

    async def _wait_for_dependencies(self, service: Service) -> None:
        deps = self._dependencies(service)
        if not deps:
            return
        try:
            async with asyncio.timeout(service.lifecycle.start_timeout):
                for dep in deps:
                    await dep.running.wait()
        except TimeoutError:
            names = ", ".join(d.id for d in deps if not d.running.is_set())
            raise MoonwireError(f"service {service.id} did not start within {service.lifecycle.start_timeout}s: "
                                f"waiting for {names}", Kind.TIMEOUT, retryable=False) from None

    def _settle(self, service: Service, state: ServiceState, error: MoonwireError | None) -> None:
        service.state = state
        if error is not None:
            service.last_error = error
        service.settled.set()
        service.decided.set()

    async def stop(self) -> None:
        """Stop services in reverse start order: CANCEL ("service stopping"), wait up to
        ``stop_timeout``, then terminate."""
        for service in reversed(self._order):
            await self._stop_one(service)
        self._order = []
        await self._tasks.stop()

    async def _stop_one(self, service: Service) -> None:
        service.stopping = True
        pid, exit_future = service.pid, service._exit
        if pid is not None and exit_future is not None and not exit_future.done():
            service.state = ServiceState.STOPPING
            with contextlib.suppress(MoonwireError):
                self.processes.cancel(None, pid, STOP_REASON)
            exit_future.add_done_callback(
                lambda done: done.cancelled() or setattr(service, "last_outcome", done.result()))
            try:
                await asyncio.wait_for(asyncio.shield(exit_future), service.lifecycle.stop_timeout)
            except TimeoutError:
                log.warning("service %s did not stop within %.1fs; terminating it", service.id,
                            service.lifecycle.stop_timeout)
                with contextlib.suppress(MoonwireError):
                    self.processes.terminate(None, pid)
        if service.task is not None:
            service.task.cancel()
            # asyncio.wait: our own cancellation still propagates; the task's outcome does
            # not (a failure is logged by the task set that owns it).
            await asyncio.wait([service.task])
        if not service.settled.is_set():
            self._settle(service, ServiceState.STOPPED, None)
