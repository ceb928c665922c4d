"""The Python functions behind the Lua modules of one state (json, uuid, time, logging,
context, channels, timers, futures). Trusted Lua code holds them as upvalues only.

Every function here takes and returns Lua-ready values: bytes, numbers, booleans, None,
Lua tables, or Python handle objects that Lua keeps in private weak maps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import _gotime
from ._channel import Channel
from ._duration import format_duration, parse_duration
from ._errors import MoonwireError
from ._values import decode_string, loads_json, to_lua, to_python

if TYPE_CHECKING:
    from ._protocols import LuaRuntime


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class _UuidV7:
    """RFC 9562 version 7: 48-bit Unix milliseconds, then a counter for order within one ms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def __call__(self) -> uuid.UUID:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                ms = self._last_ms
                self._counter += 1
                if self._counter > 0xFFF:
                    ms += 1
                    self._counter = 0
            else:
                self._counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
            self._last_ms = ms
            counter = self._counter
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
        return uuid.UUID(int=value)


uuid7 = _UuidV7()


def replayable_uuid(version: str, now_ns: int, source: random.Random) -> uuid.UUID:
    """A v1, v4 or v7 UUID whose every bit comes from ``now_ns`` and ``source`` (a
    workflow's clock and seeded random source), so a replay makes the same one."""
    bits = source.getrandbits(128)
    if version == "v7":
        rand_a, rand_b = (bits >> 64) & 0xFFF, bits & ((1 << 62) - 1)
        return uuid.UUID(int=((now_ns // 1_000_000) << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b)
    if version == "v1":
        ticks = now_ns // 100 + 0x01B21DD213814000  # 100 ns since 1582-10-15
        return uuid.UUID(fields=(ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF, (ticks >> 48) & 0x0FFF,
                                 (bits >> 56) & 0xFF, (bits >> 48) & 0xFF, (bits & 0xFFFFFFFFFFFF) | (1 << 40)),
                         version=1)
    return uuid.UUID(int=bits, version=4)
_UUID_NAMESPACES = {"dns": uuid.NAMESPACE_DNS, "url": uuid.NAMESPACE_URL, "oid": uuid.NAMESPACE_OID,
                    "x500": uuid.NAMESPACE_X500}


def _jsonable(value: Any, path: str = "$") -> Any:
    """Check what JSON cannot say (mixed keys, sparse arrays) and map NaN/Inf to null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, MoonwireError):
        return value.to_dict()
    if isinstance(value, bytes):
        raise ValueError(f"{path}: string is not valid UTF-8")
    if isinstance(value, list):
        return [_jsonable(v, f"{path}[{i + 1}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        kinds = {type(k) for k in value}
        if kinds - {str}:
            raise ValueError(f"{path}: table mixes keys or is a sparse array; JSON needs an array 1..n or string keys")
        return {k: _jsonable(v, f"{path}.{k}") for k, v in value.items()}
    return value


class HostFunctions:
    def __init__(self, state: LuaRuntime) -> None:
        self.state = state
        self.logger = logging.getLogger("moonwire.lua")

    def table(self) -> Any:
        names = [
            "chan_new", "chan_close", "chan_poll", "format_duration", "parse_duration", "now_ns", "time_add_date",
            "time_format", "time_field", "time_date", "time_parse", "check_zone", "fixed_zone", "log",
            "json_encode", "json_decode", "uuid_new", "uuid_named", "uuid_validate", "uuid_info",
            "ctx_get", "ctx_all", "timer_stop", "timer_reset", "future_state", "future_cancel",
        ]
        table = {name.encode(): getattr(self, name) for name in names}
        return self.state.table_from(table)

    # ------------------------------------------------------------ channels, timers, futures

    def chan_new(self, size: int) -> Channel:
        return Channel(int(size))

    def chan_close(self, channel: Channel) -> None:
        channel.close()

    def chan_poll(self, channel: Channel) -> tuple[Any, ...]:
        """A receive that completes now: ``(True, value, ok)``, else ``(False,)``."""
        got = channel.try_receive()
        return (False,) if got is None else (True, got[0], got[1])

    def timer_stop(self, timer: Any) -> bool:
        return bool(timer.stop())

    def timer_reset(self, timer: Any, ns: int) -> bool:
        timer.reset(int(ns))
        return True

    def future_state(self, future: Any) -> tuple[Any, ...]:
        state, value, error = future.snapshot()
        return (state.encode(), to_lua(self.state, value) if value is not None else None,
                self.state.make_error(error) if error is not None else None)

    def future_cancel(self, future: Any) -> tuple[Any, ...]:
        return (bool(future.cancel()), None)

    # ------------------------------------------------------------ time

    def now_ns(self) -> int:
        return self.state.clock()

    def format_duration(self, ns: int) -> bytes:
        return format_duration(int(ns)).encode()

    def parse_duration(self, text: bytes) -> tuple[Any, ...]:
        try:
            return (parse_duration(_text(text)),)
        except ValueError as err:
            return (None, str(err).encode())

    def time_format(self, ns: int, zone: bytes, layout: bytes) -> bytes:
        return _gotime.format_time(int(ns), _text(zone), _text(layout)).encode()

    def time_field(self, ns: int, zone: bytes, field: bytes) -> int:
        moment = _gotime.to_datetime(int(ns), _text(zone))
        name = _text(field)
        if name == "nanosecond":
            return int(ns) % 10**9
        if name == "weekday":
            return (moment.weekday() + 1) % 7  # Go: Sunday = 0
        if name == "yearday":
            return moment.timetuple().tm_yday
        return int(getattr(moment, name))

    def time_add_date(self, ns: int, zone: bytes, years: int, months: int, days: int) -> int:
        moment = _gotime.to_datetime(int(ns), _text(zone))
        month_index = moment.month - 1 + int(months)
        year = moment.year + int(years) + month_index // 12
        month = month_index % 12 + 1
        # Go normalises overflowing days (Jan 31 + 1 month = Mar 3); so does this.
        base = moment.replace(year=year, month=month, day=1) + timedelta(days=moment.day - 1 + int(days))
        return _gotime.to_ns(base, int(ns) % 10**9)

    def time_date(self, year: int, month: int, day: int, hour: int, minute: int, second: int, nsec: int,
                  zone: bytes) -> tuple[Any, ...]:
        try:
            tz = _gotime.zone(_text(zone))
            # Normalise like Go: months, days, hours... may overflow into the next unit.
            month_index = int(month) - 1
            moment = datetime(int(year) + month_index // 12, month_index % 12 + 1, 1, tzinfo=tz)
            moment += timedelta(days=int(day) - 1, hours=int(hour), minutes=int(minute), seconds=int(second))
            return (_gotime.to_ns(moment, 0) + int(nsec),)
        except (KeyError, ValueError, OverflowError) as err:
            return (None, str(err).encode())

    def time_parse(self, layout: bytes, value: bytes, zone: bytes) -> tuple[Any, ...]:
        try:
            ns, zone_name = _gotime.parse_time(_text(layout), _text(value), _text(zone))
            return (ns, zone_name.encode())
        except (KeyError, ValueError) as err:
            return (None, str(err).encode())

    def check_zone(self, name: bytes) -> tuple[Any, ...]:
        try:
            _gotime.zone(_text(name))
            return (True,)
        except KeyError as err:
            return (False, str(err.args[0]).encode())

    def fixed_zone(self, name: bytes, offset: int) -> bytes:
        return f"fixed:{_text(name)}:{int(offset)}".encode()

    # ------------------------------------------------------------ logging

    def log(self, level: bytes, name: bytes, message: bytes, fields: Any) -> None:
        py_level = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
                    "error": logging.ERROR}.get(_text(level), logging.INFO)
        if not self.logger.isEnabledFor(py_level):
            return
        unit = self.state.current
        extra: dict[str, Any] = {"unit": unit.label if unit is not None else None}
        if fields is not None:
            try:
                extra["fields"] = to_python(self.state, fields)
            except MoonwireError as err:
                extra["fields"] = f"<{err.message}>"
        logger = self.logger.getChild(_text(name)) if name else self.logger
        text = _text(message)
        if extra.get("fields"):
            text = f"{text} {extra['fields']}"
        logger.log(py_level, "%s%s", f"[{extra['unit']}] " if extra["unit"] else "", text, extra=extra)

    # ------------------------------------------------------------ json

    def json_encode(self, value: Any) -> tuple[Any, ...]:
        try:
            data = _jsonable(to_python(self.state, value))
            return (json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(),)
        except (MoonwireError, ValueError, TypeError) as err:
            return (None, f"json.encode: {err}".encode())

    def json_decode(self, text: bytes) -> tuple[Any, ...]:
        try:
            return (True, to_lua(self.state, loads_json(text)))  # depth-limited before decoding
        except (ValueError, RecursionError) as err:
            return (False, f"json.decode: {err}".encode())
        except MoonwireError as err:
            return (False, f"json.decode: {err.message}".encode())

    # ------------------------------------------------------------ uuid

    def uuid_new(self, version: bytes) -> bytes:
        name = _text(version)
        if self.state.random is not None:  # a workflow: from its clock and seeded source
            return str(replayable_uuid(name, self.state.clock(), self.state.random)).encode()
        value = uuid.uuid1() if name == "v1" else uuid7() if name == "v7" else uuid.uuid4()
        return str(value).encode()

    def uuid_named(self, version: int, namespace: bytes, name: bytes) -> tuple[Any, ...]:
        ns_text = _text(namespace)
        try:
            ns = _UUID_NAMESPACES.get(ns_text.lower()) or uuid.UUID(ns_text)
        except ValueError:
            return (None, self.state.host_error(f"invalid namespace UUID {ns_text!r}".encode(), b"Invalid", False))
        make = uuid.uuid3 if int(version) == 3 else uuid.uuid5
        return (str(make(ns, _text(name))).encode(),)

    def uuid_validate(self, text: bytes) -> bool:
        try:
            uuid.UUID(_text(text))
            return True
        except ValueError:
            return False

    def uuid_info(self, text: bytes, what: bytes) -> tuple[Any, ...]:
        try:
            value = uuid.UUID(_text(text))
        except ValueError:
            return (None, self.state.host_error(f"invalid UUID {_text(text)!r}".encode(), b"Invalid", False))
        kind = _text(what)
        variant = {uuid.RFC_4122: "RFC4122", uuid.RESERVED_NCS: "NCS", uuid.RESERVED_MICROSOFT: "Microsoft",
                   uuid.RESERVED_FUTURE: "Future"}.get(value.variant, "Unknown")
        if kind == "version":
            return (value.version,)
        if kind == "variant":
            return (variant.encode(),)
        if kind == "standard":
            return (str(value).encode(),)
        if kind == "simple":
            return (value.hex.encode(),)
        if kind == "urn":
            return (value.urn.encode(),)
        if kind == "parse":
            info: dict[str, Any] = {"version": value.version, "variant": variant}
            if value.version in (1, 6):
                info["timestamp"] = (value.time - 0x01B21DD213814000) // 10_000_000
                info["node"] = f"{value.node:012x}"
            elif value.version == 7:
                info["timestamp"] = (value.int >> 80) // 1000
            return (to_lua(self.state, info),)
        return (None, self.state.host_error(f"unknown uuid format {kind!r}".encode(), b"Invalid", False))

    # ------------------------------------------------------------ context

    def ctx_get(self, key: bytes) -> tuple[Any, ...]:
        unit = self.state.current
        if unit is None:
            return (None,)
        name = decode_string(key)
        if name not in unit.context:
            return (False,)
        return (True, to_lua(self.state, unit.context[name]))

    def ctx_all(self) -> Any:
        unit = self.state.current
        if unit is None:
            return None
        return to_lua(self.state, dict(unit.context))
