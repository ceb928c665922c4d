"""Go's ``time`` package, as much of it as the Lua ``time`` module shows: calendar
arithmetic (``time.Date``, ``AddDate``), zones (``UTC``, ``Local``, IANA names, fixed
zones) and reference-time layouts (``"2006-01-02T15:04:05Z07:00"``) both ways.

An instant is a pair of integers: ``sec`` (seconds since the Unix epoch, any size: Go's
zero time, 0001-01-01, and year 0 of a parsed clock time are both reachable) and
``nsec`` (0..999999999). The calendar is computed here, not with :mod:`datetime`, whose
years stop at 1..9999; :mod:`zoneinfo` only answers "which offset and abbreviation at
this instant". Layout scanning and parsing follow Go's ``format.go`` step by step, so
that the same layout accepts the same text and fails with the same message.

A location crosses into Lua as a *key* (text): ``UTC``, ``Local``, ``Z:<IANA name>`` or
``F:<offset seconds>:<name>`` (see :func:`location`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._duration import go_quote

SECONDS_PER_DAY = 86400
UNIX_TO_ZERO = 62135596800
"""Seconds from Go's zero time (0001-01-01T00:00:00Z) to the Unix epoch."""

LONG_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December"]
LONG_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
_SHORT_MONTHS = [m[:3] for m in LONG_MONTHS]
_SHORT_DAYS = [d[:3] for d in LONG_DAYS]
_DAYS_BEFORE = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365]

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
    return _DAYS_BEFORE[month] - _DAYS_BEFORE[month - 1]


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


def _digit_at(s: str, i: int) -> bool:
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
            if not _digit_at(rest, j):
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
            out.append(_SHORT_MONTHS[c.month - 1])
        elif std == LONG_MONTH:
            out.append(LONG_MONTHS[c.month - 1])
        elif std in (NUM_MONTH, ZERO_MONTH):
            out.append(_pad(c.month, 2 if std == ZERO_MONTH else 0))
        elif std == WEEKDAY:
            out.append(_SHORT_DAYS[c.weekday])
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


# ------------------------------------------------------------------ parsing


class ParseError(ValueError):
    """Go's ``time.ParseError``; ``str()`` is Go's message."""

    def __init__(self, layout: str, value: str, layout_elem: str, value_elem: str, message: str = "") -> None:
        if message:
            text = "parsing time " + go_quote(value) + message
        else:
            text = ("parsing time " + go_quote(value) + " as " + go_quote(layout) + ": cannot parse "
                    + go_quote(value_elem) + " as " + go_quote(layout_elem))
        super().__init__(text)


class _Bad(Exception):
    """The element does not match the text (Go's ``errBad``)."""


def _getnum(s: str, fixed: bool) -> tuple[int, str]:
    if not _digit_at(s, 0):
        raise _Bad
    if not _digit_at(s, 1):
        if fixed:
            raise _Bad
        return int(s[0]), s[1:]
    return int(s[:2]), s[2:]


def _getnum3(s: str, fixed: bool) -> tuple[int, str]:
    i = 0
    while i < 3 and _digit_at(s, i):
        i += 1
    if i == 0 or (fixed and i != 3):
        raise _Bad
    return int(s[:i]), s[i:]


def _atoi(s: str) -> int:
    body = s[1:] if s[:1] in ("-", "+") else s
    if not body or not all("0" <= ch <= "9" for ch in body):
        raise _Bad
    return -int(body) if s[:1] == "-" else int(body)


def _lookup(table: list[str], value: str) -> tuple[int, str]:
    for i, name in enumerate(table):
        if value[: len(name)].lower() == name.lower():
            return i, value[len(name):]
    raise _Bad


def _skip(value: str, prefix: str) -> str:
    """Go's ``skip``: the literal ``prefix`` off the front of ``value``; a space in the
    layout matches any run of spaces (even none, once the text's next char is a space)."""
    while prefix:
        if prefix[0] == " ":
            if value and value[0] != " ":
                raise _Bad
            prefix = prefix.lstrip(" ")
            value = value.lstrip(" ")
            continue
        if not value or value[0] != prefix[0]:
            raise _Bad
        prefix, value = prefix[1:], value[1:]
    return value


def _nanoseconds(value: str, nbytes: int) -> int:
    if value[:1] not in (".", ","):
        raise _Bad
    nbytes = min(nbytes, 10)
    digits = value[1:nbytes]
    ns = _atoi(digits)
    return ns * 10 ** (10 - nbytes)


def _signed_offset_length(value: str) -> int:
    if value[:1] not in ("-", "+"):
        return 0
    i = 1
    while _digit_at(value, i):
        i += 1
    if i == 1 or int(value[1:i]) > 23:
        return 0
    return i


