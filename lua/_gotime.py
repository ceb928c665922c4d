"""Go's ``time`` package, as much of it as the Lua ``time`` module shows: calendar
arithmetic (``time.Date``, ``AddDate``), zones (``UTC``, ``Local``, IANA names, fixed
zones) and formatting with reference-time layouts (``"2006-01-02T15:04:05Z07:00"``);
:mod:`._goparse` parses with them.

An instant is a pair of integers: ``sec`` (seconds since the Unix epoch, any size: Go's
zero time, 0001-01-01, and year 0 of a parsed clock time are both reachable) and
``nsec`` (0..999999999). The calendar is computed here, not with :mod:`datetime`, whose
years stop at 1..9999; :mod:`zoneinfo` only answers "which offset and abbreviation at
this instant". Layout scanning follows Go's ``format.go`` step by step.

A location crosses into Lua as a *key* (text): ``UTC``, ``Local``, ``Z:<IANA name>`` or
``F:<offset seconds>:<name>`` (see :func:`location`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


SECONDS_PER_DAY = 86400
UNIX_TO_ZERO = 62135596800
"""Seconds from Go's zero time (0001-01-01T00:00:00Z) to the Unix epoch."""

LONG_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December"]
LONG_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
SHORT_MONTHS = [m[:3] for m in LONG_MONTHS]
SHORT_DAYS = [d[:3] for d in LONG_DAYS]
DAYS_BEFORE = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365]

# The range zoneinfo can be asked about (datetime's years, with a day's margin for offsets).
_LOOKUP_MIN = -UNIX_TO_ZERO + 2 * SECONDS_PER_DAY
_LOOKUP_MAX = 253402300799 - 2 * SECONDS_PER_DAY


# ------------------------------------------------------------------ calendar


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to ``year-month-day`` (proleptic Gregorian, any year)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """``(year, month, day)`` of a day number from :func:`days_from_civil`."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_in(month: int, year: int) -> int:
    if month == 2 and is_leap(year):
        return 29
    return DAYS_BEFORE[month] - DAYS_BEFORE[month - 1]


# ------------------------------------------------------------------ locations


@dataclass(frozen=True, slots=True)
class Location:
    """A Go ``*time.Location``: its ``String()`` name and how to find the offset."""

    key: str
    name: str
    tz: tzinfo | None = None
    """None: a fixed offset (``offset``, abbreviation ``abbr``)."""
    offset: int = 0
    abbr: str = ""

    def lookup(self, sec: int) -> tuple[str, int]:
        """The zone abbreviation and offset (seconds east of UTC) in effect at ``sec``."""
        if self.tz is None:
            return self.abbr, self.offset
        moment = datetime.fromtimestamp(min(max(sec, _LOOKUP_MIN), _LOOKUP_MAX), self.tz)
        offset = moment.utcoffset()
        return moment.tzname() or "", int(offset.total_seconds()) if offset is not None else 0

    def lookup_name(self, name: str, sec: int) -> int | None:
        """The offset of the zone abbreviated ``name`` around ``sec`` (Go's
        ``Location.lookupName``), or None. zoneinfo does not list a zone's periods, so the
        candidates are the zones in effect at ``sec`` and half a year either side (the
        other side of a daylight-saving change)."""
        found: int | None = None
        for probe in (sec, sec - 182 * SECONDS_PER_DAY, sec + 182 * SECONDS_PER_DAY):
            abbr, offset = self.lookup(probe)
            if abbr != name:
                continue
            actual_abbr, actual = self.lookup(sec - offset)
            if actual_abbr == name:
                return actual
            found = offset if found is None else found
        return found


UTC = Location("UTC", "UTC", abbr="UTC")


def _host_zone() -> tzinfo:
    """The host's zone, found as Go finds it: ``$TZ`` (unset: ``/etc/localtime``; empty
    or unknown: UTC)."""
    tz = os.environ.get("TZ")
    try:
        if tz is None:
            with open("/etc/localtime", "rb") as file:
                return ZoneInfo.from_file(file, key="Local")
        name = tz.removeprefix(":")
        if name in ("", "UTC"):
            return timezone.utc
        if name.startswith("/"):
            with open(name, "rb") as file:
                return ZoneInfo.from_file(file, key="Local")
        return ZoneInfo(name)
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return timezone.utc


WORKFLOW_LOCAL = Location("Local", "Local", abbr="UTC")
"""``Local`` in a workflow's state: UTC, so every worker replays the same civil times."""


