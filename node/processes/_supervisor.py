"""``process.service`` entries and their supervisor (wippy-surface §1.7-§1.9, §3.8).

A service is an ordinary process started with an exit hook; the supervisor restarts it
after an abnormal exit with exponential backoff. One asyncio task per service (there are
few) runs its loop: start, wait for the exit, decide, sleep, start again. What it keeps
per service (state, restarts, the backoff) is in ``_service.py``.

States: Unknown -> Starting -> Running -> (Failed -> Starting ...) and at the end
Stopping -> Stopped (the node stops it), Exited (it returned normally or was
terminated) or Failed (an error marked not retryable, or restarts exhausted).

A singleton (``lifecycle.placement: cluster``, ``_singleton.py``) adds Standby: this
node is a candidate waiting for the service's cluster lock. It runs the same loop only
while it holds the lock, and goes back to Standby, its instance terminated, when the
lock is lost (docs/cluster.md, Singleton services).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from moonwire.broker import TaskSet
from moonwire.lua import Answer, Kind, MoonwireError, Outcome, SpawnRequest, settled

from ..project import ProcessServiceEntry
from ._service import Restart, Service, ServiceState, backoff_delay
from ._singleton import Singletons, Tenure
from ._table import ProcessTable
from ..project import Project

log = logging.getLogger("moonwire.services")

STOP_REASON = "service stopping"
EXIT_WAIT = 5.0
"""Seconds to wait for a terminated instance to exit (it is ended at once; the bound is
for a bug): a singleton's lock is given up only after its instance has exited."""
START_WAIT = 5.0
"""Seconds a stop waits for a start with a cluster name that is on its way (a register,
bounded by the cluster's timeout) to land, so it can stop what it started as any
instance: CANCEL and the grace period."""
NAME_RETRY = 0.1
NAME_WAIT = 5.0
"""A singleton's cluster name may still be held by its previous instance as it starts
(node-down frees names and locks at about the same moment; an exit frees the name a
moment after): AlreadyExists is tried again every ``NAME_RETRY`` seconds for up to
``NAME_WAIT`` before it counts as the service failing."""


