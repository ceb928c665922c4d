"""Field types shared by the node configuration and the entry models."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic.fields import FieldInfo

from moonwire.lua import SECOND, parse_duration


def _to_seconds(value: Any) -> Any:
    # A bare number is ambiguous in Wippy (ns in `time`, ms in `funcs` options), so
    # configuration asks for a unit. Zero needs none.
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '5s', not a boolean")
    if isinstance(value, (int, float)):
        if value == 0:
            return 0.0
        raise ValueError(f"a duration needs a unit, e.g. '{value}s' or '{value}ms'")
    if isinstance(value, str):
        return parse_duration(value) / SECOND
    return value


_SECONDS = BeforeValidator(_to_seconds)
Seconds = Annotated[float, _SECONDS]
"""A duration written as a Go duration string ("1m30s"), held as float seconds."""


def is_seconds(info: FieldInfo) -> bool:
    """True when a model field is declared as :data:`Seconds`."""
    return _SECONDS in info.metadata


_BYTE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
               "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def _to_bytes(value: Any) -> Any:
    if isinstance(value, str):
        import re

        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if match is None or match.group(2).lower() not in _BYTE_UNITS:
            raise ValueError(f"invalid size {value!r}: use bytes or a unit such as '64MiB' or '512KB'")
        return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])
    return value


ByteSize = Annotated[int, BeforeValidator(_to_bytes)]
"""A size in bytes, written as a number or with a unit ("64MiB", "512KB")."""
