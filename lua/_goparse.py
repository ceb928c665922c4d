"""Go's ``time.ParseInLocation``, step by step as in Go's ``format.go``: the same layout
accepts the same text and fails with the same message (:class:`ParseError`)."""

from __future__ import annotations

from ._duration import go_quote
from ._gotime import (
    DAY,
    DAYS_BEFORE,
    FRACTION,
    HOUR,
    HOUR12,
    ISO_TZ,
    LONG_DAYS,
    LONG_MONTH,
    LONG_MONTHS,
    LONG_WEEKDAY,
    LONG_YEAR,
    Location,
    MINUTE,
    MONTH,
    NUM_MONTH,
    NUM_TZ,
    PM_LOWER,
    PM_UPPER,
    SECOND,
    SHORT_DAYS,
    SHORT_MONTHS,
    TZ_NAME,
    UNDER_DAY,
    UNDER_YEAR_DAY,
    UTC,
    WEEKDAY,
    YEAR,
    ZERO_DAY,
    ZERO_HOUR12,
    ZERO_MINUTE,
    ZERO_MONTH,
    ZERO_SECOND,
    ZERO_YEAR_DAY,
    date,
    days_in,
    digit_at,
    fixed_key,
    is_leap,
    location,
    next_element,
)


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
    if not digit_at(s, 0):
        raise _Bad
    if not digit_at(s, 1):
        if fixed:
            raise _Bad
        return int(s[0]), s[1:]
    return int(s[:2]), s[2:]


def _getnum3(s: str, fixed: bool) -> tuple[int, str]:
    i = 0
    while i < 3 and digit_at(s, i):
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
    while digit_at(value, i):
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
                if len(value) < 4 or not digit_at(value, 0):
                    raise _Bad
                year = _atoi(value[:4])
                value = value[4:]
            elif std == MONTH:
                month, value = _lookup(SHORT_MONTHS, value)
                month += 1
            elif std == LONG_MONTH:
                month, value = _lookup(LONG_MONTHS, value)
                month += 1
            elif std in (NUM_MONTH, ZERO_MONTH):
                month, value = _getnum(value, std == ZERO_MONTH)
                if not 1 <= month <= 12:
                    range_error = "month"
            elif std == WEEKDAY:
                _, value = _lookup(SHORT_DAYS, value)
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
                elif len(value) >= 2 and value[0] in ".," and digit_at(value, 1):
                    # A fraction in the text but none in the layout: Go takes it anyway.
                    _, following, _ = next_element(layout)
                    if following is None or following.std != FRACTION:
                        n = 2
                        while digit_at(value, n):
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
                elif len(value) >= 2 and value[0] in ".," and digit_at(value, 1):
                    i = 0
                    while digit_at(value, i + 1):
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
            if DAYS_BEFORE[m] < yday:
                m += 1
            d = yday - DAYS_BEFORE[m - 1]
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

