"""Process identifiers (DESIGN §1): ``{node@host|uid}``.

A workflow's PID names no node: ``{@worker|workflow id}`` (DESIGN §7), where ``worker``
is its ``temporal.worker`` entry id and the workflow id may also hold ``:``.

``node`` is the node name (one subject token), ``host`` the id of the process host (or
``funcs`` for a function call that took a PID), ``uid`` unique across restarts of a node
with the same name: the node's boot time in base 36, a dash, a counter. A PID is a plain
string wherever it travels (Lua, JSON, msgpack); :class:`Pid` is the parsed view.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from dataclasses import dataclass

_PID = re.compile(r"^\{([A-Za-z0-9_-]*)@([^|{}]+)\|([A-Za-z0-9_:-]+)\}$")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    out = ""
    while True:
        n, rest = divmod(n, 36)
        out = _DIGITS[rest] + out
        if n == 0:
            return out


@dataclass(frozen=True, slots=True)
class Pid:
    node: str
    host: str
    uid: str

    @property
    def is_workflow(self) -> bool:
        return not self.node

    @property
    def incarnation(self) -> str:
        """The node incarnation that issued it: the boot epoch before the uid's dash."""
        return self.uid.partition("-")[0]

    def __str__(self) -> str:
        return f"{{{self.node}@{self.host}|{self.uid}}}"

    @staticmethod
    def parse(text: str) -> Pid | None:
        """The parsed PID, or None when ``text`` is not one (a name, say)."""
        return _parse(text)


@functools.lru_cache(maxsize=4096)  # a sender sends to the same few PIDs again and again
def _parse(text: str) -> Pid | None:
    match = _PID.match(text)
    return Pid(*match.groups()) if match else None


class PidAllocator:
    """Issues PIDs for one node incarnation: the boot epoch (ms, base 36) keeps uids
    unique across restarts under the same node name."""

    def __init__(self, node: str, boot_ms: int | None = None) -> None:
        self.node = node
        self.epoch = _base36(boot_ms if boot_ms is not None else time.time_ns() // 1_000_000)
        self._counter = itertools.count(1)

    def next(self, host: str) -> str:
        return f"{{{self.node}@{host}|{self.epoch}-{_base36(next(self._counter))}}}"
