"""Temporal updates inside a workflow, as Wippy carries them (wippy-modules §12.5): an
update arrives as a message whose topic is the update's name and whose sender is the
pseudo-PID ``{update|<update id>}``; the workflow answers with ``process.send`` to it.

The answers form a small state machine per update (Wippy's ``update_manager.go``):

====================  ==========  ================================================
send                  allowed in  effect
====================  ==========  ================================================
``"ack"``             pending     accepted
``"nak", reason``     pending     the caller gets Invalid ``reason`` (default
                                  ``update rejected``)
``"ok", result``      accepted    the caller gets ``result`` (the first payload)
``"error", message``  accepted    the caller gets ``message`` (an error value keeps
                                  its kind; default ``update failed``)
anything else         -           ``send`` returns nil, err (Invalid)
====================  ==========  ================================================

The Python SDK accepts an update once its validator (synchronous, it cannot wait for
Lua) has passed, so every update delivered to Lua is already *accepted* in Temporal's
terms: ``ack`` changes nothing there and ``nak`` completes the update with a failure.
What the validator refuses (before anything is recorded in history) is what can be
judged without Lua: arguments that do not decode, a full inbox, a run that is ending.

Deterministic: nothing here reads a clock, random or I/O, and the futures belong to the
workflow's own event loop. Used by ``_workflow_run.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from moonwire.lua import Kind, Message, MoonwireError, invalid

from ..wire import pack
from ._payloads import decode, encode
from ._workflow_codec import to_failure

UPDATE_PID_PREFIX = "{update|"
MAX_ANSWER = 1 << 20
"""Bytes an answer may take (its payload, or an error's details): Temporal refuses a
payload over 2 MB by failing the workflow task again and again, which Lua could not
repair."""


def update_pid(update_id: str) -> str:
    """The pseudo-PID a workflow answers an update at (``msg:from()``)."""
    return UPDATE_PID_PREFIX + update_id + "}"


def is_update_pid(dest: str) -> bool:
    return dest.startswith(UPDATE_PID_PREFIX) and dest.endswith("}")


def decode_update_args(args: Sequence[RawValue]) -> list[Any]:
    """An update's arguments as Lua-bound values, each a payload as a signal's are
    (``_payloads.py``: ``json/plain`` from any Temporal client, ``binary/msgpack``,
    the previous codec's ``binary/plain``).

    Raises:
        MoonwireError: (Invalid) an argument that does not decode, naming it.
    """
    values = []
    for index, raw in enumerate(args, start=1):
        try:
            values.append(decode(raw))
        except MoonwireError as err:  # the caller is told which argument and why
            raise invalid(f"update argument {index} does not decode: {err.message}") from None
    return values


@dataclass(slots=True)
class _Update:
    name: str
    answer: asyncio.Future[RawValue]
    accepted: bool = False


class UpdateBook:
    """The updates of one run that Lua has not answered yet, by pseudo-PID."""

    def __init__(self) -> None:
        self._open: dict[str, _Update] = {}

    def __len__(self) -> int:
        return len(self._open)

    def open(self, update_id: str, name: str, payloads: list[Any]) -> tuple[Message, asyncio.Future[RawValue]]:
        """Register update ``update_id``: the message to deliver, and the future its
        answer settles (its result as a payload, or an ApplicationError)."""
        sender = update_pid(update_id)
        future: asyncio.Future[RawValue] = asyncio.get_running_loop().create_future()
        self._open[sender] = _Update(name, future)
        return Message(name, payloads, sender), future

    def answer(self, dest: str, topic: str, payloads: list[Any]) -> None:
        """``process.send(dest, topic, ...)`` to an update's pseudo-PID.

        Raises:
            MoonwireError: (Invalid) an unknown update, an unknown answer, or one out of
                order; the update stays as it was.
        """
        update = self._open.get(dest)
        if update is None:
            raise invalid(f"unknown update: {dest[len(UPDATE_PID_PREFIX):-1]} (answered already, or not this run's)")
        first = payloads[0] if payloads else None
        if topic in ("ack", "nak"):
            if update.accepted:
                raise invalid(f"update {update.name!r} already accepted")
            if topic == "ack":
                update.accepted = True
                return
            reason = _text(first, "update rejected")
            self._settle(dest, error=_bounded(MoonwireError(reason, Kind.INVALID, retryable=False)))
        elif topic in ("ok", "error"):
            if not update.accepted:
                raise invalid(f"update {update.name!r} not accepted (state: pending): send \"ack\" first")
            if topic == "ok":
                self._settle(dest, result=_result(first))
            else:
                error = first if isinstance(first, MoonwireError) else MoonwireError(_text(first, "update failed"))
                self._settle(dest, error=_bounded(error))
        else:
            raise invalid(f"unknown update response: {topic} (expected ack/nak/ok/error)")

    def close_all(self, why: str) -> None:
        """The run ends (returns, fails or continues as new) with updates unanswered:
        each caller gets Unavailable, retryable only when Lua had not accepted it (an
        accepted update may have had its effect)."""
        for dest, update in list(self._open.items()):
            state = "accepted" if update.accepted else "not accepted"
            self._settle(dest, error=MoonwireError(f"update {update.name!r} was {state} and never answered: {why}",
                                                   Kind.UNAVAILABLE, retryable=not update.accepted))

    def fail(self, dest: str, error: MoonwireError) -> None:
        """Fail update ``dest`` (it could not be delivered)."""
        self._settle(dest, error=error)

    def _settle(self, dest: str, *, result: RawValue | None = None, error: MoonwireError | None = None) -> None:
        update = self._open.pop(dest)
        if update.answer.done():
            return
        if error is None:
            assert result is not None
            update.answer.set_result(result)
        else:
            update.answer.set_exception(to_failure(error))


def _result(value: Any) -> RawValue:
    """``value`` as the update's result payload (JSON when it holds the value, else
    msgpack: ``_payloads.py``), when it fits in MAX_ANSWER bytes.

    Raises:
        MoonwireError: (Invalid) it does not, or it cannot be sent; the update stays as it was.
    """
    payload = encode(value)
    _within_limit(len(payload.payload.data))
    return payload


def _bounded(error: MoonwireError) -> MoonwireError:
    """``error``, when its details (msgpack, ``to_failure``) fit in MAX_ANSWER bytes."""
    _within_limit(len(pack(error)))
    return error


def _within_limit(size: int) -> None:
    if size > MAX_ANSWER:
        raise invalid(f"an update's answer may take {MAX_ANSWER} bytes, not {size}")


def _text(value: Any, default: str) -> str:
    if value is None:
        return default
    if isinstance(value, MoonwireError):
        return value.message
    return value if isinstance(value, str) else str(value)


def refusal(message: str, kind: Kind = Kind.UNAVAILABLE, retryable: bool = True) -> ApplicationError:
    """What a validator raises to reject an update before it is accepted (nothing is
    recorded; the caller may send it again)."""
    return to_failure(MoonwireError(message, kind, retryable=retryable))


# ---------------------------------------------------------------- the workflow's handlers


class _Run(Protocol):
    """What the handlers need of the run (``_workflow_run.WorkflowRun``)."""

    def post(self, message: Message) -> bool: ...

    def refuses(self) -> str | None: ...


class UpdateHandlers:
    """The update and query handlers of the Lua workflow class (a mixin: the SDK finds
    handlers on base classes too). The class sets ``run_``, ``early`` and ``updates``."""

    run_: _Run | None
    early: list[Message]
    updates: UpdateBook

    @workflow.update(dynamic=True)
    async def on_update(self, name: str, args: Sequence[RawValue]) -> RawValue:
        """An update, delivered as a message from ``{update|<id>}``; answered when Lua
        sends ``ok`` or ``error`` there, or ``nak``."""
        message, answer = self.updates.open(workflow.current_update_info().id, name, decode_update_args(args))
        if self.run_ is None:  # before the run started: behind the startup messages, as signals
            self.early.append(message)
        elif not self.run_.post(message):
            self.updates.fail(message.sender, MoonwireError("the workflow's inbox is full", Kind.UNAVAILABLE,
                                                            retryable=True))
        return await answer

    @on_update.validator
    def admit_update(self, name: str, args: Sequence[RawValue]) -> None:
        """Refuse before acceptance (nothing is recorded) what Lua would never see."""
        try:
            decode_update_args(args)
        except MoonwireError as err:
            raise refusal(err.message, Kind.INVALID, retryable=False) from None
        if not name or name.startswith("@"):
            raise refusal(f"update name {name!r} cannot be a topic (empty, or starts with @)", Kind.INVALID, False)
        why = self.run_.refuses() if self.run_ is not None else None
        if why is not None:
            raise refusal(why)

    @workflow.query(dynamic=True)
    def on_query(self, name: str, args: Sequence[RawValue]) -> Any:
        """As Wippy's: ``pid`` is the workflow id, ``state`` an empty map."""
        if name == "pid":
            return workflow.info().workflow_id
        if name == "state":
            return {}
        raise to_failure(invalid(f"unknown query type: {name} (known: pid, state)"))