class Supervisor:
    """Starts auto-start services (and what they require) in dependency order, restarts
    them by their policy, and stops them in reverse order."""

    def __init__(self, project: Project, processes: ProcessTable, *, hearing: Callable[[], bool] | None = None
                 ) -> None:
        """``hearing``: the node's liveness says it can hear the broker (``Membership.hearing``);
        a singleton's instance runs only while it does."""
        self.project = project
        self.processes = processes
        cluster = processes.cluster
        self._singletons = Singletons(cluster.locks, processes.pids, hearing) if cluster is not None else None
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
        alone = [s.id for s in self._order if s.singleton and self._singletons is None]
        if alone:
            log.warning("placement: cluster needs the node's broker and its cluster locks; this runtime has none, "
                        "so %s run(s) here as with placement: node", ", ".join(alone))
        for service in self._order:
            service.task = self._tasks.start(self._supervise(service), f"service {service.id}")
        for service in self._order:
            await service.decided.wait()
        if self._order:
            log.info("started %d service(s): %s", len(self._order), ", ".join(s.id for s in self._order))

    async def _supervise(self, service: Service) -> None:
        try:
            await self._wait_for_dependencies(service)
        except MoonwireError as err:
            self._settle(service, ServiceState.FAILED, err)
            return
        if service.singleton and self._singletons is not None:
            await self._supervise_singleton(service, self._singletons)
        else:
            await self._keep_running(service, None)
        if service.stopping and not service.settled.is_set():
            self._settle(service, ServiceState.STOPPED, None)

    async def _supervise_singleton(self, service: Service, singletons: Singletons) -> None:
        """Stand by until this node holds the service's lock; run the service by its
        policy while it does; when the lock is lost, its instance has been stopped:
        stand by again."""
        what = f"singleton service {service.id}"
        while not service.stopping:
            try:
                tenure = service.tenure = singletons.tenure(service.id)
            except MoonwireError as err:
                self._settle(service, ServiceState.FAILED, err)
                return
            service.state = ServiceState.STANDBY
            # Decided, and "running" for what requires it: it runs somewhere in the cluster.
            service.running.set()
            service.decided.set()
            await singletons.take(tenure, what)
            service.attempts = 0  # a takeover is a start: no backoff unless it then fails
            held = True
            if tenure.takeover:
                # Time for the node that held it, if it lives but was cut off, to have
                # fenced its instance (docs/cluster.md, the takeover timeline).
                delay = service.lifecycle.restart.initial_delay
                log.info("%s: this node took its lock %s over; starting it in %.3fs", what, tenure.lock, delay)
                service.state = ServiceState.STARTING
                held = await singletons.hold(tenure, seconds=delay)
            else:
                log.info("%s: this node holds its lock %s", what, tenure.lock)
            if held and await self._keep_running(service, tenure):
                if service.settled.is_set() and service.state == ServiceState.FAILED:
                    # Failed here for good: another candidate gets its turn. Exited keeps
                    # the lock, so no other node starts it while this one lives.
                    service.tenure = None
                    await singletons.release(tenure)
                return
            if service.stopping:
                return
            log.warning("%s: %s; its instance here is stopped, standing by", what, tenure.lost.result())
            singletons.retire(tenure)

    async def _keep_running(self, service: Service, tenure: Tenure | None) -> bool:
        """Start the service, wait for its exit, decide, back off, again: True once it
        has settled or is stopping; False when ``tenure`` (a singleton's) was lost, its
        instance then stopped and exited."""
        lifecycle = service.lifecycle
        while not service.stopping:
            service.state = ServiceState.STARTING
            started = time.monotonic()
            outcome = await self._run_once(service, tenure)
            if outcome is None:
                return False
            if service.stopping:
                break
            if outcome.ok:
                log.info("service %s exited normally; not restarting", service.id)
                self._settle(service, ServiceState.EXITED, None)
                return True
            error = outcome.error
            assert error is not None
            service.last_error = error
            if error.kind == Kind.CANCELED:  # terminated from outside: an end, not a failure
                log.warning("service %s was terminated; not restarting", service.id)
                self._settle(service, ServiceState.EXITED, error)
                return True
            if error.retryable is False:
                log.error("service %s failed with a non-retryable error; not restarting: %s", service.id, error)
                self._settle(service, ServiceState.FAILED, error)
                return True
            service.state = ServiceState.FAILED
            if time.monotonic() - started >= lifecycle.stable_threshold:
                service.attempts = 0
            service.attempts += 1
            limit = lifecycle.restart.max_attempts
            if limit and service.attempts > limit:
                log.error("service %s failed %d time(s) in a row; giving up: %s", service.id, service.attempts, error)
                self._settle(service, ServiceState.FAILED, error)
                return True
            delay = backoff_delay(lifecycle.restart, service.attempts)
            log.warning("service %s failed (%s); restart %d in %.3fs", service.id, error, service.attempts, delay)
            if not await self._pause(tenure, delay):
                return False
            service.restarts.append(Restart(service.attempts, delay, time.monotonic()))
        return True

    async def _pause(self, tenure: Tenure | None, seconds: float) -> bool:
        """Sleep ``seconds``; False when ``tenure`` was lost meanwhile."""
        if tenure is None or self._singletons is None:
            await asyncio.sleep(seconds)
            return True
        return await self._singletons.hold(tenure, seconds=seconds)

    async def _run_once(self, service: Service, tenure: Tenure | None) -> Outcome | None:
        """Start the service's process and wait for its exit: its outcome, or None when
        ``tenure`` was lost first (the process has then been terminated and has exited)."""
        loop = asyncio.get_running_loop()
        service._exit = loop.create_future()
        exit_future = service._exit

        def exited(outcome: Outcome) -> None:
            if not exit_future.done():
                exit_future.set_result(outcome)

        started = await self._start(service, exited, tenure)
        if started is None:
            return None
        if isinstance(started, Outcome):
            log.error("service %s could not start: %s", service.id, started.error)
            # Decided: start() returns; this one retries by its policy in the background
            # (its host may be full for a while), and what requires it waits for `running`.
            service.decided.set()
            return started
        service.pid = service._instance = started
        service.state = ServiceState.RUNNING
        service.running.set()
        service.decided.set()
        try:
            if tenure is not None and self._singletons is not None:
                tenure.on_lost = lambda: self._terminate(started)
                if not await self._singletons.hold(tenure, exit_future):
                    await self._fence(service, started, exit_future, tenure)
                    return None
            outcome = await exit_future
            service.last_outcome = outcome
            return outcome
        finally:
            service.pid = None
            if tenure is not None:
                tenure.on_lost = None

    async def _start(self, service: Service, exited: Callable[[Outcome], None], tenure: Tenure | None
                     ) -> str | Outcome | None:
        """Spawn the service's process here: its PID, or the Outcome of a failed start,
        or None when ``tenure`` was lost while a cluster name was being registered.

        With ``lifecycle.name`` the process is spawned with that cluster name (registered
        before it runs); AlreadyExists is tried again for ``NAME_WAIT`` seconds."""
        entry, name = service.entry, service.lifecycle.name
        # Without a cluster (placement: cluster run as node), the name is this node's.
        scope = "consistent" if name is not None and self.processes.cluster is not None else "local"
        request = SpawnRequest(entry.process, entry.host, list(entry.input), name=name, scope=scope)
        if scope == "local":
            try:
                return self.processes.start(request, on_exit=exited)
            except MoonwireError as err:
                return Outcome(error=err)
        deadline = time.monotonic() + NAME_WAIT
        while True:
            outcome = await self._answer(service, self.processes.start_here(request, on_exit=exited), tenure)
            if outcome is None or outcome.ok:
                return None if outcome is None else outcome.value
            error = outcome.error
            if error is None or error.kind != Kind.ALREADY_EXISTS or time.monotonic() >= deadline \
                    or service.stopping:
                return outcome
            log.info("service %s: its cluster name is still held (%s); trying again", service.id, error.message)
            if not await self._pause(tenure, NAME_RETRY):
                return None

    async def _answer(self, service: Service, answer: Answer, tenure: Tenure | None) -> Outcome | None:
        """A spawn's answer; None when ``tenure`` was lost first (the spawn is dropped:
        a name registered meanwhile is freed). The process's PID is the service's the
        moment it starts, so a stop that comes meanwhile finds it (:meth:`_stop_one`)."""
        if isinstance(answer, Outcome) or tenure is None or self._singletons is None:
            return await settled(answer)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def answered(outcome: Outcome) -> None:
            if outcome.ok:
                service.pid = service._instance = outcome.value
            if not future.done():
                future.set_result(outcome)

        answer.listen(answered)  # type: ignore[union-attr]
        service._starting = future
        try:
            await self._singletons.hold(tenure, future)
        except asyncio.CancelledError:
            answer.drop()  # type: ignore[union-attr]
            raise
        finally:
            service._starting = None
        if not future.done():
            answer.drop()  # type: ignore[union-attr]
            return None
        return future.result()  # started as the tenure was lost: the caller fences it at once

    async def _fence(self, service: Service, pid: str, exit_future: asyncio.Future[Outcome], tenure: Tenure) -> None:
        """``tenure`` was lost while ``pid`` ran: terminate it now (no CANCEL and grace
        period: another node may be about to start the service) and wait for its exit."""
        log.warning("singleton service %s: %s; terminating its instance %s here", service.id, tenure.lost.result(),
                    pid)
        service.state = ServiceState.STOPPING
        self._terminate(pid)  # done already when the loss was seen by tenure.on_lost
        try:
            async with asyncio.timeout(EXIT_WAIT):
                service.last_outcome = await asyncio.shield(exit_future)
        except TimeoutError:
            log.error("singleton service %s: its instance %s did not exit within %.0fs of being terminated",
                      service.id, pid, EXIT_WAIT)

    def _terminate(self, pid: str) -> None:
        with contextlib.suppress(MoonwireError):  # it may have exited already
            self.processes.terminate(None, pid)

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
        if self._singletons is not None:
            await self._singletons.stop()

    async def _stop_one(self, service: Service) -> None:
        service.stopping = True
        if service.pid is None and service._starting is not None:
            await asyncio.wait([service._starting], timeout=START_WAIT)
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
                await asyncio.wait([exit_future], timeout=EXIT_WAIT)
        if service.task is not None:
            service.task.cancel()
            # asyncio.wait: our own cancellation still propagates; the task's outcome does
            # not (a failure is logged by the task set that owns it).
            await asyncio.wait([service.task])
        if service.tenure is not None and self._singletons is not None:
            # The lock goes only once the instance has exited, so the next candidate
            # starts it after this one is gone. One started as the stop cancelled its
            # start (past START_WAIT) ends now.
            tenure, service.tenure = service.tenure, None
            last = service._instance
            if last is not None and last in self.processes.records:
                self._terminate(last)
                if service._exit is not None:
                    await asyncio.wait([service._exit], timeout=EXIT_WAIT)
            if last is None or last not in self.processes.records:
                await self._singletons.release(tenure)
            else:
                log.error("singleton service %s: keeping its lock %s, its instance %s has not exited; the lock "
                          "goes when this node says goodbye", service.id, tenure.lock, last)
        if not service.settled.is_set():
            self._settle(service, ServiceState.STOPPED, None)
