"""Bodies on the wire: msgpack inside the cluster, JSON (or plain text) from outside.

Error objects survive the trip as a msgpack extension (and as ``{"error": {...}}`` in
JSON replies); PIDs are strings and need nothing.

Encoding: one encoder for errors (:func:`error_fields`) serves every path that puts
an error on the wire (EXIT and LINK_DOWN events, function and control replies, status
replies, workflow failures). It handles errors nested in details, in lists, in maps,
and bounds the nesting it writes: what would nest past :data:`WRITE_DEPTH` levels is
dropped (a marker string says so), so what it writes always decodes.

Decoding (:func:`unpack`) is the one gate for bodies from outside, with the limits of
:data:`LIMITS`, checked before or while decoding, never after recursing:

* size: a body over ``max_bytes`` is refused unread; msgpack strings, bins and
  extensions are bounded by it, arrays and maps by ``max_values``;
* depth: JSON is scanned for bracket depth first (``lua.json_depth_exceeds``); msgpack nesting is
  bounded by the number of container bytes in the body, and only a body with more of
  them than ``max_depth``, or with an extension, is walked (iteratively) after decoding
  (msgpack's decoder is C with its own stack limit; only error extensions recurse
  through Python, counted). Measured (interleaved, this machine): +0.4 us on a 24-byte
  request, +140 us on a 4.4 KB body of 600 containers (the walk), +0.3 us on small JSON,
  +1.5 ms on 52 KB of JSON holding 12,000 brackets (the scan);
* types: the only msgpack extension is the error (:data:`ERROR_EXT`), checked field by
  field; any other extension, msgpack's timestamp included, is Invalid.

Every failure is a ``MoonwireError`` (Invalid) naming the reason; nothing else escapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgpack

from moonwire.broker import CONTENT_TYPE, MSGPACK, Headers
from moonwire.lua import MAX_DEPTH, MAX_VALUES, WIRE_DEPTH, MoonwireError, invalid, json_depth_exceeds

JSON = "application/json"
JSON_HEADERS = Headers({CONTENT_TYPE: JSON})
ERROR_EXT = 1
"""The one msgpack extension type moonwire defines: an error, its fields a msgpack map."""
WRITE_DEPTH = WIRE_DEPTH - 8
"""How deep the encoder nests an error's details (room left for the envelope around it).
A chain of linked processes nests two levels per link (``{from, error}``)."""
ERROR_VALUES = 10_000
"""How many values the encoder writes into one error's details, nested errors included:
an error explains, it does not carry data (and a chain of them must stay small)."""
_ELIDED = "(nested deeper than the wire allows: dropped)"


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """The limits every decoder of a body from the wire applies."""

    max_bytes: int = 8 * 1024 * 1024
    """Largest body decoded at all (the inbox keeps its own, smaller, configured limit).
    Above NATS's default max_payload (1 MiB) and Temporal's payload limit (2 MiB)."""
    max_depth: int = WIRE_DEPTH
    max_values: int = MAX_VALUES


LIMITS = DecodeLimits()


# ---------------------------------------------------------------- encoding


def error_fields(error: MoonwireError, wrap: Any, depth: int = MAX_DEPTH,
                 budget: list[int] | None = None) -> dict[str, Any]:
    """The wire fields of ``error``: errors nested in its details (in lists, in maps, in
    other errors' details) become ``wrap(fields)``, a msgpack extension or, for JSON, the
    map itself. ``depth`` is how deep ``error`` may already sit (by default as deep as a
    Lua value may nest); what would nest past WRITE_DEPTH, or come after ERROR_VALUES values
    (details that share parts could otherwise expand without bound), is dropped with a
    marker saying so, so the result always decodes within the limits."""
    fields: dict[str, Any] = {"message": error.message, "kind": error.kind}
    if error.retryable is not None:
        fields["retryable"] = error.retryable
    if error.details is not None:
        budget = [ERROR_VALUES] if budget is None else budget
        fields["details"] = _nested(error.details, wrap, depth + 1, budget) if depth < WRITE_DEPTH else _ELIDED
    return fields


def _nested(value: Any, wrap: Any, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if isinstance(value, MoonwireError):
        if budget[0] < 0:
            return _ELIDED
        return wrap(error_fields(value, wrap, depth, budget))
    if isinstance(value, (list, tuple, dict)) and (depth >= WRITE_DEPTH or budget[0] < 0):
        return _ELIDED
    if isinstance(value, (list, tuple)):
        return [_nested(v, wrap, depth + 1, budget) for v in value]
    if isinstance(value, dict):
        return {k: _nested(v, wrap, depth + 1, budget) for k, v in value.items()}
    return value


def error_map(error: MoonwireError) -> dict[str, Any]:
    """``error``'s fields as a plain map, errors nested in its details as the extension
    (the top-level error of a msgpack reply, ``_replies.py``)."""
    return error_fields(error, _error_ext)


def _error_ext(fields: dict[str, Any]) -> msgpack.ExtType:
    return msgpack.ExtType(ERROR_EXT, msgpack.packb(fields, default=_default, use_bin_type=True))


def _default(value: Any) -> Any:
    if isinstance(value, MoonwireError):
        return _error_ext(error_fields(value, _error_ext))  # nested anywhere: assume Lua's deepest
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def pack(value: Any) -> bytes:
    """``value`` as msgpack; errors anywhere in it as the error extension.

    Raises:
        TypeError: a value msgpack cannot hold (a callable, an object).
        ValueError: nesting over msgpack's own limit, an integer over 64 bits.
    """
    return msgpack.packb(value, default=_default, use_bin_type=True)



def to_json(value: Any) -> bytes:
    """``value`` as JSON (errors as their fields, bytes as text).

    Raises:
        TypeError: a value JSON cannot hold. ValueError: nesting JSON refuses.
    """
    def default(v: Any) -> Any:
        if isinstance(v, MoonwireError):
            return error_fields(v, _same)
        if isinstance(v, bytes):
            return v.decode("utf-8", errors="replace")
        raise TypeError(f"cannot encode {type(v).__name__} as JSON")

    return json.dumps(value, default=default, ensure_ascii=False).encode()


def _same(fields: dict[str, Any]) -> dict[str, Any]:
    return fields


# ---------------------------------------------------------------- decoding

# Every byte that can start a msgpack container or extension. A body with fewer of them
# than the depth limit cannot nest deeper (each level needs its own header byte, and an
# error extension's fields are bytes of the same body).
_STRUCTURE = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF, 0xC7, 0xC8, 0xC9, *range(0xD4, 0xD9)])
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)
_NOT_EXT = bytes(b for b in range(256) if b not in (0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8))


def unpack(body: bytes, content_type: str | None, limits: DecodeLimits = LIMITS) -> Any:
    """Decode a body by its content type: msgpack, else JSON, else the text itself.

    Raises:
        MoonwireError: (Invalid) a body over the limits, a msgpack body that does not
            decode, an extension value that is not a well-formed error, or JSON nested
            too deep; each naming the reason.
    """
    if len(body) > limits.max_bytes:
        raise invalid(f"body of {len(body)} bytes is over the limit of {limits.max_bytes}")
    if content_type == MSGPACK:
        return unpack_msgpack(body, limits)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise invalid(f"body is neither msgpack (no {CONTENT_TYPE}: {MSGPACK} header) nor UTF-8 text") from err
    if not text.strip():
        return None
    if json_depth_exceeds(body, limits.max_depth):
        raise invalid(f"JSON nested deeper than {limits.max_depth} levels")
    try:
        return json.loads(text)
    except ValueError:
        return text


def unpack_msgpack(body: bytes, limits: DecodeLimits = LIMITS) -> Any:
    """A msgpack body (see :func:`unpack` for what is checked).

    Raises:
        MoonwireError: (Invalid) naming the reason.
    """
    # The fast path: so few container bytes that nothing in it can nest deep, and no
    # extension header byte (an error, or msgpack's own timestamp, which msgpack decodes
    # without asking ext_hook) anywhere. msgpack bounds every length by the body's own.
    structure = body.translate(None, _NOT_STRUCTURE) if len(body) > limits.max_depth else body
    if len(structure) <= limits.max_depth and not structure.translate(None, _NOT_EXT):
        return _unpackb_fast(body)
    nesting = [0]  # error extensions inside each other, while decoding

    def ext_hook(code: int, data: bytes) -> MoonwireError:
        if code != ERROR_EXT:
            raise _unknown_ext(code)
        if nesting[0] >= MAX_DEPTH:
            raise invalid(f"errors nested deeper than {MAX_DEPTH} levels")
        nesting[0] += 1
        try:
            return error_from_fields(_unpackb(data, ext_hook, limits))
        finally:
            nesting[0] -= 1

    value = _unpackb(body, ext_hook, limits)
    check_decoded(value, limits)
    return value


def _unpackb_fast(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError, OverflowError) as err:
        raise invalid(f"malformed msgpack body: {type(err).__name__}: {err}") from None


def _unpackb(data: bytes, ext_hook: Any, limits: DecodeLimits) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, ext_hook=ext_hook, strict_map_key=False,
                               max_str_len=limits.max_bytes, max_bin_len=limits.max_bytes,
                               max_ext_len=limits.max_bytes, max_array_len=limits.max_values,
                               max_map_len=limits.max_values)
    except MoonwireError:
        raise
    except (ValueError, msgpack.UnpackException, TypeError, OverflowError) as err:
        raise invalid(f"malformed msgpack body: {type(err).__name__}: {err}") from None


def _unknown_ext(code: int) -> MoonwireError:
    return invalid(f"msgpack extension type {code} is not one moonwire defines (only {ERROR_EXT}, an error)")


def error_from_fields(fields: Any) -> MoonwireError:
    """An error from its wire fields (the error extension's map, checked).

    Raises:
        MoonwireError: (Invalid) fields that are not an error's.
    """
    if not isinstance(fields, dict):
        raise invalid(f"an error extension value must hold a map, not {type(fields).__name__}")
    message, kind, retryable = fields.get("message", ""), fields.get("kind", ""), fields.get("retryable")
    if not isinstance(message, str) or not isinstance(kind, str) or not (retryable is None or
                                                                          isinstance(retryable, bool)):
        raise invalid("an error extension value needs a string message and kind and a boolean retryable")
    return MoonwireError(message, kind, retryable=retryable, details=fields.get("details"))


def check_decoded(value: Any, limits: DecodeLimits = LIMITS) -> None:
    """Walk a decoded value without recursing: at most ``max_depth`` deep (an error's
    details one level below it) and ``max_values`` values, and only plain data.
    Containers are queued, scalars checked in place (most of a body is scalars).

    Raises:
        MoonwireError: (Invalid) naming what is wrong.
    """
    budget, max_depth = limits.max_values, limits.max_depth
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        cls = item.__class__
        if cls is list:
            children: Any = item
        elif cls is dict:
            children = item.values()
        elif cls is MoonwireError:
            children = (item.details,)
        elif item is None or cls in _WIRE_SCALARS:
            continue
        else:
            raise invalid(f"a {cls.__name__} value cannot come from the wire")
        if depth >= max_depth:
            raise invalid(f"body nested deeper than {max_depth} levels")
        budget -= len(children)
        if budget < 0:
            raise invalid(f"body holds more than {limits.max_values} values")
        for child in children:
            kind = child.__class__
            if kind is list or kind is dict or kind is MoonwireError:
                stack.append((child, depth + 1))
            elif child is not None and kind not in _WIRE_SCALARS:
                raise invalid(f"a {kind.__name__} value cannot come from the wire")


_WIRE_SCALARS = frozenset({bool, int, float, str, bytes})
