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
    next request to the new one), none for a removed one. Returns the ids added,
    changed and removed."""
    wanted = {e.id: e for e in functions.project.of_kind("function.lua") if isinstance(e, FunctionEntry)}
    added: list[str] = []
    changed: list[str] = []
    removed = [entry_id for entry_id in functions.pools if entry_id not in wanted]
    for entry_id in removed:
        del functions.pools[entry_id]  # a request still on its way is answered NotFound
        await functions.unsubscribe(entry_id)
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
        if old is None:
            await functions.subscribe(entry_id)
    await _reload_process_functions(functions, added, changed, removed)
    return added, changed, removed


async def _reload_process_functions(functions: Functions, added: list[str], changed: list[str],
                                    removed: list[str]) -> None:
    """Process entries served as functions (``meta.default_host``): they spawn with the
    code loader's current code, so only entries that gained, lost or changed the key
    matter."""
    old, wanted = functions.process_functions, process_functions(functions.project, functions)
    functions.process_functions = wanted
    # An id that turned from one kind of function into the other is changed, not added
    # and removed: it is served throughout (by the pool path above or below).
    for entry_id in old.keys() - wanted.keys():
        if entry_id in functions.pools:
            _moved(entry_id, added, changed)
        else:
            removed.append(entry_id)
            await functions.unsubscribe(entry_id)
    for entry_id, served in wanted.items():
        if entry_id not in old:
            if entry_id in removed:
                _moved(entry_id, removed, changed)
            else:
                added.append(entry_id)
            await functions.subscribe(entry_id)
        elif old[entry_id].host != served.host:
            changed.append(entry_id)


def _moved(entry_id: str, source: list[str], changed: list[str]) -> None:
    if entry_id in source:
        source.remove(entry_id)
    changed.append(entry_id)
