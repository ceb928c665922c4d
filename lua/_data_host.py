"""The Python functions behind the Lua ``payload`` global and ``json`` module of one
state (``_data.lua``). Trusted Lua code holds them as upvalues only; they take and
return Lua-ready values.

JSON is written as Wippy's Go encoder writes it (wippy-modules §3): compact, HTML-safe,
integral floats without a point, NaN and infinities as ``null``, invalid UTF-8 as
U+FFFD. Decoding reads the first JSON value and names the position of a syntax error.
Payloads transcode along Wippy's graph of formats (§2), cheapest route first.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import math
import re
import threading
import warnings
from collections import OrderedDict
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import jsonschema
import jsonschema._keywords
import jsonschema._legacy_keywords
import jsonschema._utils
import msgpack
import re2
import referencing.exceptions
import yaml
from jsonschema_specifications import REGISTRY as SCHEMA_SPECIFICATIONS

from ._errors import MoonwireError
from ._values import MAX_DEPTH, as_text, check_portable, decode_string, json_depth_exceeds, to_lua, to_python

if TYPE_CHECKING:
    from ._protocols import LuaRuntime

# ---------------------------------------------------------------- JSON as Wippy writes it

_HTML_UNSAFE = re.compile("[<>&\u2028\u2029]")
_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_EXPONENT_FROM = 1e21
"""Go writes floats this large with an exponent, smaller integral ones as integers."""


def _jsonable(value: Any, path: str = "$") -> Any:
    """Python data from ``to_python(..., "json")`` as JSON can say it, or ValueError.

    A table with keys 1..n is already a list. Other keys must all be strings, booleans,
    non-positive integers or non-integral numbers, which Wippy writes as strings; a
    positive integer key among them is a sparse array or mixed keys.
    """
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        if value.is_integer() and abs(value) < _GO_EXPONENT_FROM:
            return int(value)
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, MoonwireError):
        return value.message
    if isinstance(value, list):
        return [_jsonable(v, f"{path}[{i + 1}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, str):
                key = k
            elif isinstance(k, bool):
                key = "true" if k else "false"
            elif isinstance(k, int) and k > 0:
                raise ValueError(f"{path}: table mixes keys or is a sparse array; JSON needs an array 1..n "
                                 "or string keys")
            else:
                key = repr(k) if isinstance(k, float) else str(k)
            out[key] = _jsonable(v, f"{path}.{key}")
        return out
    return value


def _dump_json(data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return _HTML_UNSAFE.sub(lambda m: _HTML_ESCAPES[m.group()], text)


def _encode_lua(state: LuaRuntime, value: Any) -> bytes:
    """``json.encode``'s text for a Lua value (ValueError, MoonwireError: why not)."""
    return _dump_json(_jsonable(to_python(state, value, "json"))).encode("utf-8", "surrogatepass")


_LONG_DIGITS = re.compile(rb"\d{19}")
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def _int_or_float(digits: str) -> int | float:
    number = int(digits)
    return number if _INT64[0] <= number <= _INT64[1] else float(number)


_DECODER = json.JSONDecoder()
_WIDE_DECODER = json.JSONDecoder(parse_int=_int_or_float)


def _decode_first(raw: bytes) -> Any:
    """The first JSON value in ``raw`` (the rest is ignored, as Go's decoder does);
    integers beyond 64 bits become floats.

    Raises:
        MoonwireError: nested deeper than MAX_DEPTH.
        ValueError: not JSON; a json.JSONDecodeError names the line and column.
    """
    if json_depth_exceeds(raw, MAX_DEPTH):
        raise MoonwireError(f"JSON nested deeper than {MAX_DEPTH} levels")
    text = raw.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise json.JSONDecodeError("unexpected end of JSON input", text, start)
    # Only a run of 19 digits can be an integer Lua cannot hold: the plain decoder, all
    # in C, serves everything else.
    decoder = _WIDE_DECODER if _LONG_DIGITS.search(raw) else _DECODER
    return decoder.raw_decode(text, start)[0]


# ---------------------------------------------------------------- payload formats