@functools.lru_cache(maxsize=1)
def local() -> Location:
    """Go's ``time.Local``: named ``Local``, with the host's rules (daylight saving too)."""
    return Location("Local", "Local", tz=_host_zone())


@functools.lru_cache(maxsize=256)
def location(key: str) -> Location:
    """The location a key names (see the module's docstring).

    Raises:
        KeyError: an IANA name not in the zone database.
    """
    if key == "UTC":
        return UTC
    if key == "Local":
        return local()
    if key.startswith("F:"):
        offset, _, name = key[2:].partition(":")
        return Location(key, name, offset=int(offset), abbr=name)
    name = key.removeprefix("Z:")
    return Location("Z:" + name, name, tz=_zoneinfo(name))


def fixed_key(name: str, offset: int) -> str:
    """The key of Go's ``time.FixedZone(name, offset)``."""
    return f"F:{offset}:{name}"


def load_location(name: str) -> Location:
    """Go's ``time.LoadLocation``: ``UTC``, ``Local`` or an IANA name. Wippy refuses ``""``
    before asking Go (which would answer UTC); that check is the caller's.

    Raises:
        KeyError: an unknown name; the message is Go's (``unknown time zone Mars/Base``).
    """
    if name == "UTC":
        return UTC
    if name == "Local":
        return local()
    return location("Z:" + name)


def _zoneinfo(name: str) -> tzinfo:
    # Go refuses names that climb out of the zone directory; zoneinfo raises ValueError.
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, IsADirectoryError, OSError) as err:
        raise KeyError("unknown time zone " + name) from err


# ------------------------------------------------------------------ instants


@dataclass(frozen=True, slots=True)
class Civil:
    """An instant as a wall clock in some zone."""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    weekday: int
    """0 = Sunday."""
    yday: int
    """1..366."""
    offset: int
    abbr: str


def civil(sec: int, loc: Location) -> Civil:
    abbr, offset = loc.lookup(sec)
    days, rest = divmod(sec + offset, SECONDS_PER_DAY)
    year, month, day = civil_from_days(days)
    return Civil(year, month, day, rest // 3600, rest % 3600 // 60, rest % 60, (days + 4) % 7,
                 days - days_from_civil(year, 1, 1) + 1, offset, abbr)


def _norm(hi: int, lo: int, base: int) -> tuple[int, int]:
    carry, lo = divmod(lo, base)
    return hi + carry, lo


def date(year: int, month: int, day: int, hour: int, minute: int, second: int, nsec: int,
         loc: Location) -> tuple[int, int]:
    """Go's ``time.Date``: out-of-range parts carry into the next unit (month 13 is next
    January, day 0 the last of the month before); returns ``(sec, nsec)``."""
    year, m = _norm(year, month - 1, 12)
    second, nsec = _norm(second, nsec, 10**9)
    minute, second = _norm(minute, second, 60)
    hour, minute = _norm(hour, minute, 60)
    day, hour = _norm(day, hour, 24)
    unix = (days_from_civil(year, m + 1, 1) + day - 1) * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second
    # Go looks the offset up at the wall time read as UTC, then again at the instant that
    # offset gives when that instant lies in another period (a daylight-saving change).
    _, offset = loc.lookup(unix)
    if offset != 0:
        _, offset = loc.lookup(unix - offset)
    return unix - offset, nsec


def add_date(sec: int, nsec: int, loc: Location, years: int, months: int, days: int) -> tuple[int, int]:
    """Go's ``Time.AddDate``: the wall clock's parts plus the given ones, normalised."""
    c = civil(sec, loc)
    return date(c.year + years, c.month + months, c.day + days, c.hour, c.minute, c.second, nsec, loc)


# ------------------------------------------------------------------ layouts

# The layout elements of Go's format.go, by the text that names them in a layout.
LONG_MONTH, MONTH, NUM_MONTH, ZERO_MONTH = "January", "Jan", "1", "01"
LONG_WEEKDAY, WEEKDAY = "Monday", "Mon"
DAY, UNDER_DAY, ZERO_DAY, UNDER_YEAR_DAY, ZERO_YEAR_DAY = "2", "_2", "02", "__2", "002"
HOUR, HOUR12, ZERO_HOUR12 = "15", "3", "03"
MINUTE, ZERO_MINUTE, SECOND, ZERO_SECOND = "4", "04", "5", "05"
LONG_YEAR, YEAR = "2006", "06"
PM_UPPER, PM_LOWER = "PM", "pm"
TZ_NAME = "MST"
ISO_TZ = ("Z0700", "Z070000", "Z07", "Z07:00", "Z07:00:00")
NUM_TZ = ("-0700", "-070000", "-07", "-07:00", "-07:00:00")
FRACTION = "frac"  # ".000" / ",999": the element carries its separator, digit and width

