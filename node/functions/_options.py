"""The options of a call (``funcs.new():with_options{...}``) that every kind of function
reads, and the error a call that ran out of time ends with."""

from __future__ import annotations

from typing import Any

from moonwire.lua import SECOND, Kind, MoonwireError, invalid, parse_duration


def millis_or_duration(value: Any, what: str) -> float:
    """Seconds from an option that is a number of milliseconds or a duration string
    (wippy-surface §0: funcs and Temporal options read bare numbers as ms).

    Raises:
        MoonwireError: (Invalid) naming ``what``.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return value / 1000
    if isinstance(value, str):
        try:
            return parse_duration(value) / SECOND
        except ValueError as err:
            raise invalid(f"{what}: {err}") from err
    raise invalid(f"{what} must be a positive number of milliseconds or a duration, got {value!r}")


def timeout_seconds(options: dict[str, Any]) -> float | None:
    """The ``timeout`` option, in seconds.

    Raises:
        MoonwireError: (Invalid) it is neither milliseconds nor a duration.
    """
    value = options.get("timeout") if options else None
    return None if value is None else millis_or_duration(value, "timeout")


def timed_out(target: str, seconds: float) -> MoonwireError:
    """The error of a call to ``target`` that did not end within ``seconds``."""
    return MoonwireError(f"call to {target} timed out after {seconds * 1000:.0f}ms", Kind.TIMEOUT, retryable=True)
