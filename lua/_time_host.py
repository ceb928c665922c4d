"""The Python functions behind the Lua ``time`` module of one state (``_time.lua``):
Go layouts and durations, zones, calendar arithmetic, timers. Trusted Lua code holds
them as upvalues only; they take and return Lua-ready values (integers, byte strings).

An instant crosses as ``sec, nsec`` (see :mod:`._gotime`) and a location as its key.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import _goparse, _gotime
from ._duration import format_duration, parse_go_duration
from ._values import as_text

if TYPE_CHECKING:
    from ._holdings import Timer
    from ._protocols import LuaRuntime

_MONOTONIC_START = time.monotonic_ns() - 1
"""Go's monotonic readings count from the process start (and are never 0)."""


def _wrap64(sec: int) -> int:
    """``sec`` wrapped into an int64, as Go's ``time.Date`` overflows (Python's integers
    do not: a year of math.maxinteger raised OverflowError crossing into Lua)."""
    return (sec + 2**63) % 2**64 - 2**63


class TimeFunctions:
    def __init__(self, state: LuaRuntime) -> None:
        self.state = state
        # A workflow's clock is its recorded history, with no monotonic reading (Wippy's
        # workflow clock has none either); its state has a seeded random source.
        self.monotonic = state.random is None
        # ...and its Local zone is UTC, named Local: the host's zone would make a replay
        # on a worker in another zone take other branches than the recorded run.
        self.local = _gotime.local() if state.random is None else _gotime.WORKFLOW_LOCAL

    def table(self) -> Any:
        names = [
            "now", "civil", "remainder", "format", "string", "date", "add_date", "parse", "load_location",
            "format_duration", "parse_duration", "timer_stop", "timer_reset",
        ]
        return self.state.table_from({name.encode(): getattr(self, name) for name in names})

    def _location(self, key: bytes) -> _gotime.Location:
        text = as_text(key)
        return self.local if text == "Local" else _gotime.location(text)

    # ------------------------------------------------------------ instants

    def now(self) -> tuple[int, int, int | None]:
        """``sec, nsec, mono``: the state's clock, and outside a workflow a monotonic reading."""
        sec, nsec = divmod(self.state.clock(), 10**9)
        mono = time.monotonic_ns() - _MONOTONIC_START if self.monotonic else None
        return sec, nsec, mono

    def civil(self, sec: int, key: bytes) -> tuple[int, ...]:
        """``year, month, day, hour, minute, second, weekday, year_day`` in the zone."""
        c = _gotime.civil(int(sec), self._location(key))
        return c.year, c.month, c.day, c.hour, c.minute, c.second, c.weekday, c.yday

    def remainder(self, sec: int, nsec: int, d: int) -> int:
        """``(t - zero time) mod d`` in nanoseconds (Go's ``Round``/``Truncate``), for d > 0."""
        return ((int(sec) + _gotime.UNIX_TO_ZERO) * 10**9 + int(nsec)) % int(d)

    def format(self, sec: int, nsec: int, key: bytes, layout: bytes) -> bytes:
        return _gotime.format_time(int(sec), int(nsec), self._location(key), as_text(layout)).encode()

    def string(self, sec: int, nsec: int, key: bytes, mono: int | None) -> bytes:
        loc = self._location(key)
        return _gotime.time_string(int(sec), int(nsec), loc, None if mono is None else int(mono)).encode()

    def date(self, year: int, month: int, day: int, hour: int, minute: int, second: int, nsec: int,
             key: bytes) -> tuple[int, int]:
        sec, nsec = _gotime.date(year, month, day, hour, minute, second, nsec, self._location(key))
        return _wrap64(sec), nsec

    def add_date(self, sec: int, nsec: int, key: bytes, years: int, months: int, days: int) -> tuple[int, int]:
        sec, nsec = _gotime.add_date(int(sec), int(nsec), self._location(key), years, months, days)
        return _wrap64(sec), nsec

    def parse(self, layout: bytes, value: bytes, key: bytes) -> tuple[Any, ...]:
        """``sec, nsec, key, name`` of the parsed time and its location, or ``nil, message``."""
        try:
            sec, nsec, loc = _goparse.parse_time(as_text(layout), as_text(value), self._location(key))
        except _goparse.ParseError as err:
            return (None, str(err).encode())
        return (sec, nsec, loc.key.encode(), loc.name.encode())

    def load_location(self, name: bytes) -> tuple[Any, ...]:
        """``key, name``, or ``nil, message`` for a name not in the zone database."""
        try:
            text = as_text(name)
            loc = self.local if text == "Local" else _gotime.load_location(text)
        except KeyError as err:
            return (None, str(err.args[0]).encode())
        return (loc.key.encode(), loc.name.encode())

    # ------------------------------------------------------------ durations

    def format_duration(self, ns: int) -> bytes:
        return format_duration(int(ns)).encode()

    def parse_duration(self, text: bytes) -> tuple[Any, ...]:
        try:
            return (parse_go_duration(as_text(text)),)
        except ValueError as err:
            return (None, str(err).encode())

    # ------------------------------------------------------------ timers

    def timer_stop(self, timer: Timer) -> bool:
        return timer.stop()

    def timer_reset(self, timer: Timer, ns: int) -> bool:
        return timer.reset(int(ns))
