"""A call of a function from a plain NATS connection (the CLI), and what a call that got no
reply failed with. Apart from the pools (``_functions.py``): ``moonwire call`` imports
this, not the Lua runtime."""

from __future__ import annotations

import functools
from typing import Any

from nats.aio.client import Client as NatsClient

from moonwire.broker import Subjects
from moonwire.lua import Kind, MoonwireError, Outcome, invalid, not_found

from ..project import is_entry_id
from ..wire import Unanswered, Why, ask
from ._options import timed_out

DEFAULT_REMOTE_TIMEOUT = 60.0


def call_unanswered(target: str, missing: Unanswered) -> MoonwireError:
    """What a call to ``target`` that got no reply failed with."""
    if missing.why is Why.NO_RESPONDERS:
        return not_found(f"function {target} not found: no node serves it")
    if missing.why is Why.TIMEOUT:
        return timed_out(target, missing.wait)
    return MoonwireError(f"call to {target} abandoned: {missing}", Kind.CANCELED, retryable=True)


async def call_function(nats: NatsClient, subjects: Subjects, target: str, args: list[Any],
                        context: dict[str, Any], timeout: float | None) -> Outcome:
    """Call ``target`` once from a plain connection (the CLI), through its queue group."""
    if not is_entry_id(target):
        return Outcome(error=invalid(f"invalid function id {target!r}: expected namespace:name"))
    return await ask(nats, subjects.function(target), {"args": args, "ctx": context},
                     functools.partial(call_unanswered, target), timeout or DEFAULT_REMOTE_TIMEOUT)