LUA, GOLANG, ERROR = "lua/any", "golang/any", "golang/error"
JSON, YAML, STRING, BYTES, MSGPACK = "json/plain", "yaml/plain", "text/plain", "application/octet-stream", \
    "application/msgpack"

_EDGES: dict[tuple[str, str], int] = {
    (LUA, JSON): 1, (JSON, LUA): 1, (LUA, STRING): 1, (STRING, LUA): 1, (LUA, BYTES): 1, (BYTES, LUA): 1,
    (LUA, GOLANG): 2, (GOLANG, LUA): 2, (GOLANG, JSON): 1, (JSON, GOLANG): 1,
    (GOLANG, MSGPACK): 1, (MSGPACK, GOLANG): 1, (GOLANG, YAML): 2, (YAML, GOLANG): 2,
}
"""Wippy's transcoders and their weights [R system/payload/transcoder.go]: LUA reaches
MSGPACK and YAML only through GOLANG, and ERROR has no edge at all."""


def _routes() -> dict[tuple[str, str], list[str]]:
    """The cheapest route between every two formats (fewest steps among equals)."""
    nodes = {a for a, _ in _EDGES} | {b for _, b in _EDGES}
    routes: dict[tuple[str, str], list[str]] = {}
    for source in nodes:
        queue: list[tuple[int, int, list[str]]] = [(0, 0, [source])]
        seen: set[str] = set()
        while queue:
            cost, steps, path = heapq.heappop(queue)
            here = path[-1]
            if here in seen:
                continue
            seen.add(here)
            routes[(source, here)] = path
            for (a, b), weight in sorted(_EDGES.items()):
                if a == here and b not in seen:
                    heapq.heappush(queue, (cost + weight, steps + 1, [*path, b]))
    return routes


ROUTES = _routes()


def _go_float(value: float) -> str:
    """A float as Go's ``%v`` prints it: shortest digits, an exponent below 1e-4 or from 1e21."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    if exponent and -4 <= int(exponent) < 21:
        return format(Decimal(text), "f")
    if not exponent and mantissa.endswith(".0"):
        return mantissa[:-2]
    return text


def _go_text(value: Any, top: bool = True) -> str:
    """Data as Go's ``%v`` prints it, which Wippy's LUA→STRING transcoder uses (a table
    prints as a Go map, keys sorted)."""
    if value is None:
        return "" if top else "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, bytes):
        return as_text(value)
    if isinstance(value, list):
        return "[" + " ".join(_go_text(v, False) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(((_go_text(k, False), _go_text(v, False)) for k, v in value.items()))
        return "map[" + " ".join(f"{k}:{v}" for k, v in items) + "]"
    return str(value)


def _native(value: Any) -> Any:
    """Data decoded from YAML as plain data: dates become their ISO text."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, list):
        return [_native(v) for v in value]
    if isinstance(value, dict):
        return {_native(k) if isinstance(k, (datetime, date)) else k: _native(v) for k, v in value.items()}
    return value


def _load_yaml(raw: bytes) -> Any:
    data = _native(yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    check_portable(data)  # aliases share nodes: this bounds the tree they spell out
    return data


def _load_msgpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False, unicode_errors="replace")


def payload_data(format: str, raw: Any) -> Any:
    """A payload's data held as text or bytes in ``format``, as Python data (the
    ``golang/any`` view of it).

    Raises:
        MoonwireError, ValueError: not data in that format.
    """
    if not isinstance(raw, bytes):
        raise ValueError(f"a {format} payload holds a {type(raw).__name__}, not a string")
    if format == JSON:
        return _decode_first(raw)
    if format == MSGPACK:
        return _load_msgpack(raw)
    if format == YAML:
        return _load_yaml(raw)
    if format in (STRING, BYTES):
        return decode_string(raw)
    raise ValueError(f"unknown payload format {format!r}")


