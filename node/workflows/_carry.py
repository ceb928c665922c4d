"""What moonwire sends beside a call's arguments, in a Temporal header.

A workflow's input is its Lua arguments, one payload each (``_payloads.py``), so the
Temporal UI and any Temporal client see ``{"order_id":7}`` and nothing else. What
moonwire needs besides travels in the header ``moonwire`` of the same call, one payload
holding a map:

* starting a workflow, a child or a continue-as-new: ``ctx`` (the spawner's context
  values), ``messages`` (the ``with_message`` startup messages, ``[topic, payloads,
  sender]`` each) and ``parent`` (the spawner's PID);
* a signal: ``from`` (the sender's PID);
* an activity: ``ctx`` and ``trace`` (the workflow run's ``traceparent``, which the
  function it runs works in).

A call without moonwire's fields (a workflow started or signalled by another Temporal
client) has no header; the fields are then empty.

How the header gets there: the SDK takes headers only through interceptors. Moonwire's
side of a call puts a :class:`Carry` last among the call's arguments; the
:class:`CarryInterceptor` (installed on every moonwire Temporal client, so on its
workers, and on the replayer) moves it into the header on the way out. A Carry that
reaches the SDK's converter without the interceptor fails the call, so the header is
never dropped silently. On the way in, the interceptor keeps the header of the call
being handled (a workflow's start, a signal, an activity) where :func:`incoming` reads
it: a context variable, set for the handler's own task only.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from temporalio import client, worker
from temporalio.api.common.v1 import Payload

from moonwire.lua import invalid

from ._payloads import decode, encode

HEADER = "moonwire"


@dataclasses.dataclass(frozen=True, slots=True)
class Carry:
    """Moonwire's fields of one call, on their way to its ``moonwire`` header."""

    payload: Payload


def carry(fields: dict[str, Any]) -> list[Any]:
    """What to append to a call's arguments for ``fields``: a :class:`Carry`, or nothing
    when every field is empty (such a call has no header)."""
    present = {name: value for name, value in fields.items() if value}
    return [Carry(encode(present).payload)] if present else []


_INCOMING: contextvars.ContextVar[Payload | None] = contextvars.ContextVar("moonwire_header", default=None)


def incoming(header: Payload | None = None) -> dict[str, Any]:
    """Moonwire's fields of the call being handled (or of ``header``): ``{}`` when the
    call had no ``moonwire`` header.

    Raises:
        MoonwireError: (Invalid) a header that does not decode to a map.
    """
    found = header if header is not None else _INCOMING.get()
    if found is None:
        return {}
    fields = decode(found)
    if not isinstance(fields, dict):
        raise invalid(f"the {HEADER} header must hold a map, not {type(fields).__name__}")
    return fields


@contextmanager
def _handling(headers: Any) -> Iterator[None]:
    token = _INCOMING.set(headers.get(HEADER) if headers else None)
    try:
        yield
    finally:
        _INCOMING.reset(token)


def _outgoing(input: Any) -> None:
    """Move a trailing :class:`Carry` from ``input.args`` into ``input.headers``."""
    args: Sequence[Any] = input.args
    if args and isinstance(args[-1], Carry):
        input.headers = {**(input.headers or {}), HEADER: args[-1].payload}
        input.args = list(args[:-1])


class CarryInterceptor(client.Interceptor, worker.Interceptor):
    """Moves :class:`Carry` into the ``moonwire`` header and back (see the module)."""

    def intercept_client(self, next: client.OutboundInterceptor) -> client.OutboundInterceptor:
        return _ClientOut(next)

    def intercept_activity(self, next: worker.ActivityInboundInterceptor) -> worker.ActivityInboundInterceptor:
        return _ActivityIn(next)

    def workflow_interceptor_class(self, input: worker.WorkflowInterceptorClassInput
                                   ) -> type[worker.WorkflowInboundInterceptor]:
        return _WorkflowIn


class _ClientOut(client.OutboundInterceptor):
    async def start_workflow(self, input: client.StartWorkflowInput) -> Any:
        _outgoing(input)
        return await super().start_workflow(input)

    async def signal_workflow(self, input: client.SignalWorkflowInput) -> None:
        _outgoing(input)
        await super().signal_workflow(input)


class _ActivityIn(worker.ActivityInboundInterceptor):
    async def execute_activity(self, input: worker.ExecuteActivityInput) -> Any:
        with _handling(input.headers):
            return await super().execute_activity(input)


class _WorkflowIn(worker.WorkflowInboundInterceptor):
    def init(self, outbound: worker.WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowOut(outbound))

    async def handle_signal(self, input: worker.HandleSignalInput) -> None:
        with _handling(input.headers):
            await super().handle_signal(input)


class _WorkflowOut(worker.WorkflowOutboundInterceptor):
    def start_activity(self, input: worker.StartActivityInput) -> Any:
        _outgoing(input)
        return super().start_activity(input)

    async def start_child_workflow(self, input: worker.StartChildWorkflowInput) -> Any:
        _outgoing(input)
        return await super().start_child_workflow(input)

    async def signal_external_workflow(self, input: worker.SignalExternalWorkflowInput) -> None:
        _outgoing(input)
        await super().signal_external_workflow(input)

    def continue_as_new(self, input: worker.ContinueAsNewInput) -> NoReturn:
        _outgoing(input)
        super().continue_as_new(input)


CARRY = CarryInterceptor()
