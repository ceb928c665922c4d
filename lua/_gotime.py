"""Go's reference-time layouts ("2006-01-02T15:04:05Z07:00") for the Lua ``time`` module."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Longest first, as Go's layout scanner prefers them.
_TOKENS = [
    "January", "Monday", "2006", "-07:00:00", "-0700", "-07:00", "Z07:00:00", "Z0700", "Z07:00", "-07", "Z07",
    "Jan", "Mon", "MST", "002", "__2", "_2", "15", "01", "02", "03", "04", "05", "06", "PM", "pm",
    "1", "2", "3", "4", "5",
]
_FRACTION = re.compile(r"[.,](0+|9+)")
_TOKEN_RE = re.compile("|".join(re.escape(t) for t in _TOKENS))


def zone(name: str) -> tzinfo:
    """``UTC``, ``Local``, an IANA name, or ``fixed:NAME:OFFSET`` (seconds east of UTC).

    Raises:
        KeyError: an unknown zone.
    """
    if name == "UTC":
        return timezone.utc
    if name == "Local":
        local = datetime.now().astimezone().tzinfo
        assert local is not None
        return local
    if name.startswith("fixed:"):
        _, label, offset = name.split(":", 2)
        return timezone(timedelta(seconds=int(offset)), label)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise KeyError(f"unknown time zone {name!r}") from err


def to_datetime(ns: int, zone_name: str) -> datetime:
    return (EPOCH + timedelta(microseconds=ns // 1000)).astimezone(zone(zone_name))


def to_ns(moment: datetime, nanos: int | None = None) -> int:
    delta = moment - EPOCH
    base = (delta.days * 86400 + delta.seconds) * 10**9
    return base + (nanos if nanos is not None else delta.microseconds * 1000)


def _pieces(layout: str) -> list[tuple[str, str]]:
    """Split a layout into ("lit", text), ("tok", token) and ("frac", ".000") pieces."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(layout):
        frac = _FRACTION.match(layout, pos)
        if frac and not layout[frac.end():frac.end() + 1].isdigit():
            out.append(("frac", frac.group(0)))
            pos = frac.end()
            continue
        tok = _TOKEN_RE.match(layout, pos)
        if tok:
            out.append(("tok", tok.group(0)))
            pos = tok.end()
            continue
        out.append(("lit", layout[pos]))
        pos += 1
    return out


def _offset(moment: datetime, token: str) -> str:
    off = moment.utcoffset() or timedelta(0)
    if token.startswith("Z") and off == timedelta(0):
        return "Z"
    total = int(off.total_seconds())
    sign = "-" if total < 0 else "+"
    total = abs(total)
    hh, mm, ss = total // 3600, total % 3600 // 60, total % 60
    core = token.lstrip("Z-")
    if core == "07":
        return f"{sign}{hh:02d}"
    if core == "0700":
        return f"{sign}{hh:02d}{mm:02d}"
    if core == "07:00":
        return f"{sign}{hh:02d}:{mm:02d}"
    return f"{sign}{hh:02d}:{mm:02d}:{ss:02d}"


def format_time(ns: int, zone_name: str, layout: str) -> str:
    moment = to_datetime(ns, zone_name)
    nanos = ns % 10**9
    out = []
    for kind, text in _pieces(layout):
        if kind == "lit":
            out.append(text)
        elif kind == "frac":
            digits = f"{nanos:09d}"[: len(text) - 1]
            out.append(text[0] + digits if text[1] == "0" else (text[0] + digits.rstrip("0") if digits.rstrip("0") else ""))
        else:
            out.append(_format_token(moment, text))
    return "".join(out)


def _format_token(m: datetime, t: str) -> str:
    hour12 = m.hour % 12 or 12
    table = {
        "2006": f"{m.year:04d}", "06": f"{m.year % 100:02d}", "January": m.strftime("%B"), "Jan": m.strftime("%b"),
        "01": f"{m.month:02d}", "1": str(m.month), "Monday": m.strftime("%A"), "Mon": m.strftime("%a"),
        "02": f"{m.day:02d}", "2": str(m.day), "_2": f"{m.day:>2}", "002": f"{m.timetuple().tm_yday:03d}",
        "__2": f"{m.timetuple().tm_yday:>3}", "15": f"{m.hour:02d}", "03": f"{hour12:02d}", "3": str(hour12),
        "04": f"{m.minute:02d}", "4": str(m.minute), "05": f"{m.second:02d}", "5": str(m.second),
        "PM": "PM" if m.hour >= 12 else "AM", "pm": "pm" if m.hour >= 12 else "am",
        "MST": m.tzname() or "",
    }
    if t in table:
        return table[t]
    return _offset(m, t)