_ZERO_X = {"1": ZERO_MONTH, "2": ZERO_DAY, "3": ZERO_HOUR12, "4": ZERO_MINUTE, "5": ZERO_SECOND, "6": YEAR}


@dataclass(frozen=True, slots=True)
class Element:
    """One layout element: ``std`` names it (a constant above); a fraction also has its
    separator, ``"0"`` (fixed width) or ``"9"`` (trailing zeros trimmed) and width."""

    std: str
    text: str
    separator: str = ""
    digit: str = ""
    width: int = 0


def _lower_at(s: str, i: int) -> bool:
    return i < len(s) and "a" <= s[i] <= "z"


def digit_at(s: str, i: int) -> bool:
    return i < len(s) and "0" <= s[i] <= "9"


def next_element(layout: str) -> tuple[str, Element | None, str]:
    """Go's ``nextStdChunk``: ``(literal prefix, element or None, rest of the layout)``."""
    for i, c in enumerate(layout):
        rest = layout[i:]
        if c == "J" and rest.startswith("Jan"):
            if rest.startswith("January"):
                return layout[:i], Element(LONG_MONTH, "January"), rest[7:]
            if not _lower_at(rest, 3):
                return layout[:i], Element(MONTH, "Jan"), rest[3:]
        elif c == "M" and len(rest) >= 3:
            if rest.startswith("Mon"):
                if rest.startswith("Monday"):
                    return layout[:i], Element(LONG_WEEKDAY, "Monday"), rest[6:]
                if not _lower_at(rest, 3):
                    return layout[:i], Element(WEEKDAY, "Mon"), rest[3:]
            if rest.startswith("MST"):
                return layout[:i], Element(TZ_NAME, "MST"), rest[3:]
        elif c == "0":
            if len(rest) >= 2 and "1" <= rest[1] <= "6":
                return layout[:i], Element(_ZERO_X[rest[1]], rest[:2]), rest[2:]
            if rest.startswith("002"):
                return layout[:i], Element(ZERO_YEAR_DAY, "002"), rest[3:]
        elif c == "1":
            if rest.startswith("15"):
                return layout[:i], Element(HOUR, "15"), rest[2:]
            return layout[:i], Element(NUM_MONTH, "1"), rest[1:]
        elif c == "2":
            if rest.startswith("2006"):
                return layout[:i], Element(LONG_YEAR, "2006"), rest[4:]
            return layout[:i], Element(DAY, "2"), rest[1:]
        elif c == "_":
            if rest.startswith("_2"):
                if rest.startswith("_2006"):  # a literal "_", then the year
                    return layout[:i + 1], Element(LONG_YEAR, "2006"), rest[5:]
                return layout[:i], Element(UNDER_DAY, "_2"), rest[2:]
            if rest.startswith("__2"):
                return layout[:i], Element(UNDER_YEAR_DAY, "__2"), rest[3:]
        elif c in "345":
            std = {"3": HOUR12, "4": MINUTE, "5": SECOND}[c]
            return layout[:i], Element(std, c), rest[1:]
        elif c == "P" and rest.startswith("PM"):
            return layout[:i], Element(PM_UPPER, "PM"), rest[2:]
        elif c == "p" and rest.startswith("pm"):
            return layout[:i], Element(PM_LOWER, "pm"), rest[2:]
        elif c in "-Z":
            for name in ("-070000", "-07:00:00", "-0700", "-07:00", "-07"):
                token = c + name[1:]
                if rest.startswith(token):
                    return layout[:i], Element(token, token), rest[len(token):]
        elif c in ".," and len(rest) >= 2 and rest[1] in "09":
            j = 1
            while j < len(rest) and rest[j] == rest[1]:
                j += 1
            # Only a run of one digit that ends here is a fraction.
            if not digit_at(rest, j):
                return layout[:i], Element(FRACTION, rest[:j], c, rest[1], j - 1), rest[j:]
    return layout, None, ""


