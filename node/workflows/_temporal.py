"""The node's Temporal side, below workflows as processes see them: connecting a
``temporal.client`` (TLS, API key, the SDK core's logs routed away from stdout), a
``temporal.worker`` entry's settings (task queue, ``worker_options``, what its Lua
workflows need), the :class:`Host` that pairs a worker entry with its client, reading a
workflow's handle and result through the hosts, the Temporal type names of the
project's workflows, and the replayer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, TLSConfig, WorkflowFailureError, WorkflowHandle
from temporalio.common import RawValue
from temporalio.runtime import LogForwardingConfig, LoggingConfig, TelemetryConfig, TelemetryFilter
from temporalio.runtime import Runtime as TemporalRuntime
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer, Worker

from moonwire.broker import Pid
from moonwire.lua import Kind, Limits, MoonwireError, Outcome, invalid, not_found

from ..functions import CodeLoader
from ..project import Project, TemporalClientEntry, TemporalWorkerEntry, WorkflowEntry
from ._carry import CARRY
from ._payloads import decode
from ._search import Declared
from ._workflow_codec import WorkflowTypes, duration_option, from_failure
from ._workflow_run import WorkerContext, register_replay

log = logging.getLogger("moonwire.workflows")

WATCH_RETRY = (0.5, 10.0)  # first and longest wait between attempts to watch a workflow

# Go SDK names (what Wippy's worker_options use) -> Python SDK keyword and converter.
_WORKER_OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "max_concurrent_activity_execution_size": ("max_concurrent_activities", int),
    "max_concurrent_workflow_task_execution_size": ("max_concurrent_workflow_tasks", int),
    "max_concurrent_local_activity_execution_size": ("max_concurrent_local_activities", int),
    "max_concurrent_workflow_task_pollers": ("max_concurrent_workflow_task_polls", int),
    "max_concurrent_activity_task_pollers": ("max_concurrent_activity_task_polls", int),
    "worker_activities_per_second": ("max_activities_per_second", float),
    "task_queue_activities_per_second": ("max_task_queue_activities_per_second", float),
    "sticky_schedule_to_start_timeout": ("sticky_queue_schedule_to_start_timeout", lambda v: duration_option(v, "value")),
    "max_cached_workflows": ("max_cached_workflows", int),
    "graceful_shutdown_timeout": ("graceful_shutdown_timeout", lambda v: duration_option(v, "value")),
    "identity": ("identity", str),
    "build_id": ("build_id", str),
    "use_versioning": ("use_worker_versioning", bool),
}


def worker_options(entry: TemporalWorkerEntry) -> dict[str, Any]:
    """``worker_options`` as Python SDK keywords.

    Raises:
        MoonwireError: (Invalid) an option the Python SDK has no equivalent for, naming it.
    """
    out: dict[str, Any] = {}
    for name, value in entry.worker_options.items():
        mapped = _WORKER_OPTIONS.get(name)
        if mapped is None:
            raise invalid(f"{entry.id}: worker option {name!r} is not supported "
                          f"(supported: {', '.join(sorted(_WORKER_OPTIONS))})")
        keyword, convert = mapped
        try:
            out[keyword] = convert(value)
        except (TypeError, ValueError, MoonwireError) as err:
            reason = err.message if isinstance(err, MoonwireError) else str(err)
            raise invalid(f"{entry.id}: worker option {name}: {reason}") from None
    return out


def _route_core_logs() -> None:
    """The SDK's core (Rust) logs to stdout by default, which is where ``run -x``
    prints its result: forward them to Python logging (stderr) instead, once."""
    global _core_logs_routed
    if _core_logs_routed:
        return
    _core_logs_routed = True
    telemetry = TelemetryConfig(logging=LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core"))))
    TemporalRuntime.set_default(TemporalRuntime(telemetry=telemetry), error_if_already_set=False)


_core_logs_routed = False


async def connect_client(entry: TemporalClientEntry, embedded_address: str | None, project_root: Path) -> Client:
    """A Temporal client for a ``temporal.client`` entry (the embedded server when it
    names no address)."""
    _route_core_logs()
    address = embedded_address if entry.embedded else entry.address
    if address is None:
        raise invalid(f"{entry.id}: no address and no embedded Temporal server")

    def read(path: str | None) -> bytes | None:
        return (project_root / path).read_bytes() if path else None

    tls: bool | TLSConfig = False
    if entry.tls.enabled or entry.auth.type == "mtls":
        tls = TLSConfig(server_root_ca_cert=read(entry.tls.ca_file), domain=entry.tls.server_name,
                        client_cert=read(entry.auth.cert_file or entry.tls.cert_file),
                        client_private_key=read(entry.auth.key_file or entry.tls.key_file))
    elif entry.auth.type == "api_key":
        tls = True  # API keys travel over TLS only
    try:
        return await Client.connect(address, namespace=entry.namespace, interceptors=[CARRY],
                                    api_key=entry.auth.api_key if entry.auth.type == "api_key" else None,
                                    tls=tls, connect_timeout=timedelta(seconds=entry.connection_timeout))
    except RuntimeError as err:  # what the SDK's core raises for a failed connect
        raise TemporalUnavailable(f"{entry.id}: cannot connect to Temporal at {address}: {err}") from None


class TemporalUnavailable(Exception):
    """A ``temporal.client`` could not connect (the node does not start)."""


@dataclass(slots=True)
class Host:
    """A worker entry this node runs: its client and task queue."""

    entry: TemporalWorkerEntry
    client: Client
    task_queue: str
    worker: Worker | None = None
    running: asyncio.Task[None] | None = None
    context: WorkerContext | None = None


def workflow_handle(hosts: Mapping[str, Host], pid: Pid) -> WorkflowHandle[Any, Any]:
    """Workflow ``pid`` through the client of its worker.

    Raises:
        MoonwireError: Unavailable (not retryable) when this node has no client for its worker.
    """
    host = hosts.get(pid.host)
    if host is None:
        raise MoonwireError(f"this node has no temporal.client for worker {pid.host}", Kind.UNAVAILABLE,
                            retryable=False)
    return host.client.get_workflow_handle(pid.uid, result_type=RawValue)


async def workflow_result(hosts: Mapping[str, Host], pid: Pid) -> Outcome:
    """The workflow's result or error, once it ends; transport errors are retried."""
    delay = WATCH_RETRY[0]
    while True:
        try:
            handle = workflow_handle(hosts, pid)
            return Outcome(value=decode(await handle.result()))
        except WorkflowFailureError as err:
            return Outcome(error=from_failure(err))
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return Outcome(error=not_found(f"noproc: workflow {pid} not found"))
            log.warning("watching %s: %s; retrying in %.1fs", pid, err, delay)
        except MoonwireError as err:
            return Outcome(error=err)
        await asyncio.sleep(delay)
        delay = min(delay * 2, WATCH_RETRY[1])


