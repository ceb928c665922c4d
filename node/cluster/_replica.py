"""The local replica of the names bucket, and the rules a name must follow.

The replica is fed from two sides. The bucket's watch delivers every change in stream
order (a key's revision is the stream sequence of its last write). A write this node
made itself is applied as soon as JetStream acknowledges it ("write-through"), before
the watch brings it back, so that a process that registers a name and exits at once is
released by name (``release`` reads the replica), and so that ``lookup`` after one's own
``register`` sees it.

The two sides race, and revisions settle it:

* A write-through at revision ``r`` is applied only when the watch has not yet passed
  ``r`` (:attr:`Replica.position` < ``r``); otherwise the watch already brought that
  write and whatever followed it for that key.
* A write-through delete leaves a tombstone until the watch passes its revision, so the
  older value the watch is still to deliver does not bring the name back.
* The watch's value for a key replaces what is held only when its revision is newer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from moonwire.broker import MAX_NAME, name_problem

log = logging.getLogger("moonwire.cluster")

__all__ = ["MAX_NAME", "Change", "Holder", "Replica", "name_problem"]

@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a cluster name: the PID, the node incarnation that registered it, and
    the revision of the bucket entry (for conditional deletes)."""

    pid: str
    node: str
    incarnation: str
    revision: int

    def encode(self) -> bytes:
        return json.dumps({"pid": self.pid, "node": self.node, "incarnation": self.incarnation},
                          separators=(",", ":")).encode()

    @staticmethod
    def decode(value: bytes | None, revision: int) -> Holder | None:
        """The holder a bucket value names, or None when the value is not one of ours."""
        try:
            data = json.loads(value or b"")
            pid, node, incarnation = data["pid"], data["node"], data["incarnation"]
        except (ValueError, TypeError, KeyError):
            return None
        if not all(isinstance(field, str) for field in (pid, node, incarnation)):
            return None
        return Holder(pid, node, incarnation, revision)


Change = Callable[[str, "Holder | None", "Holder | None"], None]
"""``on_change(name, before, after)``: a name's holder changed in the replica (None: no
holder). Called once per change, after the replica has applied it."""


class Replica:
    """Every cluster name and its holder, as this node knows it; no I/O."""

    __slots__ = ("_by_pid", "_holders", "_on_change", "_tombstones", "position")

    def __init__(self, on_change: Change | None = None) -> None:
        self._holders: dict[str, Holder] = {}
        self._by_pid: dict[str, set[str]] = {}
        self._tombstones: dict[str, int] = {}
        """name -> revision of a delete this node wrote that the watch has not passed yet."""
        self._on_change = on_change
        self.position = 0
        """The last stream sequence the watch delivered."""

    def __len__(self) -> int:
        return len(self._holders)

    def get(self, name: str) -> Holder | None:
        return self._holders.get(name)

    def names_of(self, pid: str) -> list[str]:
        return sorted(self._by_pid.get(pid, ()))

    def items(self) -> Iterator[tuple[str, Holder]]:
        """Every name and its holder (a snapshot: safe to change the replica meanwhile)."""
        return iter(list(self._holders.items()))

    def clear(self) -> None:
        self._holders.clear()
        self._by_pid.clear()
        self._tombstones.clear()
        self.position = 0

    # ------------------------------------------------------------ the watch

    def watched(self, name: str, revision: int, holder: Holder | None) -> None:
        """The watch delivered the entry at ``revision`` for ``name``: ``holder``, or None
        for a delete (or a value that is not a holder)."""
        self.position = max(self.position, revision)
        if self._tombstones:
            self._forget_passed_tombstones(name)
        tomb = self._tombstones.get(name)
        if tomb is not None:
            if revision <= tomb:
                if revision == tomb:
                    del self._tombstones[name]
                return  # older than a delete this node already applied
            del self._tombstones[name]
        current = self._holders.get(name)
        if current is not None and current.revision >= revision:
            return  # a write-through got here first
        self._set(name, holder)

    def _forget_passed_tombstones(self, keep: str) -> None:
        """Forget the tombstones the watch has passed (their older values can no longer
        come), except ``keep``'s, which the caller is about to compare."""
        passed = [n for n, r in self._tombstones.items() if r < self.position and n != keep]
        for name in passed:
            del self._tombstones[name]

    # ------------------------------------------------------------ this node's writes

    def wrote(self, name: str, holder: Holder) -> None:
        """JetStream acknowledged this node's write of ``holder`` (at ``holder.revision``)."""
        if holder.revision <= self.position:
            return  # the watch brought it, and anything after it
        current = self._holders.get(name)
        if current is not None and current.revision >= holder.revision:
            return
        self._tombstones.pop(name, None)
        self._set(name, holder)

    def deleted(self, name: str, revision: int) -> None:
        """JetStream acknowledged this node's delete of ``name`` at ``revision``."""
        if revision <= self.position:
            return
        current = self._holders.get(name)
        if current is not None and current.revision >= revision:
            return
        self._tombstones[name] = revision
        self._set(name, None)

    # ------------------------------------------------------------

    def _set(self, name: str, holder: Holder | None) -> None:
        before = self._holders.get(name)
        if before is not None:
            pids = self._by_pid.get(before.pid)
            if pids is not None:
                pids.discard(name)
                if not pids:
                    del self._by_pid[before.pid]
        if holder is None:
            self._holders.pop(name, None)
        else:
            self._holders[name] = holder
            self._by_pid.setdefault(holder.pid, set()).add(name)
        if self._on_change is not None and _pid(before) != _pid(holder):
            try:
                self._on_change(name, before, holder)
            except Exception:  # a listener's bug must not stop the watch that feeds every lookup
                log.exception("cluster names: on_change for %r failed", name)


def _pid(holder: Holder | None) -> str | None:
    return None if holder is None else holder.pid
