"""What crosses between moonwire and Temporal, as plain functions with no state: a
workflow's PID and type, its start input and signal arguments (payloads from
``_payloads.py``, moonwire's fields in the header of ``_carry.py``), errors as Temporal
failures and back, and the ``workflow.*``/``activity.*`` options as SDK keywords.

Both sides use it: the workflow run (``_workflow_run.py``, inside a worker's
deterministic loop, so nothing here may read the clock, random or I/O) and the node's
side (``_workflows.py``, ``_gateway.py``, ``_temporal.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TerminatedError,
    TimeoutError as TemporalTimeout,
)

from moonwire.broker import Pid
from moonwire.lua import Kind, Message, MoonwireError, internal, invalid

from ..functions import millis_or_duration
from ..wire import MSGPACK, pack, unpack
from ._carry import carry, incoming
from ._payloads import decode, decode_all, encode_all, is_legacy
from ._search import Declared, memo, search_attributes

SEND_ACTIVITY = "moonwire.send"
"""The activity behind ``process.send`` from a workflow to a plain process (no entry
id has no colon, so it cannot clash with a function's activity)."""

DEFAULT_ACTIVITY_TIMEOUT = timedelta(minutes=10)
DEFAULT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                            maximum_interval=timedelta(seconds=30), maximum_attempts=5)
"""Finite by default (Wippy retries for ever): a broken function fails the workflow's
call after about a minute instead of hiding."""

_NOT_RETRYABLE = frozenset({Kind.INVALID, Kind.NOT_FOUND, Kind.PERMISSION_DENIED, Kind.ALREADY_EXISTS})


# ---------------------------------------------------------------- PIDs and bodies


def workflow_pid(worker: str, workflow_id: str) -> str:
    """A workflow's PID: its worker in place of the host and no node (DESIGN §7)."""
    return str(Pid("", worker, workflow_id))


@dataclass(frozen=True, slots=True)
class WorkflowTypes:
    """Temporal workflow type names: an entry's ``meta.temporal.workflow.name``, else its id."""

    named: Mapping[str, str] = field(default_factory=dict)
    """Entry id -> type name, for the entries that name their type."""

    def of(self, entry: str) -> str:
        return self.named.get(entry, entry)

    def entry(self, type_name: str) -> str:
        """The entry behind a workflow type (the type itself when no entry names it)."""
        return next((entry for entry, named in self.named.items() if named == type_name), type_name)


@dataclass(frozen=True, slots=True)
class WorkflowInput:
    """What a workflow is started with: its arguments, the spawner's context, the
    startup messages (``with_message``) and the PID that spawned it."""

    args: list[Any]
    context: dict[str, Any]
    messages: list[Message]
    parent: str = ""

    def encode(self) -> list[Any]:
        """The start's arguments: a payload per Lua argument, then the rest for the header."""
        return [*encode_all(self.args), *carry({
            "ctx": self.context, "parent": self.parent,
            "messages": [[m.topic, m.payloads, m.sender] for m in self.messages]})]

    @staticmethod
    def decode(args: Sequence[Any], header: Payload | None) -> WorkflowInput:
        """From a start's payloads and ``moonwire`` header, or the one map the previous
        codec wrote.

        Raises:
            MoonwireError: (Invalid) naming what does not decode.
        """
        if is_legacy(args):
            data = decode(args[0])
            if not isinstance(data, dict) or not isinstance(data.get("args", []), list):
                raise invalid("a workflow input must be a map with a list of args")
            values, fields = list(data.get("args") or []), data
        else:
            values, fields = decode_all(args), incoming(header)
        context = fields.get("ctx") or {}
        messages = fields.get("messages") or []
        if not isinstance(context, dict) or not isinstance(messages, list) or not all(
                isinstance(m, list) and len(m) == 3 and isinstance(m[1], list) for m in messages):
            raise invalid("the moonwire header of a start needs a map ctx and messages of [topic, payloads, sender]")
        return WorkflowInput(values, context, [Message(str(t), list(p), str(s)) for t, p, s in messages],
                             str(fields.get("parent") or ""))


def encode_signal(sender: str, payloads: list[Any]) -> list[Any]:
    """A signal's arguments: a payload per message payload, the sender for the header."""
    return [*encode_all(payloads), *carry({"from": sender})]


