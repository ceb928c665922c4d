"""The Python functions behind the Lua ``time`` module of one state (``_time.lua``):
Go layouts and durations, zones, calendar arithmetic, timers. Trusted Lua code holds
them as upvalues only; they take and return Lua-ready values.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import _gotime
from ._duration import format_duration, parse_duration
from ._values import as_text

if TYPE_CHECKING:
    from ._protocols import LuaRuntime


class TimeFunctions:
    def __init__(self, state: LuaRuntime) -> None:
        self.state = state

    def table(self) -> Any:
        names = [
            "format_duration", "parse_duration", "now_ns", "time_add_date", "time_format", "time_field",
            "time_date", "time_parse", "check_zone", "fixed_zone", "timer_stop", "timer_reset",
        ]
        return self.state.table_from({name.encode(): getattr(self, name) for name in names})

    def timer_stop(self, timer: Any) -> bool:
        return bool(timer.stop())

    def timer_reset(self, timer: Any, ns: int) -> bool:
        timer.reset(int(ns))
        return True

    # ------------------------------------------------------------ time

    def now_ns(self) -> int:
        return self.state.clock()

    def format_duration(self, ns: int) -> bytes:
        return format_duration(int(ns)).encode()

    def parse_duration(self, text: bytes) -> tuple[Any, ...]:
        try:
            return (parse_duration(as_text(text)),)
        except ValueError as err:
            return (None, str(err).encode())

    def time_format(self, ns: int, zone: bytes, layout: bytes) -> bytes:
        return _gotime.format_time(int(ns), as_text(zone), as_text(layout)).encode()

    def time_field(self, ns: int, zone: bytes, field: bytes) -> int:
        moment = _gotime.to_datetime(int(ns), as_text(zone))
        name = as_text(field)
        if name == "nanosecond":
            return int(ns) % 10**9
        if name == "weekday":
            return (moment.weekday() + 1) % 7  # Go: Sunday = 0
        if name == "yearday":
            return moment.timetuple().tm_yday
        return int(getattr(moment, name))

    def time_add_date(self, ns: int, zone: bytes, years: int, months: int, days: int) -> int:
        moment = _gotime.to_datetime(int(ns), as_text(zone))
        month_index = moment.month - 1 + int(months)
        year = moment.year + int(years) + month_index // 12
        month = month_index % 12 + 1
        # Go normalises overflowing days (Jan 31 + 1 month = Mar 3); so does this.
        base = moment.replace(year=year, month=month, day=1) + timedelta(days=moment.day - 1 + int(days))
        return _gotime.to_ns(base, int(ns) % 10**9)

    def time_date(self, year: int, month: int, day: int, hour: int, minute: int, second: int, nsec: int,
                  zone: bytes) -> tuple[Any, ...]:
        try:
            tz = _gotime.zone(as_text(zone))
            # Normalise like Go: months, days, hours... may overflow into the next unit.
            month_index = int(month) - 1
            moment = datetime(int(year) + month_index // 12, month_index % 12 + 1, 1, tzinfo=tz)
            moment += timedelta(days=int(day) - 1, hours=int(hour), minutes=int(minute), seconds=int(second))
            return (_gotime.to_ns(moment, 0) + int(nsec),)
        except (KeyError, ValueError, OverflowError) as err:
            return (None, str(err).encode())

    def time_parse(self, layout: bytes, value: bytes, zone: bytes) -> tuple[Any, ...]:
        try:
            ns, zone_name = _gotime.parse_time(as_text(layout), as_text(value), as_text(zone))
            return (ns, zone_name.encode())
        except (KeyError, ValueError) as err:
            return (None, str(err).encode())

    def check_zone(self, name: bytes) -> tuple[Any, ...]:
        try:
            _gotime.zone(as_text(name))
            return (True,)
        except KeyError as err:
            return (False, str(err.args[0]).encode())

    def fixed_zone(self, name: bytes, offset: int) -> bytes:
        return f"fixed:{as_text(name)}:{int(offset)}".encode()