_PARSE_PATTERNS = {
    "2006": r"(?P<year>\d{4})", "06": r"(?P<year2>\d{2})", "January": r"(?P<monthname>[A-Za-z]+)",
    "Jan": r"(?P<monabbr>[A-Za-z]{3})", "01": r"(?P<month>\d{2})", "1": r"(?P<month>\d{1,2})",
    "Monday": r"[A-Za-z]+", "Mon": r"[A-Za-z]{3}", "02": r"(?P<day>\d{2})", "2": r"(?P<day>\d{1,2})",
    "_2": r" ?(?P<day>\d{1,2})", "002": r"(?P<yday>\d{3})", "__2": r" *(?P<yday>\d{1,3})",
    "15": r"(?P<hour>\d{2})", "03": r"(?P<hour12>\d{2})", "3": r"(?P<hour12>\d{1,2})",
    "04": r"(?P<minute>\d{2})", "4": r"(?P<minute>\d{1,2})", "05": r"(?P<second>\d{2})", "5": r"(?P<second>\d{1,2})",
    "PM": r"(?P<ampm>AM|PM)", "pm": r"(?P<ampm>am|pm)", "MST": r"(?P<abbr>[A-Z]{3,5}|[+-]\d+)",
    "-07": r"(?P<off>[+-]\d{2})", "-0700": r"(?P<off>[+-]\d{4})", "-07:00": r"(?P<off>[+-]\d{2}:\d{2})",
    "-07:00:00": r"(?P<off>[+-]\d{2}:\d{2}:\d{2})", "Z07": r"(?P<off>Z|[+-]\d{2})", "Z0700": r"(?P<off>Z|[+-]\d{4})",
    "Z07:00": r"(?P<off>Z|[+-]\d{2}:\d{2})", "Z07:00:00": r"(?P<off>Z|[+-]\d{2}:\d{2}:\d{2})",
}


def parse_time(layout: str, value: str, default_zone: str) -> tuple[int, str]:
    """Parse ``value`` with a Go layout; returns (ns since epoch, zone name).

    Raises:
        ValueError: ``value`` does not match ``layout``.
    """
    pattern = ""
    used: set[str] = set()
    for kind, text in _pieces(layout):
        if kind == "lit":
            pattern += re.escape(text)
        elif kind == "frac":
            pattern += r"(?:[.,](?P<frac>\d+))" + ("?" if text[1] == "9" else "")
        else:
            piece = _PARSE_PATTERNS[text]
            name = re.search(r"\?P<(\w+)>", piece)
            if name and name.group(1) in used:
                piece = piece.replace(f"?P<{name.group(1)}>", "?:")
            elif name:
                used.add(name.group(1))
            pattern += piece
    # A fractional second may follow seconds even when the layout does not show it (Go does the same).
    if "frac" not in used and "(?P<second>" in pattern:
        pattern = pattern.replace(r"(?P<second>\d{2})", r"(?P<second>\d{2})(?:[.,](?P<frac>\d+))?", 1)
    match = re.fullmatch(pattern, value)
    if match is None:
        raise ValueError(f'parsing time "{value}" as "{layout}": cannot parse')
    g = match.groupdict()
    year = int(g["year"]) if g.get("year") else (2000 + int(g["year2"]) if g.get("year2") else 0)
    month = int(g["month"]) if g.get("month") else 1
    for key, fmt in (("monthname", "%B"), ("monabbr", "%b")):
        if g.get(key):
            month = datetime.strptime(g[key], fmt).month
    day = int(g["day"]) if g.get("day") else 1
    hour = int(g["hour"]) if g.get("hour") else 0
    if g.get("hour12"):
        hour = int(g["hour12"]) % 12 + (12 if (g.get("ampm") or "").upper() == "PM" else 0)
    minute, second = int(g.get("minute") or 0), int(g.get("second") or 0)
    nanos = int((g.get("frac") or "0").ljust(9, "0")[:9])
    zone_name = default_zone
    tz: tzinfo = zone(default_zone)
    off = g.get("off")
    if off:
        if off == "Z":
            tz, zone_name = timezone.utc, "UTC"
        else:
            sign = -1 if off[0] == "-" else 1
            digits = off[1:].replace(":", "").ljust(6, "0")
            seconds = sign * (int(digits[0:2]) * 3600 + int(digits[2:4]) * 60 + int(digits[4:6]))
            zone_name = "UTC" if seconds == 0 else f"fixed::{seconds}"
            tz = zone(zone_name)
    moment = datetime(max(year, 1), month, day, hour, minute, second, tzinfo=tz)
    if g.get("yday"):
        moment = moment.replace(month=1, day=1) + timedelta(days=int(g["yday"]) - 1)
    return to_ns(moment.replace(microsecond=0)) + nanos, zone_name