def _step(state: LuaRuntime, value: Any, source: str, target: str) -> Any:
    """One edge of the graph. LUA and GOLANG values are Lua values on both ends (GOLANG:
    plain data, as Python sees it); the other formats are Lua strings (bytes)."""
    if source == LUA:
        if target == JSON:
            return _encode_lua(state, value)
        if target in (STRING, BYTES):
            if isinstance(value, bytes):
                return value  # a string passes as it is, binary or not
            return _go_text(to_python(state, value, "native")).encode("utf-8", "surrogatepass")
        return to_python(state, value, "native")  # GOLANG
    if target == LUA:
        if source in (STRING, BYTES):
            return value
        if source == JSON:
            return to_lua(state, _decode_first(value))
        return to_lua(state, value)  # from GOLANG
    if source == GOLANG:
        if target == JSON:
            return _dump_json(_jsonable(value)).encode("utf-8", "surrogatepass")
        if target == MSGPACK:
            return msgpack.packb(value, use_bin_type=True)
        return yaml.safe_dump(value, allow_unicode=True, sort_keys=False).encode()  # YAML
    return payload_data(source, value)  # JSON, MSGPACK, YAML to GOLANG


def transcode(state: LuaRuntime, value: Any, source: str, target: str) -> Any:
    """``value`` (held in format ``source``) in format ``target``, along the cheapest route.

    Raises:
        MoonwireError, ValueError, TypeError: no route, or a step failed.
    """
    route = ROUTES.get((source, target))
    if route is None:
        raise ValueError(f"no transcoder from {source} to {target}")
    # Inside the route a GOLANG value stays Python data; it becomes a Lua value only
    # where a payload holds it.
    if source == GOLANG:
        value = to_python(state, value, "native")
    for here, there in zip(route, route[1:]):
        value = _step(state, value, here, there)
    if target == GOLANG:
        value = to_lua(state, value)
    return value


# ---------------------------------------------------------------- JSON Schema


class _LinearRegex:
    """What jsonschema's keywords use of ``re`` (``search``), by RE2.

    A schema's ``pattern`` and ``patternProperties`` come from user code, and Python's
    backtracking ``re`` can run for hours on one (``(a+)+$``) while it holds the event
    loop, out of reach of any instruction budget. RE2 matches in linear time, and its
    syntax is Go's, which Wippy's validator uses. jsonschema calls ``re.search`` in
    three modules and nowhere else matches: each of them gets this object as its ``re``.
    """

    error = re2.error

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def _compiled(pattern: str) -> Any:
        return re2.compile(pattern)

    def search(self, pattern: str, text: str) -> Any:
        return self._compiled(pattern).search(text)

    def __getattr__(self, name: str) -> Any:  # anything else: as re has it
        return getattr(re, name)


for _module in (jsonschema._keywords, jsonschema._legacy_keywords, jsonschema._utils):
    _module.re = _LinearRegex()  # type: ignore[attr-defined]

class _TooMuchWork(Exception):
    """Validation went past the steps the caller's instruction budget allows."""


_work = threading.local()
"""``used`` and ``limit``: keyword checks made by the validation running in this thread,
and how many the caller's budget allows. A schema's ``$ref``s can fan out, each level
doubling the work (depth 16 took 3.8 s), so the work is counted, not the schema's size."""


