"""Values as Temporal payloads: JSON a person can read where JSON holds the value
exactly, msgpack where it does not, decided per payload.

Every value moonwire hands Temporal (a workflow's arguments and result, a signal's
payloads, an activity's arguments and result, a child workflow's, memo values, the
``moonwire`` header of ``_carry.py``) becomes one payload here, passed to the SDK as a
:class:`RawValue` so the SDK's own converter never guesses:

* ``json/plain`` (Temporal's own encoding, which its UI and every SDK decode) when the
  value survives JSON unchanged: ``nil``, booleans, integers (they stay integers),
  finite floats (they stay floats: ``1.0`` is written ``1.0``), valid UTF-8 strings,
  arrays, and tables whose keys are all strings;
* ``binary/msgpack`` otherwise: binary strings, integer or mixed keys, NaN and
  infinities, error objects (the error extension of ``wire``).

A Lua value is never changed by the trip: decoding a payload gives what was encoded.

Reading accepts what earlier moonwire wrote too: ``binary/plain`` (the SDK's encoding of
the ``bytes`` the previous codec produced) holds msgpack, so a history recorded before
this codec replays; ``binary/null`` (an SDK's ``None``) is ``nil``. A payload that does
not decode is a ``MoonwireError`` (Invalid) naming why; nothing here raises anything else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue

from moonwire.lua import WIRE_DEPTH, MoonwireError, invalid, loads_json

from ..wire import MSGPACK as MSGPACK_BODY
from ..wire import pack, unpack

JSON_PLAIN = b"json/plain"
MSGPACK = b"binary/msgpack"
LEGACY = b"binary/plain"
"""What the previous codec wrote (msgpack bytes, which the SDK marks ``binary/plain``)."""
NULL = b"binary/null"
MAX_BYTES = 8 * 1024 * 1024
"""The largest payload decoded (as the wire's bodies; Temporal's own limit is 2 MiB)."""

_JSON_SCALARS = frozenset({str, int, float, bool})


def json_form(value: Any) -> bytes | None:
    """``value`` as compact JSON when JSON holds it exactly, else None.

    JSON would change a table with a non-string key (``json.dumps`` writes ``{1: x}`` as
    ``{"1": x}``), so keys are checked first, without recursing; what ``json.dumps``
    refuses itself (bytes, error objects, NaN, a string that is not UTF-8) ends in None too.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        cls = item.__class__
        if cls is dict:
            for key, child in item.items():
                if key.__class__ is not str:
                    return None
                if child.__class__ is dict or child.__class__ is list:
                    stack.append(child)
        elif cls is list:
            stack.extend(child for child in item if child.__class__ is dict or child.__class__ is list)
        elif item is not None and cls not in _JSON_SCALARS:
            return None
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                          default=_refuse).encode("utf-8")
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError (a lone surrogate) is a ValueError
        return None


def _refuse(value: Any) -> Any:
    raise TypeError(type(value).__name__)


def encode(value: Any) -> RawValue:
    """One payload for ``value``: JSON when it holds the value exactly, else msgpack.

    Raises:
        MoonwireError: (Invalid) a value neither can hold (an object that is not data).
    """
    text = json_form(value)
    if text is not None:
        return RawValue(Payload(metadata={"encoding": JSON_PLAIN}, data=text))
    try:
        return RawValue(Payload(metadata={"encoding": MSGPACK}, data=pack(value)))
    except (TypeError, ValueError, OverflowError) as err:
        raise invalid(f"cannot send this value to Temporal: {err}") from None


def encode_all(values: Sequence[Any]) -> list[RawValue]:
    """One payload per value (see :func:`encode`)."""
    return [encode(value) for value in values]


def decode(payload: Payload | RawValue) -> Any:
    """The value a payload holds (see the module's docstring for the encodings read).

    Raises:
        MoonwireError: (Invalid) an encoding moonwire does not read, or data that does
            not decode (over the wire's size and nesting limits included), naming why.
    """
    if isinstance(payload, RawValue):
        payload = payload.payload
    encoding = payload.metadata.get("encoding", b"")
    data = payload.data
    if len(data) > MAX_BYTES:
        raise invalid(f"payload of {len(data)} bytes is over the limit of {MAX_BYTES}")
    if encoding == JSON_PLAIN:
        try:
            return loads_json(data, WIRE_DEPTH)
        except MoonwireError:
            raise
        except ValueError as err:  # UnicodeDecodeError included
            raise invalid(f"a json/plain payload that is not JSON: {err}") from None
    if encoding in (MSGPACK, LEGACY):
        return unpack(data, MSGPACK_BODY)
    if encoding == NULL:
        return None
    shown = encoding.decode("utf-8", "replace")[:60] if encoding else "none"
    raise invalid(f"a payload in encoding {shown!r}: moonwire reads json/plain and binary/msgpack")


def decode_all(payloads: Sequence[Payload | RawValue]) -> list[Any]:
    """The values of ``payloads`` (see :func:`decode`)."""
    return [decode(payload) for payload in payloads]


def is_legacy(payloads: Sequence[Payload | RawValue]) -> bool:
    """Whether ``payloads`` are the one msgpack map the previous codec wrote for a workflow
    input, a signal or an activity input (a map of its arguments and moonwire's fields,
    where this codec writes one payload per argument and a ``moonwire`` header)."""
    if len(payloads) != 1:
        return False
    only = payloads[0]
    return (only.payload if isinstance(only, RawValue) else only).metadata.get("encoding") == LEGACY
