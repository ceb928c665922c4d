"""Go-style duration strings ("1h30m", "250ms", "-1.5s"), as Wippy's API and YAML use them.

One parser serves the node's configuration (seconds) and the Lua ``time`` module
(nanosecond integers), so both accept exactly the same spellings: Go's
``time.ParseDuration``, whose error messages :func:`parse_go_duration` keeps.
"""

from __future__ import annotations

import re

NANOSECOND = 1
MICROSECOND = 1_000
MILLISECOND = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

MAX_DURATION = 2**63 - 1
"""Go's ``time.Duration`` is an int64 of nanoseconds."""

_UNITS: dict[str, int] = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "µs": MICROSECOND,  # U+00B5, as Go prints it
    "μs": MICROSECOND,  # U+03BC, as people type it
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_SEGMENT = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
"""A duration's segment: whole digits, fraction digits, unit (each may be empty)."""


def go_quote(text: str) -> str:
    """``text`` in double quotes, as Go's error messages quote input."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_go_duration(text: str) -> int:
    """Parse a Go duration string into integer nanoseconds, exactly as Go's
    ``time.ParseDuration`` does (no surrounding spaces; a bare ``0`` needs no unit).

    Raises:
        ValueError: ``text`` is not a Go duration; the message is Go's
            (``time: invalid duration "soon"``, ``time: missing unit in duration "5"``,
            ``time: unknown unit "d" in duration "1d"``).
    """
    invalid = ValueError("time: invalid duration " + go_quote(text))
    s = text
    negative = False
    if s and s[0] in "+-":
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    # One match per "<number><unit>" from a position: linear in the text (slicing the
    # rest after each unit was quadratic: 1 MB of "1h" took 12 s).
    total = 0
    pos, n = 0, len(s)
    while pos < n:
        m = _SEGMENT.match(s, pos)
        assert m is not None  # every group may be empty
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and frac is None:
            raise invalid
        frac = frac or ""
        if not whole and not frac:
            raise invalid
        if not unit:
            raise ValueError("time: missing unit in duration " + go_quote(text))
        scale = _UNITS.get(unit)
        if scale is None:
            raise ValueError("time: unknown unit " + go_quote(unit) + " in duration " + go_quote(text))
        whole = whole.lstrip("0")
        if len(whole) > 19:  # past int64 whatever the unit (Go's leadingInt overflows)
            raise invalid
        total += int(whole or 0) * scale
        if frac:
            frac = frac[:19]  # Go stops adding digits once they no longer count
            total += int(frac) * scale // 10 ** len(frac)
        if total > MAX_DURATION + (1 if negative else 0):
            raise invalid
        pos = m.end()
    return -total if negative else total


def parse_duration(text: str) -> int:
    """Parse a Go duration string (surrounding spaces allowed) into integer nanoseconds,
    for configuration files.

    Raises:
        ValueError: ``text`` is not a Go duration; the message quotes it.
    """
    try:
        return parse_go_duration(text.strip())
    except ValueError as err:
        raise ValueError(
            f"invalid duration {text!r}: expected a number followed by a unit "
            "(ns, us, ms, s, m, h), e.g. '1h30m' or '250ms'"
        ) from err


def format_duration(nanoseconds: int) -> str:
    """Format nanoseconds the way Go's ``time.Duration.String`` does (``1h30m0s``,
    ``1.5s``, ``500ms``, ``1µs``, ``0s``)."""
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    n = abs(nanoseconds)
    if n < SECOND:
        for unit, scale in (("ms", MILLISECOND), ("µs", MICROSECOND), ("ns", NANOSECOND)):
            if n >= scale:
                return sign + _decimal(n, scale) + unit
    hours, rest = divmod(n, HOUR)
    minutes, rest = divmod(rest, MINUTE)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + _decimal(rest, SECOND) + "s"


def _decimal(value: int, scale: int) -> str:
    """``value / scale`` in decimal without trailing zeros, computed exactly."""
    whole, frac = divmod(value, scale)
    if not frac:
        return str(whole)
    digits = len(str(scale)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")
