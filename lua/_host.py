"""The Python functions behind the prelude's Lua modules of one state (uuid, logging,
context, channels, futures); ``time`` and ``json``/``payload`` have theirs beside them
(``_time_host.py``, ``_data_host.py``). Trusted Lua code holds them as upvalues only.

Every function here takes and returns Lua-ready values: bytes, numbers, booleans, None,
Lua tables, or Python handle objects that Lua keeps in private weak maps.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from ._channel import Channel
from ._errors import MoonwireError
from ._values import as_text, decode_string, to_lua, to_python

if TYPE_CHECKING:
    from ._protocols import LuaRuntime


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


class HostFunctions:
    def __init__(self, state: LuaRuntime) -> None:
        self.state = state
        self.logger = logging.getLogger("moonwire.lua")

    def table(self) -> Any:
        names = [
            "chan_new", "chan_close", "chan_poll", "log", "uuid_new", "uuid_named", "uuid_validate", "uuid_info",
            "ctx_get", "ctx_all", "future_state", "future_cancel", "box_trace",
        ]
        table = {name.encode(): getattr(self, name) for name in names}
        return self.state.table_from(table)

    # ------------------------------------------------------------ channels, futures

    def chan_new(self, size: int) -> Channel:
        return Channel(int(size))

    def chan_close(self, channel: Channel) -> None:
        channel.close()

    def chan_poll(self, channel: Channel) -> tuple[Any, ...]:
        """A receive that completes now: ``(True, value, ok)``, else ``(False,)``."""
        got = channel.try_receive()
        return (False,) if got is None else (True, got[0], got[1])

    def box_trace(self, trace: bytes | None) -> None:
        """The running process took a message from its box sent in ``trace``: it works in it."""
        unit = self.state.current
        if unit is not None:
            unit.trace = None if trace is None else trace.decode()
            if unit.mailbox is not None:
                unit.mailbox.mirrored(trace)

    def future_state(self, future: Any) -> tuple[Any, ...]:
        state, value, error = future.snapshot()
        return (state.encode(), to_lua(self.state, value) if value is not None else None,
                self.state.make_error(error) if error is not None else None)

    def future_cancel(self, future: Any) -> tuple[Any, ...]:
        return (bool(future.cancel()), None)

    # ------------------------------------------------------------ logging

    def log(self, level: bytes, name: bytes, message: bytes, fields: Any) -> None:
        py_level = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
                    "error": logging.ERROR}.get(as_text(level), logging.INFO)
        if not self.logger.isEnabledFor(py_level):
            return
        unit = self.state.current
        # The unit's entry, PID and trace id (a trace begins here if it has none).
        extra: dict[str, Any] = unit.log_fields() if unit is not None else {}
        if fields is not None:
            try:
                extra["fields"] = to_python(self.state, fields)
            except MoonwireError as err:
                extra["fields"] = f"<{err.message}>"
        logger = self.logger.getChild(as_text(name)) if name else self.logger
        text = as_text(message)
        if extra.get("fields"):
            text = f"{text} {extra['fields']}"
        logger.log(py_level, "%s%s", f"[{extra['entry']}] " if extra.get("entry") else "", text, extra=extra)

    # ------------------------------------------------------------ uuid

    def uuid_new(self, version: bytes) -> bytes:
        name = as_text(version)
        if self.state.random is not None:  # a workflow: from its clock and seeded source
            return str(replayable_uuid(name, self.state.clock(), self.state.random)).encode()
        value = uuid.uuid1() if name == "v1" else uuid7() if name == "v7" else uuid.uuid4()
        return str(value).encode()

    def uuid_named(self, version: int, namespace: bytes, name: bytes) -> tuple[Any, ...]:
        ns_text = as_text(namespace)
        try:
            ns = _UUID_NAMESPACES.get(ns_text.lower()) or uuid.UUID(ns_text)
        except ValueError:
            return (None, self.state.host_error(f"invalid namespace UUID {ns_text!r}".encode(), b"Invalid", False))
        make = uuid.uuid3 if int(version) == 3 else uuid.uuid5
        return (str(make(ns, as_text(name))).encode(),)

    def uuid_validate(self, text: bytes) -> bool:
        try:
            uuid.UUID(as_text(text))
            return True
        except ValueError:
            return False

    def uuid_info(self, text: bytes, what: bytes) -> tuple[Any, ...]:
        try:
            value = uuid.UUID(as_text(text))
        except ValueError:
            return (None, self.state.host_error(f"invalid UUID {as_text(text)!r}".encode(), b"Invalid", False))
        kind = as_text(what)
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
