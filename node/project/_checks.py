"""Checks the loader runs on validated entries, beyond what each kind's model checks
alone: settings that are accepted but do nothing here (this file), and commands
(``_commands.py``). Each finding is reported as ``file:line entry field: reason``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ._entries import Entry, ProcessHostEntry


@dataclass(frozen=True, slots=True)
class Finding:
    """Something the loader reports about an entry: at ``loc`` (a path in its YAML), an
    error or a warning."""

    entry: str
    loc: tuple[str, ...]
    reason: str
    error: bool = False


IGNORED_HOST_SETTINGS = {
    # Wippy's scheduler (system/scheduler/actor) runs a host's processes on `workers`
    # goroutines, each with a run queue of initial capacity `local_queue_size`, fed by a
    # global one of initial capacity `queue_size`; both queues grow on demand, so neither
    # bounds anything there either.
    "workers": "Wippy's number of scheduler threads per host; a moonwire node steps every host's processes on its "
               "one event loop (Lua runs under Python's GIL), so for parallelism run more nodes",
    "queue_size": "Wippy's initial capacity of a host's run queue, which grows on demand there; moonwire's run queue "
                  "grows the same way (use max_processes to bound a host, host.mailbox_limit to bound an inbox)",
    "local_queue_size": "Wippy's initial capacity of each scheduler thread's run queue; a moonwire host has one run "
                        "queue, on one event loop",
}


def host_findings(entries: Mapping[str, Entry]) -> Iterator[Finding]:
    """A warning for each of Wippy's host settings a ``process.host`` sets that moonwire
    accepts and ignores (it runs the project unchanged, but the setting does nothing)."""
    for entry_id in sorted(entries):
        entry = entries[entry_id]
        if isinstance(entry, ProcessHostEntry):
            for key in sorted(entry.host.model_fields_set & IGNORED_HOST_SETTINGS.keys()):
                yield Finding(entry_id, ("host", key), f"accepted and ignored: {IGNORED_HOST_SETTINGS[key]}")