def decode_signal(topic: str, args: Sequence[Any]) -> Message:
    """A signal as a message: its payloads, the sender from its header (the call being
    handled), or the one map the previous codec wrote.

    Raises:
        MoonwireError: (Invalid) naming what does not decode.
    """
    if is_legacy(args):
        data = decode(args[0])
        if not isinstance(data, dict) or not isinstance(data.get("payloads"), list):
            raise invalid("a signal body must be a map with a list of payloads")
        return Message(topic, data["payloads"], str(data.get("from") or ""))
    return Message(topic, decode_all(args), str(incoming().get("from") or ""))


# ---------------------------------------------------------------- errors across Temporal


def to_failure(error: MoonwireError) -> ApplicationError:
    """An error leaving Lua for Temporal (a failed activity or workflow): the kind is the
    failure's type, the whole error its details, so both survive the trip."""
    non_retryable = error.retryable is False or (error.retryable is None and error.kind in _NOT_RETRYABLE)
    return ApplicationError(error.message, pack(error), type=error.kind or Kind.INTERNAL,
                            non_retryable=non_retryable)


def from_failure(failure: BaseException) -> MoonwireError:
    """A Temporal failure (of an activity, a child or a workflow) as the error Lua sees."""
    cause: BaseException | None = failure
    while isinstance(cause, (ActivityError, ChildWorkflowError, WorkflowFailureError)):
        if cause.__cause__ is None:
            break
        cause = cause.__cause__
    if isinstance(cause, ApplicationError):
        if cause.details and isinstance(cause.details[0], bytes):
            try:
                carried = unpack(cause.details[0], MSGPACK)
                if isinstance(carried, MoonwireError):
                    return carried
            except MoonwireError:
                pass
        return MoonwireError(cause.message, cause.type or Kind.UNKNOWN, retryable=not cause.non_retryable)
    if isinstance(cause, TemporalTimeout):
        return MoonwireError(f"timed out ({cause.type.name.lower() if cause.type else 'timeout'})",
                             Kind.TIMEOUT, retryable=True)
    if isinstance(cause, TerminatedError):
        return MoonwireError("workflow terminated", Kind.CANCELED, retryable=False)
    if isinstance(cause, CancelledError):
        return MoonwireError("canceled", Kind.CANCELED, retryable=False)
    return internal(str(cause) if cause is not None else str(failure))


# ---------------------------------------------------------------- options


def duration_option(value: Any, what: str) -> timedelta:
    """Milliseconds (a number, as Wippy's Temporal options) or a duration string."""
    return timedelta(seconds=millis_or_duration(value, what))


