"""Values crossing between Lua and Python, converted once, strictly.

Lua strings are bytes. The runtime runs with ``encoding=None`` so binary strings survive;
a Lua string becomes ``str`` when it is valid UTF-8 and ``bytes`` otherwise, and every
Python ``str`` is encoded before it reaches Lua (lupa would otherwise hand Lua a Python
object). Tables become lists when their keys are exactly 1..n (an empty table is an
empty list, as ``json.encode`` writes it), else dicts. Error objects become
:class:`MoonwireError`, payloads their data, other opaque userdata (times,
durations...) the text ``tostring`` gives them (Wippy's rule for userdata turned into
host values); functions and threads cannot cross. ``json.encode`` has rules of its own
(:data:`Crossing`).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from collections.abc import Callable
from typing import Any, Literal, Protocol

from ._errors import Kind, MoonwireError

MAX_DEPTH = 128
WIRE_DEPTH = 2 * MAX_DEPTH + 8
"""How deep a body from the wire may nest: a value (MAX_DEPTH) that holds an error whose
details are a value again (MAX_DEPTH), plus the envelopes around it (a request's args,
an event's error). Decoders refuse deeper bodies before anything recurses over them."""
INT_MIN, INT_MAX = -(2 ** 63), 2 ** 63 - 1
"""Lua 5.4 integers; a Python int outside them cannot cross (lupa raises OverflowError)."""


class LuaValues(Protocol):
    """What converting values needs of a state: a :class:`~moonwire.lua.LuaState` is one.

    Described here, not imported, so this module stays below the state (which uses it).
    """

    def lua_type(self, value: Any) -> str: ...

    def table_from(self, value: Any) -> Any: ...

    def error_fields(self, value: Any) -> MoonwireError | None: ...

    def make_error(self, error: MoonwireError) -> Any: ...

    def userdata_parts(self, value: Any) -> tuple[str, Any, Any]:
        """What a userdata is: ``("error", None, None)``, ``("payload", format,
        value)`` or ``("text", its tostring text, None)``."""
        ...

    def payload_data(self, format: str, raw: Any) -> Any:
        """A payload's data held as text or bytes in ``format``, as Python data."""
        ...


Crossing = Literal["host", "json", "native"]
"""How opaque Lua values become Python data:

``host``: error objects become :class:`MoonwireError`, payloads their data, other
userdata their text; functions and threads are refused (messages, call arguments,
results).
``json``: error objects become their text, other userdata and functions ``None``
(wippy-modules §3: ``json.encode`` writes ``null`` for them).
``native``: error objects and other userdata become their text, payloads their data;
functions are refused (payloads transcoded through Wippy's ``golang/any``)."""

_PAYLOAD_AS_LUA = frozenset({"lua/any", "golang/any", "golang/error"})


def decode_string(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def to_python(state: LuaValues, value: Any, crossing: Crossing = "host") -> Any:
    """A Lua value as plain Python data; opaque values as ``crossing`` says.

    Raises:
        MoonwireError: (Invalid) a function or thread (unless ``crossing`` is
            ``json``); nesting deeper than 128 (which is also how a cycle ends); more
            than MAX_VALUES values in all (so a table that shares sub-tables cannot make
            the copy exponential).
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, bytes):
        return decode_string(value)
    return _to_python(state, value, 0, [MAX_VALUES], crossing)


MAX_VALUES = 1_000_000


def _to_python(state: LuaValues, value: Any, depth: int, budget: list[int], crossing: Crossing) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, bytes):
        return decode_string(value)
    if depth >= MAX_DEPTH:
        raise MoonwireError(f"value nested deeper than {MAX_DEPTH} levels (or it contains itself)", Kind.INVALID,
                            retryable=False)
    lua_type = state.lua_type(value)
    if lua_type == "userdata":
        return _userdata(state, value, depth, budget, crossing)
    if lua_type != "table":
        if crossing == "json":
            return None
        raise MoonwireError(f"cannot pass a Lua {lua_type} outside its Lua state", Kind.INVALID, retryable=False)
    items = list(value.items())
    budget[0] -= len(items) + 1
    if budget[0] < 0:
        raise MoonwireError(f"value holds more than {MAX_VALUES} items", Kind.INVALID, retryable=False)
    n = len(items)
    if all(type(k) is int for k, _ in items) and {k for k, _ in items} == set(range(1, n + 1)):
        items.sort(key=lambda kv: kv[0])
        return [_to_python(state, v, depth + 1, budget, crossing) for _, v in items]
    out: dict[Any, Any] = {}
    for k, v in items:
        key = decode_string(k) if isinstance(k, bytes) else k
        if not isinstance(key, (str, int, float, bool)):
            raise MoonwireError("table keys must be strings or numbers", Kind.INVALID, retryable=False)
        out[key] = _to_python(state, v, depth + 1, budget, crossing)
    return out


def _userdata(state: LuaValues, value: Any, depth: int, budget: list[int], crossing: Crossing) -> Any:
    tag, a, b = state.userdata_parts(value)
    if tag == "error":
        error = state.error_fields(value)
        assert error is not None
        return error if crossing == "host" else error.message
    if crossing == "json":
        return None
    if tag == "payload":
        if a in _PAYLOAD_AS_LUA:
            return _to_python(state, b, depth + 1, budget, crossing)
        return state.payload_data(a, b)
    return a


def to_lua(state: LuaValues, value: Any, _depth: int = 0) -> Any:
    """Plain Python data as a Lua value in ``state``.

    Raises:
        MoonwireError: (Invalid) a value Lua cannot hold, or nesting over 128.
    """
    if value is None or isinstance(value, (bool, float, bytes)):
        return value
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return value
        raise _out_of_range(value)
    if isinstance(value, str):
        # surrogatepass: JSON may escape a lone surrogate ("\ud800"); Lua holds the bytes.
        return value.encode("utf-8", "surrogatepass")
    if _depth >= MAX_DEPTH:
        raise MoonwireError(f"value nested deeper than {MAX_DEPTH} levels", Kind.INVALID, retryable=False)
    if isinstance(value, MoonwireError):
        return state.make_error(value)
    if isinstance(value, (list, tuple)):
        return state.table_from([to_lua(state, v, _depth + 1) for v in value])
    if isinstance(value, dict):
        return state.table_from({to_lua(state, k, _depth + 1): to_lua(state, v, _depth + 1) for k, v in value.items()})
    if isinstance(value, Callable):  # type: ignore[arg-type]
        raise MoonwireError("cannot hand a Python callable to Lua", Kind.INVALID, retryable=False)
    raise MoonwireError(f"cannot convert {type(value).__name__} to a Lua value", Kind.INVALID, retryable=False)


_SCALARS = frozenset({bool, int, float, str, bytes})


def _out_of_range(value: int) -> MoonwireError:
    return MoonwireError(f"integer {str(value)[:40]} is outside Lua's 64-bit integer range", Kind.INVALID,
                         retryable=False)


def check_portable(value: Any) -> None:
    """Check that ``value`` (decoded from the wire) is data a Lua state can hold:
    None, booleans, 64-bit integers, floats, strings, bytes, error objects (whose details
    are checked too), lists and dicts with string or number keys, nested at most
    MAX_DEPTH deep and MAX_VALUES in all.

    Raises:
        MoonwireError: (Invalid) naming what is wrong.
    """
    if value.__class__ is list and len(value) < MAX_VALUES:  # the common case: a few scalars
        for item in value:
            if item is not None and (item.__class__ not in _SCALARS
                                     or item.__class__ is int and not INT_MIN <= item <= INT_MAX):
                break
        else:
            return
    budget = MAX_VALUES
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise MoonwireError(f"value holds more than {MAX_VALUES} items", Kind.INVALID, retryable=False)
        if isinstance(item, int) and not isinstance(item, bool):
            if not INT_MIN <= item <= INT_MAX:
                raise _out_of_range(item)
            continue
        if item is None or isinstance(item, (bool, float, str, bytes)):
            continue
        if isinstance(item, MoonwireError):  # its details become a Lua value too (depth restarts there)
            if item.details is not None:
                stack.append((item.details, 0))
            continue
        if depth >= MAX_DEPTH:
            raise MoonwireError(f"value nested deeper than {MAX_DEPTH} levels", Kind.INVALID, retryable=False)
        if isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, (str, int, float)) or isinstance(k, bool):
                    raise MoonwireError("table keys must be strings or numbers", Kind.INVALID, retryable=False)
                stack.append((v, depth + 1))
        else:
            raise MoonwireError(f"cannot hold a {type(item).__name__} value", Kind.INVALID, retryable=False)


# ---------------------------------------------------------------- JSON with a depth limit

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = {0x5B: 1, 0x7B: 1, 0x5D: -1, 0x7D: -1}.__getitem__


def as_text(value: Any) -> str:
    """A Lua string argument as text (invalid UTF-8 replaced), for names, layouts and messages."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def json_depth_exceeds(text: str | bytes, limit: int) -> bool:
    """Whether JSON ``text`` opens more than ``limit`` arrays or objects inside each other,
    found without recursing (json.loads recurses in C per level and raises RecursionError
    around 1000 levels, whatever the caller's own stack holds).

    Cheap for the common case: text with at most ``limit`` opening brackets cannot nest
    deeper, and is not scanned. Otherwise strings are cut out and the running depth of
    the brackets left is summed in C (a regex, translate, map, accumulate, max): 1.4 ms
    for 52 KB holding 12,000 brackets, about twice json.loads of it.
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return bool(brackets) and max(accumulate(map(_BRACKET_STEP, brackets))) > limit


def loads_json(text: str | bytes, max_depth: int = WIRE_DEPTH) -> Any:
    """JSON text (UTF-8 when bytes) as Python data, refusing deep nesting before decoding.

    Raises:
        MoonwireError: (Invalid) nested deeper than ``max_depth``.
        ValueError: not JSON (UnicodeDecodeError for bytes that are not UTF-8).
    """
    if json_depth_exceeds(text, max_depth):
        raise MoonwireError(f"JSON nested deeper than {max_depth} levels", Kind.INVALID, retryable=False)
    return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