def _counted(check: Any) -> Any:
    def counted(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _work.used += 1
        if _work.used > _work.limit:
            raise _TooMuchWork
        return check(validator, value, instance, schema)
    return counted


@functools.lru_cache(maxsize=None)
def _counting(cls: Any) -> Any:
    """``cls`` (a dialect's validator class) with every keyword check counted."""
    return jsonschema.validators.extend(cls, {name: _counted(check) for name, check in cls.VALIDATORS.items()})


_SCHEMA_CACHE_SIZE = 100
_schemas: OrderedDict[bytes, Any] = OrderedDict()
_schemas_lock = threading.Lock()  # workflow states may run in other threads


def _validator(text: str, schema: Any) -> Any:
    """The compiled validator for ``schema`` (whose JSON text is ``text``), from a cache
    of the last 100 by SHA-256 of that text.

    Raises:
        jsonschema.SchemaError: not a valid schema.
    """
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    with _schemas_lock:
        validator = _schemas.get(key)
        if validator is not None:
            _schemas.move_to_end(key)
            return validator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # an unknown $schema: the default dialect
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    # The specifications only: a $ref to anything else is unresolvable, never fetched.
    validator = _counting(cls)(schema, registry=SCHEMA_SPECIFICATIONS)
    with _schemas_lock:
        _schemas[key] = validator
        while len(_schemas) > _SCHEMA_CACHE_SIZE:
            _schemas.popitem(last=False)
    return validator


def _validate(schema: Any, instance: Any) -> str | None:
    """Why ``instance`` fails ``schema`` (a path and the validator's message), or None.

    Raises:
        _TooMuchWork: more keyword checks than ``_work.limit``.
    """
    if not isinstance(schema, (dict, bool)):
        shown = "an array (an empty table encodes as [])" if isinstance(schema, list) else type(schema).__name__
        return f"invalid schema: a schema is an object or a boolean, got {shown}"
    text = _dump_json(schema)
    try:
        validator = _validator(text, schema)
    except jsonschema.SchemaError as err:
        return f"invalid schema: {err.json_path}: {err.message}"
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    except (referencing.exceptions.Unresolvable, jsonschema.exceptions._WrappedReferencingError) as err:
        return f"invalid schema: {err}"
    except re2.error as err:
        return f"invalid schema: a pattern is not an RE2 regular expression: {err}"
    if error is None:
        return None
    return f"{error.json_path}: {error.message}"


# ---------------------------------------------------------------- the host functions


class DataFunctions:
    def __init__(self, state: LuaRuntime) -> None:
        self.state = state

    def table(self) -> Any:
        names = ["json_encode", "json_decode", "json_validate", "transcode"]
        return self.state.table_from({name.encode(): getattr(self, name) for name in names})

    def json_encode(self, value: Any) -> tuple[Any, ...]:
        try:
            return (_encode_lua(self.state, value),)
        except (ValueError, TypeError) as err:
            return (None, str(err).encode())
        except MoonwireError as err:
            return (None, err.message.encode())

    def json_decode(self, text: bytes) -> tuple[Any, ...]:
        try:
            return (True, to_lua(self.state, _decode_first(text)))
        except (ValueError, RecursionError) as err:
            return (False, str(err).encode())
        except MoonwireError as err:
            return (False, err.message.encode())

    def json_validate(self, schema: Any, data: Any, data_is_text: bool, max_steps: float) -> tuple[Any, int]:
        """``reason, steps``: None when ``data`` is valid, else why not (as the error's
        message), and the keyword checks it took; more than ``max_steps`` stops it
        (``max_steps + 1`` checks, which the caller's budget cannot pay)."""
        _work.used, _work.limit = 0, max_steps
        try:
            return (self._json_validate(schema, data, data_is_text), _work.used)
        except _TooMuchWork:
            return (None, _work.used)

    def _json_validate(self, schema: Any, data: Any, data_is_text: bool) -> bytes | None:
        try:
            if isinstance(schema, bytes):
                schema_data = _decode_first(schema)
            else:
                schema_data = _jsonable(to_python(self.state, schema, "json"))
        except (ValueError, RecursionError, MoonwireError) as err:
            return f"invalid schema: {_reason(err)}".encode()
        try:
            instance = _decode_first(data) if data_is_text else _jsonable(to_python(self.state, data, "json"))
        except (ValueError, RecursionError, MoonwireError) as err:
            return f"invalid data: {_reason(err)}".encode()
        reason = _validate(schema_data, instance)
        return None if reason is None else reason.encode()

    def transcode(self, value: Any, source: bytes, target: bytes) -> tuple[Any, ...]:
        try:
            return (True, transcode(self.state, value, as_text(source), as_text(target)))
        except (ValueError, TypeError, RecursionError, yaml.YAMLError) as err:
            return (False, _reason(err).encode())
        except MoonwireError as err:
            return (False, err.message.encode())


def _reason(err: BaseException) -> str:
    return err.message if isinstance(err, MoonwireError) else str(err)

