"""Exits, for the process table (``_table.py``): what happens when a process ends
(wippy-surface §3.5-§3.7), here or, for what it watched, elsewhere.

Exit outcomes (``_exit``), for the process P that ended:

* every monitor of P gets EXIT ``{kind, from, at, result = {value, error}}``;
* on an abnormal exit (an error of any kind, terminate included), every process linked
  to P gets LINK_DOWN when it traps links, and otherwise dies with "linked process
  failed", which is itself abnormal and cascades along its own links;
* on a normal exit (a return without error), links fire nothing;
* P's names are released and the monitors and links it held are forgotten.

An EXIT or LINK_DOWN from elsewhere (another node, a workflow, a node that went down)
is acted on only while the local process still holds that monitor or link (``_fire``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from moonwire.broker import Pid
from moonwire.lua import CANCEL, EXIT, LINK_DOWN, Event, Kind, MoonwireError, Outcome, Unit

from ..telemetry import ProcessCounts
from ..wire import node_down as node_down_error
from ._hosts import ProcessHost
from ._records import LINKED_FAILURE, ProcessRecord

log = logging.getLogger("moonwire.processes")


class Exits:
    """The exit half of :class:`~._table.ProcessTable` (a mixin: it uses the table's
    records, names and ``_elsewhere``)."""

    records: dict[str, ProcessRecord]
    uids: dict[str, ProcessRecord]
    names: dict[str, str]
    hosts: dict[str, ProcessHost]
    _exits: deque[ProcessRecord]
    _exiting: bool
    _empty: asyncio.Event
    counts: ProcessCounts

    if TYPE_CHECKING:
        def _left_cluster(self, pid: str) -> None: ...

    def _fire(self, record: ProcessRecord, event: Event) -> None:
        """An EXIT or LINK_DOWN about ``event.sender`` from another node (or about its
        node): acted on only while ``record`` still holds that monitor or link, which it
        drops, so each fires once and nothing follows unmonitor/unlink."""
        if record.unit.outcome is not None:
            return
        if event.kind == EXIT:
            if record.watching and event.sender in record.watching:
                record.watching.discard(event.sender)
                waiting = record.exec_waits.pop(event.sender, None) if record.exec_waits else None
                if waiting is not None:  # an exec on another node: its result, not an event
                    waiting.settle(Outcome(event.value, event.error))
                    return
                assert record.unit.mailbox is not None
                record.unit.mailbox.post_event(event)
        elif event.kind == LINK_DOWN and record.links and event.sender in record.links:
            record.links.discard(event.sender)
            if event.error is not None:  # a normal exit only ends the link
                self._link_failed(record, event.sender, event.error)

    def _link_failed(self, record: ProcessRecord, peer: str, error: MoonwireError | None) -> None:
        """A process linked to ``record`` exited abnormally (or is gone)."""
        if record.unit.trap_links:
            assert record.unit.mailbox is not None
            record.unit.mailbox.post_event(Event(LINK_DOWN, peer, time.time(), None, error))
        else:
            record.unit.abort(MoonwireError(LINKED_FAILURE, Kind.INTERNAL, details={"from": peer, "error": error}))

    def node_down(self, node: str, incarnation: str, reason: str) -> None:
        """Every monitor and link held here on a process of that incarnation of ``node``
        fires once (EXIT, LINK_DOWN or death) with a node-down error; watchers and
        links from there are forgotten."""
        error = node_down_error(node, reason)
        prefix = f"{incarnation}-"
        self.counts.node_down(reason)

        def there(pid: str) -> bool:
            parsed = Pid.parse(pid)
            return parsed is not None and parsed.node == node and parsed.uid.startswith(prefix)

        failed: list[str] = []
        for record in list(self.records.values()):
            if record.unit.outcome is not None:
                continue
            if record.watchers:
                record.watchers = {w for w in record.watchers if not there(w)}
            gone = [(t, EXIT) for t in record.watching or () if there(t)] + [
                (p, LINK_DOWN) for p in record.links or () if there(p)]
            # Each is told on its own: one that cannot be (its death, say, fails to
            # notify its own watchers elsewhere) never stops the others being told.
            for remote, kind in gone:
                try:
                    self._remote_gone(record.pid, remote, kind, error)
                except Exception as err:  # noqa: BLE001 - logged once below
                    failed.append(f"{kind} of {remote} to {record.pid}: {type(err).__name__}: {err}")
        if failed:
            log.error("node %s down: %d watcher(s) here could not be told (the others were): %s", node,
                      len(failed), "; ".join(failed[:5]))

    def _ended(self, unit: Unit) -> None:
        """``Unit.on_end``. Exits are handled one at a time, in order, even when one
        exit kills linked processes (no recursion however long the chain)."""
        self._exits.append(unit.record)
        if self._exiting:
            return
        self._exiting = True
        try:
            while self._exits:
                self._exit(self._exits.popleft())
        finally:
            self._exiting = False

    def _exit(self, record: ProcessRecord) -> None:
        pid = record.pid
        del self.records[pid]
        del self.uids[pid[pid.index("|") + 1:-1]]
        outcome = record.unit.outcome
        assert outcome is not None
        if outcome.error is not None and outcome.error.kind != Kind.CANCELED:
            log.warning("process %s (%s) exited with an error: %s", pid, record.entry, outcome.error,
                        extra=record.unit.log_fields())
        if record.shard is not None:
            self.hosts[record.host].release(record.shard)
            self.counts.exited(record.host, outcome.error)
        for name in record.names or ():
            if self.names.get(name) == pid:
                del self.names[name]
        self._left_cluster(pid)
        # Each watcher and linked process is told on its own: one that cannot be told
        # (a notice that fails to encode or publish) never stops the others.
        failed: list[str] = []
        if record.watching:
            for target_pid in record.watching:
                target = self.records.get(target_pid)
                if target is not None and target.watchers:
                    target.watchers.discard(pid)
                elif target is None and (elsewhere := self._elsewhere(target_pid)) is not None:
                    try:
                        elsewhere[0].forget(pid, elsewhere[1])
                    except Exception as err:  # noqa: BLE001 - logged once below
                        failed.append(f"unmonitor {target_pid}: {type(err).__name__}: {err}")
        now = time.time()
        exit_event = Event(EXIT, pid, now, outcome.value, outcome.error)
        for watcher_pid in record.watchers or ():
            try:
                self._tell_watcher(pid, watcher_pid, exit_event)
            except Exception as err:  # noqa: BLE001 - logged once below
                failed.append(f"EXIT to {watcher_pid}: {type(err).__name__}: {err}")
        for peer_pid in record.links or ():
            try:
                self._tell_linked(pid, peer_pid, outcome, now)
            except Exception as err:  # noqa: BLE001 - logged once below
                failed.append(f"LINK_DOWN to {peer_pid}: {type(err).__name__}: {err}")
        if failed:
            log.error("process %s exited; %d of its exit notices failed (the others were sent): %s", pid,
                      len(failed), "; ".join(failed[:5]), extra=record.unit.log_fields())
        for hook in record.exit_hooks or ():
            try:
                hook(outcome)
            except Exception:  # noqa: BLE001 - one watcher's bug must not stop the others
                log.exception("exit hook of %s failed", pid)
        if not self.records:
            self._empty.set()

    def _tell_watcher(self, pid: str, watcher_pid: str, exit_event: Event) -> None:
        """EXIT of ``pid`` for one of its monitors, here or on another node."""
        watcher = self.records.get(watcher_pid)
        if watcher is None:
            if (elsewhere := self._elsewhere(watcher_pid)) is not None:
                elsewhere[0].tell(elsewhere[1], exit_event)
            return
        if watcher.watching:
            watcher.watching.discard(pid)
        assert watcher.unit.mailbox is not None
        watcher.unit.mailbox.post_event(exit_event)

    def _tell_linked(self, pid: str, peer_pid: str, outcome: Outcome, now: float) -> None:
        """``pid`` ended with ``outcome``: its link to ``peer_pid`` fires (or just ends)."""
        peer = self.records.get(peer_pid)
        if peer is None:
            # The remote side learns either way: a normal exit only ends the link.
            if (elsewhere := self._elsewhere(peer_pid)) is not None:
                elsewhere[0].tell(elsewhere[1], Event(LINK_DOWN, pid, now, outcome.value, outcome.error))
            return
        if peer.links:
            peer.links.discard(pid)
        if not outcome.ok:
            self._link_failed(peer, pid, outcome.error)

    async def shutdown(self, timeout: float) -> None:
        """Send CANCEL to every process, wait up to ``timeout`` for them to exit, then
        terminate the rest."""
        if not self.records:
            return
        count = len(self.records)
        for record in list(self.records.values()):
            if record.unit.mailbox is not None:
                record.unit.mailbox.post_event(Event(CANCEL, "", time.time(), reason="node shutting down"))
        log.info("cancelled %d process(es); waiting up to %.1fs for them to exit", count, timeout)
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            remaining = list(self.records.values())
            log.warning("terminating %d process(es) still running after %.1fs", len(remaining), timeout)
            for record in remaining:
                if record.unit.outcome is None:
                    record.unit.abort(MoonwireError("process terminated: node shutting down", Kind.CANCELED,
                                                    retryable=False))

    def _remote_gone(self, local: str, remote: str, kind: str, error: MoonwireError) -> None:
        """The remote process ``remote`` does not exist or its node is gone: fire the
        monitor (EXIT) or link (LINK_DOWN) that ``local`` holds on it, once."""
        record = self.records.get(local)
        if record is not None:
            self._fire(record, Event(kind, remote, time.time(), None, error))
