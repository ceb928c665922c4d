"""Temporal updates and queries sent to a workflow from outside it, through a client of
its worker: ``process.update`` on a node that has one, and the gateway serving the CLI
(``moonwire workflow update|query``) and nodes that have none (``_gateway.py``).

An update's arguments travel as any values moonwire gives Temporal, a payload each
(``_payloads.py``: JSON when it holds the value, else msgpack), and its result comes
back the same way (``_updates.py``), so the Temporal UI and other clients read both. A
query's answer is what Temporal's JSON converter made of it.

Waiting is bounded: an update or query not answered within its timeout gives Timeout.
The update itself stays with the workflow, which may still answer it (nobody hears);
Temporal has no way to withdraw one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import WorkflowQueryFailedError, WorkflowQueryRejectedError, WorkflowUpdateFailedError
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.common import RawValue
from temporalio.service import RPCError, RPCStatusCode

from moonwire.broker import Pid
from moonwire.lua import Kind, MoonwireError, Outcome, invalid, not_found

from ..functions import millis_or_duration
from ._payloads import decode, encode_all
from ._temporal import Host, workflow_handle
from ._workflow_codec import from_failure

UPDATE_TIMEOUT = 30.0
"""Seconds a caller waits for an update's answer unless it says otherwise."""
LONGEST_WAIT = 3600.0
"""The longest a caller may ask to wait (a waiting update holds a task on the node)."""
QUERY_TIMEOUT = 10.0

T = TypeVar("T")


def update_timeout(options: Mapping[str, Any]) -> float:
    """The ``update.timeout`` spawner option in seconds (milliseconds or a duration).

    Raises:
        MoonwireError: (Invalid) a bad value, or one over an hour.
    """
    value = options.get("update.timeout")
    seconds = UPDATE_TIMEOUT if value is None else millis_or_duration(value, "update.timeout")
    return wait_bound(seconds, "update.timeout")


def wait_bound(seconds: Any, what: str) -> float:
    """``seconds`` checked: a positive number of at most LONGEST_WAIT (Invalid otherwise)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= LONGEST_WAIT:
        raise invalid(f"{what} must be more than 0 and at most {LONGEST_WAIT:g} seconds, not {seconds!r}")
    return float(seconds)


async def _within(work: Awaitable[T], seconds: float) -> tuple[bool, T | None]:
    """``(True, work's value)``, or ``(False, None)`` when it has not ended within
    ``seconds`` (it is then cancelled). Not asyncio.timeout: the SDK turns the cancellation of an update call
    into an error of its own, which that would not recognise."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait([task], timeout=seconds)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return (True, task.result()) if done else (False, None)


def _rpc_error(err: RPCError, pid: Pid, what: str) -> MoonwireError:
    if err.status == RPCStatusCode.NOT_FOUND:
        return not_found(f"noproc: workflow {pid} not found (or no longer running): {err.message}")
    if err.status == RPCStatusCode.INVALID_ARGUMENT:
        return invalid(f"{what} to {pid}: {err.message}")
    if err.status == RPCStatusCode.RESOURCE_EXHAUSTED:  # e.g. too many updates in flight for one workflow
        return MoonwireError(f"{what} to {pid}: {err.message}", Kind.RATE_LIMITED, retryable=True)
    return MoonwireError(f"{what} to {pid}: temporal: {err.message}", Kind.UNAVAILABLE, retryable=True)


async def update_workflow(hosts: Mapping[str, Host], pid: Pid, name: str, args: list[Any], timeout: float) -> Outcome:
    """Send update ``name`` with ``args`` to workflow ``pid`` and wait for its answer.

    The outcome's error: NotFound (no running workflow), Invalid (the workflow rejected
    the update: ``nak``, arguments it cannot decode), Timeout (no answer in time),
    Unavailable (no client for its worker here, Temporal unreachable, the run ended
    before answering), or whatever error the workflow answered with.
    """
    what = f"update {name!r}"
    try:
        handle = workflow_handle(hosts, pid)
        answered, result = await _within(handle.execute_update(name, args=encode_all(args), result_type=RawValue),
                                         timeout)
    except MoonwireError as err:
        return Outcome(error=err)
    except WorkflowUpdateFailedError as err:
        return Outcome(error=from_failure(err.cause))
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        answered = False
    except RPCError as err:
        return Outcome(error=_rpc_error(err, pid, what))
    if not answered or result is None:
        return Outcome(error=MoonwireError(f"{what} to {pid} not answered within {timeout:g}s (the workflow keeps it "
                                           "and may still answer it)", Kind.TIMEOUT, retryable=True))
    try:
        return Outcome(value=decode(result))
    except MoonwireError as err:
        return Outcome(error=err)


async def query_workflow(hosts: Mapping[str, Host], pid: Pid, name: str, timeout: float = QUERY_TIMEOUT) -> Outcome:
    """Query ``name`` of workflow ``pid`` (``pid``, ``state``; wippy-modules §12.5).

    The outcome's error: NotFound (no such workflow), Invalid (the workflow does not
    answer that query), Timeout (no worker answered in time), Unavailable."""
    what = f"query {name!r}"
    try:
        handle = workflow_handle(hosts, pid)
        answered, value = await _within(handle.query(name, rpc_timeout=timedelta(seconds=timeout)), timeout)
    except MoonwireError as err:
        return Outcome(error=err)
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as err:
        return Outcome(error=invalid(f"{what} to {pid} failed: {err}"))
    except RPCError as err:
        if err.status == RPCStatusCode.DEADLINE_EXCEEDED:
            answered = False
        else:
            return Outcome(error=_rpc_error(err, pid, what))
    if not answered:
        return Outcome(error=MoonwireError(f"{what} to {pid}: no worker answered within {timeout:g}s", Kind.TIMEOUT,
                                           retryable=True))
    return Outcome(value=value)


async def serve_ask(hosts: Mapping[str, Host], data: Any) -> Any:
    """Answer an ask on ``<prefix>.wfq.<worker>.ask``: ``{"ask": "update", "pid", "name",
    "args", "timeout"}`` or ``{"ask": "query", "pid", "name"}``; the result.

    Raises:
        MoonwireError: a malformed ask (Invalid), or the update's or query's error.
    """
    if not isinstance(data, dict) or data.get("ask") not in ("update", "query"):
        raise invalid('an ask is {"ask": "update"|"query", "pid": <workflow PID>, "name": ..., ...}')
    pid = Pid.parse(str(data.get("pid")))
    name = data.get("name")
    if pid is None or not pid.is_workflow:
        raise invalid(f"{data.get('pid')!r} is not a workflow PID")
    if not isinstance(name, str) or not name:
        raise invalid("the name must be a non-empty string")
    if data["ask"] == "update":
        args = data.get("args", [])
        if not isinstance(args, list):
            raise invalid("args must be a list")
        outcome = await update_workflow(hosts, pid, name, args, wait_bound(data.get("timeout", UPDATE_TIMEOUT),
                                                                           "timeout"))
    else:
        outcome = await query_workflow(hosts, pid, name)
    if outcome.error is not None:
        raise outcome.error
    return outcome.value