def _pad(value: int, width: int) -> str:
    """Go's ``appendInt``: at least ``width`` digits, sign first."""
    if value < 0:
        return "-" + str(-value).rjust(width, "0")
    return str(value).rjust(width, "0")


def _zone_offset(offset: int, std: str) -> str:
    if offset == 0 and std.startswith("Z"):
        return "Z"
    sign = "-" if offset < 0 else "+"
    total = abs(offset)
    minutes = total // 60
    out = sign + _pad(minutes // 60, 2)
    colon = ":" if ":" in std else ""
    if std not in ("-07", "Z07"):
        out += colon + _pad(minutes % 60, 2)
    if std.endswith("0000") or std.endswith(":00:00"):
        out += colon + _pad(total % 60, 2)
    return out


def format_time(sec: int, nsec: int, loc: Location, layout: str) -> str:
    """Go's ``Time.Format``."""
    c = civil(sec, loc)
    out: list[str] = []
    while layout:
        prefix, element, layout = next_element(layout)
        out.append(prefix)
        if element is None:
            break
        std = element.std
        hour12 = c.hour % 12 or 12
        if std == YEAR:
            out.append(_pad(abs(c.year) % 100, 2))
        elif std == LONG_YEAR:
            out.append(_pad(c.year, 4))
        elif std == MONTH:
            out.append(SHORT_MONTHS[c.month - 1])
        elif std == LONG_MONTH:
            out.append(LONG_MONTHS[c.month - 1])
        elif std in (NUM_MONTH, ZERO_MONTH):
            out.append(_pad(c.month, 2 if std == ZERO_MONTH else 0))
        elif std == WEEKDAY:
            out.append(SHORT_DAYS[c.weekday])
        elif std == LONG_WEEKDAY:
            out.append(LONG_DAYS[c.weekday])
        elif std in (DAY, ZERO_DAY):
            out.append(_pad(c.day, 2 if std == ZERO_DAY else 0))
        elif std == UNDER_DAY:
            out.append(str(c.day).rjust(2))
        elif std == UNDER_YEAR_DAY:
            out.append(str(c.yday).rjust(3))
        elif std == ZERO_YEAR_DAY:
            out.append(_pad(c.yday, 3))
        elif std == HOUR:
            out.append(_pad(c.hour, 2))
        elif std in (HOUR12, ZERO_HOUR12):
            out.append(_pad(hour12, 2 if std == ZERO_HOUR12 else 0))
        elif std in (MINUTE, ZERO_MINUTE):
            out.append(_pad(c.minute, 2 if std == ZERO_MINUTE else 0))
        elif std in (SECOND, ZERO_SECOND):
            out.append(_pad(c.second, 2 if std == ZERO_SECOND else 0))
        elif std == PM_UPPER:
            out.append("PM" if c.hour >= 12 else "AM")
        elif std == PM_LOWER:
            out.append("pm" if c.hour >= 12 else "am")
        elif std in ISO_TZ or std in NUM_TZ:
            out.append(_zone_offset(c.offset, std))
        elif std == TZ_NAME:
            # No abbreviation (a parsed numeric offset): Go prints the -0700 form.
            out.append(c.abbr if c.abbr else _zone_offset(c.offset, "-0700"))
        elif std == FRACTION:
            out.append(_fraction(nsec, element))
    return "".join(out)


def _fraction(nsec: int, element: Element) -> str:
    trim = element.digit == "9"
    if trim and nsec == 0:
        return ""
    digits = f"{nsec:09d}"[: element.width] if element.width < 9 else f"{nsec:09d}"
    if trim:
        digits = digits.rstrip("0")
        if not digits:
            return ""
    return element.separator + digits


STRING_LAYOUT = "2006-01-02 15:04:05.999999999 -0700 MST"
"""Go's ``Time.String`` layout."""


def time_string(sec: int, nsec: int, loc: Location, mono: int | None) -> str:
    """Go's ``Time.String``: the layout above, then `` m=±s.nnnnnnnnn`` when the time
    carries a monotonic clock reading (nanoseconds since the process started)."""
    text = format_time(sec, nsec, loc, STRING_LAYOUT)
    if mono is None:
        return text
    sign = "-" if mono < 0 else "+"
    whole, frac = divmod(abs(mono), 10**9)
    return f"{text} m={sign}{whole}.{frac:09d}"
