"""Field types shared by the node configuration and the entry models."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic.fields import FieldInfo

from lua import SECOND, parse_duration


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
