"""Continue-as-new (wippy-modules §12.4): ``process.upgrade(id?, ...)`` inside a
workflow ends the run and starts the next one of the same workflow (same workflow id,
so the same PID; a new run id) as workflow type ``id`` or the current one, with the
arguments as its input, on the same task queue, with the same context values, memo and
search attributes.

Beyond Wippy, nothing sent to the workflow is lost on the way (Temporal drops what a
run received and did not handle): the messages still in the run's mailbox when it
upgrades, and the signals that reach it before it has finished (a send it made is
still leaving, a signal arrived in the same workflow task), go into the next run's
input as startup messages, ahead of any later signal. Updates cannot move to another
run: the ones not answered yet fail (``UpdateBook.close_all``).

A monitor of the workflow sees none of this: it watches the workflow id's result and
follows the chain of runs to the last one's end (``handle.result()`` follows runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.common import RawValue

from moonwire.lua import Kind, Mailbox, Message, MoonwireError, invalid

from ._carry import Carry
from ._updates import is_update_pid
from ._workflow_codec import WorkflowInput, WorkflowTypes

MAX_INPUT = 1 << 20
"""Bytes of the next run's input (its payloads and its ``moonwire`` header: arguments,
carried messages, context) beyond which the upgrade is refused: Temporal refuses a
payload over 2 MB (its default blob limit) by failing the workflow task again and
again, which nothing in Lua could then repair."""


@dataclass(slots=True)
class Continuation:
    """A run that is continuing as new: what the next run starts with."""

    workflow_type: str
    """The next run's Temporal type (``meta.temporal.workflow.name`` applied)."""
    args: list[Any]
    started: WorkflowInput
    """The current run's input: its context values and parent carry over."""
    messages: list[Message] = field(default_factory=list)
    """Carried messages: the mailbox's undelivered ones, then those arriving since."""
    size: int = 0
    """Bytes of the next run's input with the messages carried so far."""

    def carry(self, message: Message) -> bool:
        """Carry a message that arrived while the run winds down; False when it would
        take the next run's input over :data:`MAX_INPUT` (it is not carried then, as a
        message a full inbox refuses)."""
        try:
            added = message_size(message)
        except MoonwireError:
            return False
        if self.size + added > MAX_INPUT:
            return False
        self.messages.append(message)
        self.size += added
        return True

    def next_input(self) -> list[Any]:
        """The next run's start arguments, as any start's (``WorkflowInput.encode``): a
        payload per argument, then the context, messages and parent for the ``moonwire``
        header, which the interceptor moves there (``_carry.py``).

        Raises:
            MoonwireError: (Invalid) an argument that cannot be sent to Temporal.
        """
        return WorkflowInput(self.args, self.started.context, self.messages, self.started.parent).encode()

    def complete(self) -> NoReturn:
        """End the run: Temporal starts the next one (raises ContinueAsNewError), with the
        current run's memo and search attributes as they are now (set at start and by
        ``workflow.attrs``; the SDK keeps them current in ``workflow.info()``). Passed
        explicitly: left unset, the dev server carried the search attributes upserted
        since the start but only the memo given at start (measured)."""
        info = workflow.info()
        workflow.continue_as_new(args=self.next_input(), workflow=self.workflow_type,
                                 memo={name: RawValue(payload) for name, payload in info.raw_memo.items()},
                                 search_attributes=info.typed_search_attributes)


def input_size(args: list[Any]) -> int:
    """Bytes of a start's arguments: its payloads and its header's."""
    return sum(len(arg.payload.data) for arg in args if isinstance(arg, (RawValue, Carry)))


def message_size(message: Message) -> int:
    """Bytes one carried message adds to a start's input (its share of the header)."""
    return input_size(WorkflowInput([], {}, [message]).encode()) - input_size(WorkflowInput([], {}, []).encode())


def continuation(entry: str | None, args: list[Any], current_type: str, started: WorkflowInput, mailbox: Mailbox,
                 check: Callable[[str], object], types: WorkflowTypes) -> Continuation:
    """The continuation ``process.upgrade(entry, *args)`` asks for, carrying what
    ``mailbox`` holds (except updates). ``check`` raises for an entry this worker cannot
    run; ``types`` names an entry's Temporal type.

    Raises:
        MoonwireError: NotFound for an entry this worker does not run (``check``'s
            reason), Invalid for an input too large or that cannot be sent; nothing has
            changed then.
    """
    # Without an entry the type stays as it is (a run started under an entry's old type
    # name continues under it); with one, the entry's type name.
    workflow_type = types.of(entry) if entry else current_type
    try:
        check(entry or types.entry(current_type))
    except MoonwireError as err:
        raise MoonwireError(f"upgrade: {err.message}", err.kind or Kind.NOT_FOUND, retryable=False) from None
    carried = [message for message in mailbox.undelivered() if not is_update_pid(message.sender)]
    planned = Continuation(workflow_type, args, started, carried)
    try:
        size = input_size(planned.next_input())
    except MoonwireError as err:
        raise invalid(f"upgrade: {err.message}") from None
    if size > MAX_INPUT:
        raise invalid(f"upgrade: the next run's input would be {size} bytes ({len(carried)} carried messages), "
                      f"over {MAX_INPUT}; receive some messages first, or pass less")
    planned.size = size
    return planned
