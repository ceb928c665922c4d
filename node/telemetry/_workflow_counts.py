"""Workflow and activity counts, taken by a Temporal worker interceptor: the workers
hand every workflow run and every activity to it, so nothing in the workflow code itself
counts.

Workflow runs execute in the SDK's thread pool, not in the node's event loop, so the
workflow side counts under a lock (a few times per run, not per message). A replayed
run is not counted again: a run is *started* here when its first activation was not a
replay, and *finished* here when its last one was not.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Collection
from typing import Any

from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.worker import (ActivityInboundInterceptor, ExecuteActivityInput, ExecuteWorkflowInput, Interceptor,
                               WorkflowInboundInterceptor, WorkflowInterceptorClassInput)

from moonwire.lua import MoonwireError, Outcome

from ._counts import OTHER, OUTCOMES, Buckets, CallCounts, bounded

WORKFLOW_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                                       6 * 3600.0, 86400.0, 7 * 86400.0)
"""Upper bounds (seconds) of the workflow duration histogram: a workflow lives from
milliseconds (no timer) to weeks."""



class WorkflowCounts(Interceptor):
    """Counts of this node's Temporal workers: workflow runs started and finished (by
    outcome) with their durations in workflow time, workflow tasks that failed (a
    non-deterministic call, a bug: Temporal retries the task), and activities as
    :class:`CallStats` by activity type. Names outside ``known`` (the project's entry
    ids and moonwire's own activities) count as :data:`OTHER`: a task queue can be
    handed any type name by any client."""

    def __init__(self, known: Collection[str]) -> None:
        self.known = known
        self.activities = CallCounts(known)
        self.started: dict[str, int] = {}
        self.finished: dict[tuple[str, str], int] = {}
        self.task_failures: dict[str, int] = {}
        self.durations: dict[str, Buckets] = {}
        self.lock = threading.Lock()
        """Held while counting (in a workflow thread) and while reading."""
        counts = self

        class _Workflow(WorkflowInboundInterceptor):
            async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
                return await counts._run(self.next, input)

        self._workflow_class = _Workflow

    # ------------------------------------------------------------ the interceptor

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        return self._workflow_class

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Activity(next, self)

    async def _run(self, next: WorkflowInboundInterceptor, input: ExecuteWorkflowInput) -> Any:
        name = bounded(workflow.info().workflow_type, self.known)
        if not workflow.unsafe.is_replaying():
            with self.lock:
                self.started[name] = self.started.get(name, 0) + 1
        try:
            result = await next.execute_workflow(input)
        except workflow.ContinueAsNewError:
            self._finished(name, "continued_as_new")
            raise
        except asyncio.CancelledError:
            self._finished(name, "canceled")
            raise
        except FailureError:
            self._finished(name, "failed")
            raise
        except Exception:
            if not workflow.unsafe.is_replaying():
                with self.lock:
                    self.task_failures[name] = self.task_failures.get(name, 0) + 1
            raise
        self._finished(name, "completed")
        return result

    def _finished(self, name: str, outcome: str) -> None:
        if workflow.unsafe.is_replaying():
            return
        # The run's start as Temporal recorded it (start_time is the first activation here).
        seconds = max(workflow.time() - workflow.info().workflow_start_time.timestamp(), 0.0)
        with self.lock:
            self.finished[(name, outcome)] = self.finished.get((name, outcome), 0) + 1
            latency = self.durations.get(name)
            if latency is None:
                latency = self.durations[name] = Buckets(WORKFLOW_BUCKETS)
            latency.observe(seconds)


class _Activity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, counts: WorkflowCounts) -> None:
        super().__init__(next)
        self.counts = counts

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        stats = self.counts.activities.of(activity.info().activity_type)
        started = time.perf_counter()
        try:
            result = await self.next.execute_activity(input)
        except BaseException as err:
            stats.record(Outcome(error=_as_error(err)), time.perf_counter() - started)
            raise
        stats.record(_DONE, time.perf_counter() - started)
        return result


_DONE = Outcome()


def _as_error(err: BaseException) -> MoonwireError:
    """The kind an activity failed with: the type of the ApplicationError moonwire's
    activity raises (``to_failure``: the kind), Canceled for a cancellation."""
    if isinstance(err, ApplicationError):
        return MoonwireError(err.message, err.type or "")
    if isinstance(err, asyncio.CancelledError):
        return MoonwireError("activity canceled", "Canceled")
    return MoonwireError(str(err), OTHER)
