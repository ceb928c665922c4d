"""Function pools after a code reload (``moonwire run --watch``)."""

from __future__ import annotations

import logging

from moonwire.lua import MoonwireError

from ..project import FunctionEntry
from ._functions import FunctionPool, Functions
from ._process_functions import process_functions

log = logging.getLogger("moonwire.functions")


async def reload_pools(functions: Functions) -> tuple[list[str], list[str], list[str]]:
    """After a code reload (the project and the code loader hold the new code): a pool
    and a subscription for each new function, a new pool for each function whose entry
    or code changed (calls in flight finish on the old one; the subscription takes the
    next request to the new one), none for a removed one; and the same for process
    entries served as functions (``meta.default_host``), which spawn with the code
    loader's current code, so only entries that gained, lost or changed the key matter.
    Returns the ids added, changed and removed.

    The tables change first, with no await in between, and the subscriptions after: a
    request that arrives while the server is told is served by the entry as it is now.
    An id that turned from a function into a process-function (or back) is changed: it
    stays subscribed throughout."""
    wanted = {e.id: e for e in functions.project.of_kind("function.lua") if isinstance(e, FunctionEntry)}
    old_served, served = functions.process_functions, process_functions(functions.project, functions)
    added: list[str] = []
    changed: list[str] = []
    removed = [entry_id for entry_id in functions.pools if entry_id not in wanted]
    for entry_id in removed:
        del functions.pools[entry_id]  # a request still on its way is answered NotFound
    functions.process_functions = served
    for entry_id, entry in wanted.items():
        old, code = functions.pools.get(entry_id), functions.code.code(entry)
        if old is not None and old.entry == entry and old.code is code:
            continue
        pool = functions.pools[entry_id] = FunctionPool(entry, code, functions)
        (changed if old is not None else added).append(entry_id)
        try:
            pool.prewarm()
        except MoonwireError as err:  # as a pool that starts lazily: its calls fail with this
            log.error("%s: its new code does not load: %s", entry_id, err.message)
    removed += [entry_id for entry_id in old_served if entry_id not in served]
    for entry_id, process_function in served.items():
        if entry_id not in old_served:
            added.append(entry_id)
        elif old_served[entry_id].host != process_function.host:
            changed.append(entry_id)
    for entry_id in set(added) & set(removed):  # one kind of function turned into the other
        added.remove(entry_id)
        removed.remove(entry_id)
        changed.append(entry_id)
    for entry_id in removed:
        await functions.unsubscribe(entry_id)
    for entry_id in added:
        await functions.subscribe(entry_id)
    return added, changed, removed