def retry_policy(spec: Any, what: str) -> RetryPolicy:
    if not isinstance(spec, dict):
        raise invalid(f"{what} must be a table")
    known = {"initial_interval", "backoff_coefficient", "maximum_interval", "maximum_attempts",
             "non_retryable_error_types"}
    unknown = set(spec) - known
    if unknown:
        raise invalid(f"{what}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    try:
        return RetryPolicy(
            initial_interval=duration_option(spec.get("initial_interval", 1000), f"{what}.initial_interval"),
            backoff_coefficient=float(spec.get("backoff_coefficient", 2.0)),
            maximum_interval=(duration_option(spec["maximum_interval"], f"{what}.maximum_interval")
                              if "maximum_interval" in spec else None),
            maximum_attempts=int(spec.get("maximum_attempts", DEFAULT_RETRY.maximum_attempts)),
            non_retryable_error_types=[str(t) for t in spec.get("non_retryable_error_types") or []],
        )
    except (TypeError, ValueError) as err:
        raise invalid(f"{what}: {err}") from None


def activity_options(options: dict[str, Any], task_queue: str) -> dict[str, Any]:
    """``funcs.new():with_options{["activity.<opt>"] = ...}`` as execute_activity's
    keyword arguments (Invalid for an option it does not know)."""
    out: dict[str, Any] = {"task_queue": task_queue, "start_to_close_timeout": DEFAULT_ACTIVITY_TIMEOUT,
                           "retry_policy": DEFAULT_RETRY}
    for key, value in options.items():
        if not isinstance(key, str) or not key.startswith("activity."):
            continue
        name = key[len("activity."):]
        if name in ("start_to_close_timeout", "schedule_to_close_timeout", "schedule_to_start_timeout",
                    "heartbeat_timeout"):
            out[name] = duration_option(value, key)
        elif name == "task_queue":
            out[name] = str(value)
        elif name == "retry_policy":
            out[name] = retry_policy(value, key)
        else:
            raise invalid(f"unknown activity option {key!r}")
    return out


_BOTH = frozenset({"execution_timeout", "run_timeout", "task_timeout", "retry_policy", "cron_schedule", "memo",
                   "search_attributes", "id_reuse_policy"})
_TOP_LEVEL = frozenset({"start_delay", "id_conflict_policy", "execution_error_when_already_started"})
_CHILD = frozenset({"parent_close_policy"})
_PREFIXES = ("workflow.", "temporal.workflow.")
"""Wippy's names for the start options: ``workflow.*``, and ``temporal.workflow.*`` as
it still accepts; the first wins when both name one option."""


def workflow_options(options: Mapping[Any, Any]) -> dict[str, tuple[str, Any]]:
    """The workflow start options among a spawner's, by bare name: (key as given, value)."""
    out: dict[str, tuple[str, Any]] = {}
    for prefix in reversed(_PREFIXES):
        for key, value in options.items():
            if isinstance(key, str) and key.startswith(prefix):
                out[key[len(prefix):]] = (key, value)
    return out


def workflow_id_option(options: Mapping[Any, Any]) -> Any:
    """``workflow.id`` (or ``temporal.workflow.id``), None when not given."""
    found = workflow_options(options).get("id")
    return found[1] if found is not None else None


def start_options(options: Mapping[Any, Any], *, child: bool, declared: Declared = Declared()) -> dict[str, Any]:
    """The ``workflow.*``/``temporal.workflow.*`` spawner options (except ``id``) as
    keyword arguments of start_workflow or, for a ``child``, start_child_workflow;
    ``execution_error_when_already_started`` stays under its own name, for the caller.
    Search attributes must be among ``declared`` (those of the target worker's client).

    Raises:
        MoonwireError: (Invalid) an unknown option, one that does not apply to this kind
            of start, or a bad value; the message names it.
    """
    out: dict[str, Any] = {}
    allowed = _BOTH | (_CHILD if child else _TOP_LEVEL)
    for name, (key, value) in workflow_options(options).items():
        if name == "id":
            continue
        if name not in allowed:
            if name in _CHILD:
                raise invalid(f"{key} applies to child workflows (spawned inside a workflow) only")
            if name in _TOP_LEVEL:
                raise invalid(f"{key} does not apply to child workflows")
            raise invalid(f"unknown workflow start option {key!r} (known: "
                          f"{', '.join(sorted('temporal.workflow.' + n for n in _BOTH | _CHILD | _TOP_LEVEL))})")
        if name in ("execution_timeout", "run_timeout", "task_timeout", "start_delay"):
            out[name] = duration_option(value, key)
        elif name == "retry_policy":
            out[name] = retry_policy(value, key)
        elif name == "cron_schedule":
            out[name] = str(value)
        elif name == "memo":
            out[name] = memo(value, key)
        elif name == "search_attributes":
            out[name] = search_attributes(value, declared, key)
        elif name == "execution_error_when_already_started":
            if not isinstance(value, bool):
                raise invalid(f"{key} must be a boolean, not {value!r}")
            out[name] = value
        elif name == "id_reuse_policy":
            out[name] = _choice(value, key, WorkflowIDReusePolicy)
        elif name == "id_conflict_policy":
            out[name] = _choice(value, key, WorkflowIDConflictPolicy)
        else:
            out[name] = _choice(value, key, workflow.ParentClosePolicy)
    return out


def _choice(value: Any, what: str, choices: type[enum.Enum]) -> Any:
    """An enum member named in snake_case (``use_existing``)."""
    names = [n.lower() for n in choices.__members__ if n != "UNSPECIFIED"]
    if not isinstance(value, str) or value.lower() not in names:
        raise invalid(f"{what} must be one of {', '.join(names)}, not {value!r}")
    return choices[value.upper()]