def task_queue_of(project: Project, worker: TemporalWorkerEntry) -> str:
    client = project.get(worker.client)
    assert isinstance(client, TemporalClientEntry)
    return client.tq_prefix + worker.task_queue


def worker_context(project: Project, code: CodeLoader, worker: TemporalWorkerEntry,
                   task_queues: Callable[[str], str | None], *, limits: Limits = Limits(),
                   mailbox_limit: int = 4096) -> WorkerContext:
    """What the Lua workflows of ``worker`` need: the code of the entries registered
    with it (an entry naming no worker runs on any), the task queue of every worker, the
    workflows' type names and the search attributes each worker's client declares.

    Raises:
        MoonwireError: (Invalid) two workflow entries with one Temporal type name.
    """

    def code_of(entry_id: str) -> Any:
        entry = project.get(entry_id)
        if not isinstance(entry, WorkflowEntry):
            raise not_found(f"no workflow.lua entry {entry_id}")
        if registered_worker(entry) not in (None, worker.id):
            raise not_found(f"{entry_id} is registered with worker {registered_worker(entry)}, not {worker.id}")
        return code.code(entry)

    return WorkerContext(worker=worker.id, task_queue=task_queue_of(project, worker), code=code_of,
                         task_queues=task_queues, limits=limits, mailbox_limit=mailbox_limit,
                         types=workflow_types(project), declared=lambda w: declared_of(project, w))


def declared_of(project: Project, worker: str) -> Declared:
    """The search attributes declared on the client of worker entry ``worker``."""
    entry = project.get(worker)
    client = project.get(entry.client) if isinstance(entry, TemporalWorkerEntry) else None
    return Declared.of(client) if isinstance(client, TemporalClientEntry) else Declared()


def workflow_types(project: Project) -> WorkflowTypes:
    """The Temporal type name of every workflow entry that names one
    (``meta.temporal.workflow.name``; the others' type is their id).

    Raises:
        MoonwireError: (Invalid) a name that is not a non-empty string, or a type name two
            entries would share (with each other, or with another entry's id).
    """
    named: dict[str, str] = {}
    for entry in project.of_kind("workflow.lua"):
        assert isinstance(entry, WorkflowEntry)
        name = _temporal_meta(entry).get("name")
        if name is None or name == entry.id:
            continue
        if not isinstance(name, str) or not name:
            raise invalid(f"{entry.id}: meta.temporal.workflow.name must be a non-empty string")
        named[entry.id] = name
    owners: dict[str, str] = {}
    for entry in project.of_kind("workflow.lua"):
        type_name = named.get(entry.id, entry.id)
        if type_name in owners:
            raise invalid(f"workflow entries {owners[type_name]} and {entry.id} both have Temporal type {type_name!r} "
                          "(meta.temporal.workflow.name)")
        owners[type_name] = entry.id
    return WorkflowTypes(named)


def workflow_replayer(project: Project) -> Replayer:
    """A Temporal replayer for this project's Lua workflows: replay recorded histories
    against the current code to find non-determinism before deploying it."""
    workers = [e for e in project.of_kind("temporal.worker") if isinstance(e, TemporalWorkerEntry)]
    if not workers:
        raise invalid("the project has no temporal.worker entry")
    queues = {w.id: task_queue_of(project, w) for w in workers}
    code = CodeLoader(project)

    def any_workflow(workflow_type: str) -> Any:
        entry = project.get(workflow_type)
        if not isinstance(entry, WorkflowEntry):
            raise not_found(f"no workflow.lua entry {workflow_type}")
        return code.code(entry)

    context = WorkerContext(worker=workers[0].id, task_queue=queues[workers[0].id], code=any_workflow,
                            task_queues=queues.get, limits=Limits(), mailbox_limit=4096,
                            types=workflow_types(project), declared=lambda w: declared_of(project, w))
    return Replayer(workflows=[register_replay(context)], interceptors=[CARRY])


def registered_worker(entry: WorkflowEntry) -> str | None:
    """The worker ``meta.temporal.workflow.worker`` names, if any."""
    found = _temporal_meta(entry).get("worker")
    return found if isinstance(found, str) else None


def _temporal_meta(entry: WorkflowEntry) -> dict[str, Any]:
    """``meta.temporal.workflow`` of an entry ({} when it has none)."""
    temporal = entry.meta.get("temporal") if isinstance(entry.meta, dict) else None
    found = temporal.get("workflow") if isinstance(temporal, dict) else None
    return found if isinstance(found, dict) else {}