def _zone_name_length(value: str) -> int:
    """Go's ``parseTimeZone``: how much of ``value`` is a zone abbreviation (0: none)."""
    if len(value) < 3:
        return 0
    if value[:4] in ("ChST", "MeST"):
        return 4
    if value[:3] == "GMT":
        return 3 + (_signed_offset_length(value[3:]) if len(value) > 3 else 0)
    if value[0] in "+-":
        return _signed_offset_length(value)
    upper = 0
    while upper < 6 and upper < len(value) and "A" <= value[upper] <= "Z":
        upper += 1
    if upper == 3:
        return 3
    if upper == 4 and (value[3] == "T" or value[:4] == "WITA"):
        return 4
    if upper == 5 and value[4] == "T":
        return 5
    return 0


def parse_time(layout: str, value: str, loc: Location) -> tuple[int, int, Location]:
    """Go's ``time.ParseInLocation(layout, value, loc)``: ``(sec, nsec, location)``.

    Raises:
        ParseError: ``value`` does not match ``layout``, or a part is out of range; the
            message is Go's.
    """
    a_layout, a_value = layout, value
    range_error = ""
    am = pm = False
    year, month, day, yday = 0, -1, -1, -1
    hour = minute = second = nsec = 0
    utc = False
    zone_offset: int | None = None
    zone_name = ""
    while True:
        prefix, element, suffix = next_element(layout)
        try:
            value = _skip(value, prefix)
        except _Bad:
            raise ParseError(a_layout, a_value, prefix, value) from None
        if element is None:
            if value:
                raise ParseError(a_layout, a_value, "", value, ": extra text: " + go_quote(value))
            break
        layout = suffix
        hold = value
        std = element.std
        try:
            if std == YEAR:
                if len(value) < 2:
                    raise _Bad
                year = _atoi(value[:2])
                value = value[2:]
                year += 1900 if year >= 69 else 2000
            elif std == LONG_YEAR:
                if len(value) < 4 or not _digit_at(value, 0):
                    raise _Bad
                year = _atoi(value[:4])
                value = value[4:]
            elif std == MONTH:
                month, value = _lookup(_SHORT_MONTHS, value)
                month += 1
            elif std == LONG_MONTH:
                month, value = _lookup(LONG_MONTHS, value)
                month += 1
            elif std in (NUM_MONTH, ZERO_MONTH):
                month, value = _getnum(value, std == ZERO_MONTH)
                if not 1 <= month <= 12:
                    range_error = "month"
            elif std == WEEKDAY:
                _, value = _lookup(_SHORT_DAYS, value)
            elif std == LONG_WEEKDAY:
                _, value = _lookup(LONG_DAYS, value)
            elif std in (DAY, UNDER_DAY, ZERO_DAY):
                if std == UNDER_DAY and value[:1] == " ":
                    value = value[1:]
                day, value = _getnum(value, std == ZERO_DAY)
            elif std in (UNDER_YEAR_DAY, ZERO_YEAR_DAY):
                for _ in range(2):
                    if std == UNDER_YEAR_DAY and value[:1] == " ":
                        value = value[1:]
                yday, value = _getnum3(value, std == ZERO_YEAR_DAY)
            elif std == HOUR:
                hour, value = _getnum(value, False)
                if not 0 <= hour < 24:
                    range_error = "hour"
            elif std in (HOUR12, ZERO_HOUR12):
                hour, value = _getnum(value, std == ZERO_HOUR12)
                if not 0 <= hour <= 12:
                    range_error = "hour"
            elif std in (MINUTE, ZERO_MINUTE):
                minute, value = _getnum(value, std == ZERO_MINUTE)
                if not 0 <= minute < 60:
                    range_error = "minute"
            elif std in (SECOND, ZERO_SECOND):
                second, value = _getnum(value, std == ZERO_SECOND)
                if not 0 <= second < 60:
                    range_error = "second"
                elif len(value) >= 2 and value[0] in ".," and _digit_at(value, 1):
                    # A fraction in the text but none in the layout: Go takes it anyway.
                    _, following, _ = next_element(layout)
                    if following is None or following.std != FRACTION:
                        n = 2
                        while _digit_at(value, n):
                            n += 1
                        nsec = _nanoseconds(value, n)
                        value = value[n:]
            elif std in (PM_UPPER, PM_LOWER):
                if len(value) < 2:
                    raise _Bad
                word, value = value[:2], value[2:]
                if word == ("PM" if std == PM_UPPER else "pm"):
                    pm = True
                elif word == ("AM" if std == PM_UPPER else "am"):
                    am = True
                else:
                    raise _Bad
            elif std in ISO_TZ and value[:1] == "Z":
                value = value[1:]
                utc = True
            elif std in ISO_TZ or std in NUM_TZ:
                value, zone_offset, range_error = _parse_offset(std, value)
            elif std == TZ_NAME:
                if value[:3] == "UTC":
                    utc = True
                    value = value[3:]
                else:
                    n = _zone_name_length(value)
                    if n == 0:
                        raise _Bad
                    zone_name, value = value[:n], value[n:]
            elif std == FRACTION:
                if element.digit == "0":
                    width = 1 + element.width
                    if len(value) < width:
                        raise _Bad
                    nsec = _nanoseconds(value, width)
                    value = value[width:]
                elif len(value) >= 2 and value[0] in ".," and _digit_at(value, 1):
                    i = 0
                    while _digit_at(value, i + 1):
                        i += 1
                    nsec = _nanoseconds(value, 1 + i)
                    value = value[1 + i:]
        except _Bad:
            if range_error:
                raise ParseError(a_layout, a_value, element.text, value, ": " + range_error + " out of range") from None
            raise ParseError(a_layout, a_value, element.text, hold) from None
        if range_error:
            raise ParseError(a_layout, a_value, element.text, value, ": " + range_error + " out of range")

    if pm and hour < 12:
        hour += 12
    elif am and hour == 12:
        hour = 0

    if yday >= 0:
        m = d = 0
        if is_leap(year):
            if yday == 31 + 29:
                m, d = 2, 29
            elif yday > 31 + 29:
                yday -= 1
        if yday < 1 or yday > 365:
            raise ParseError(a_layout, a_value, "", value, ": day-of-year out of range")
        if m == 0:
            m = (yday - 1) // 31 + 1
            if _DAYS_BEFORE[m] < yday:
                m += 1
            d = yday - _DAYS_BEFORE[m - 1]
        if month >= 0 and month != m:
            raise ParseError(a_layout, a_value, "", value, ": day-of-year does not match month")
        month = m
        if day >= 0 and day != d:
            raise ParseError(a_layout, a_value, "", value, ": day-of-year does not match day")
        day = d
    else:
        month = 1 if month < 0 else month
        day = 1 if day < 0 else day

    if day < 1 or day > days_in(month, year):
        raise ParseError(a_layout, a_value, "", value, ": day out of range")

    if utc:
        return (*date(year, month, day, hour, minute, second, nsec, UTC), UTC)
    if zone_offset is not None:
        sec, nsec = date(year, month, day, hour, minute, second, nsec, UTC)
        sec -= zone_offset
        # The given location when its offset then is the one read, else a nameless fixed zone.
        abbr, offset = loc.lookup(sec)
        if offset == zone_offset and (zone_name == "" or abbr == zone_name):
            return sec, nsec, loc
        return sec, nsec, location(fixed_key(zone_name, zone_offset))
    if zone_name:
        sec, nsec = date(year, month, day, hour, minute, second, nsec, UTC)
        found = loc.lookup_name(zone_name, sec)
        if found is not None:
            return sec - found, nsec, loc
        offset = 0
        if len(zone_name) > 3 and zone_name[:3] == "GMT":
            offset = int(zone_name[3:]) * 3600
        return sec, nsec, location(fixed_key(zone_name, offset))
    return (*date(year, month, day, hour, minute, second, nsec, loc), loc)


def _parse_offset(std: str, value: str) -> tuple[str, int, str]:
    """A numeric zone offset off the front of ``value``: (rest, offset seconds, range error)."""
    core = std[1:]  # "0700", "07:00", ...
    if core == "07:00":
        if len(value) < 6 or value[3] != ":":
            raise _Bad
        sign, hh, mm, ss, value = value[0], value[1:3], value[4:6], "00", value[6:]
    elif core == "07":
        if len(value) < 3:
            raise _Bad
        sign, hh, mm, ss, value = value[0], value[1:3], "00", "00", value[3:]
    elif core == "07:00:00":
        if len(value) < 9 or value[3] != ":" or value[6] != ":":
            raise _Bad
        sign, hh, mm, ss, value = value[0], value[1:3], value[4:6], value[7:9], value[9:]
    elif core == "070000":
        if len(value) < 7:
            raise _Bad
        sign, hh, mm, ss, value = value[0], value[1:3], value[3:5], value[5:7], value[7:]
    else:
        if len(value) < 5:
            raise _Bad
        sign, hh, mm, ss, value = value[0], value[1:3], value[3:5], "00", value[5:]
    hours, _ = _getnum(hh, True)
    minutes, _ = _getnum(mm, True)
    seconds, _ = _getnum(ss, True)
    range_error = ""
    if hours > 24:
        range_error = "time zone offset hour"
    if minutes > 60:
        range_error = "time zone offset minute"
    if seconds > 60:
        range_error = "time zone offset second"
    offset = (hours * 60 + minutes) * 60 + seconds
    if sign == "-":
        offset = -offset
    elif sign != "+" and not range_error:  # Go reports a range error first
        raise _Bad
    return value, offset, range_error

