"""The Lua ``time`` module, exactly as Wippy has it (wippy-modules §0, §1): constants,
functions, Time/Duration/Location methods, error kinds and raises, ``type``/``tostring``,
Go layouts both ways, zones, timers and tickers."""

from __future__ import annotations

import random
import time as pytime
from collections.abc import Iterator

import pytest

from moonwire.lua import Limits, LuaState, Replay, _gotime
from support import run_lua


async def value_of(source: str, **kwargs: object) -> object:
    outcome = await run_lua(source, **kwargs)
    assert outcome.error is None, outcome.error
    return outcome.value


async def values_of(body: str) -> object:
    """Run ``body`` (statements ending in ``return {...}``) inside a function with ``time`` required."""
    return await value_of(f"local time = require('time')\nreturn function()\n{body}\nend")


async def raised_by(body: str) -> str:
    outcome = await run_lua(f"local time = require('time')\nreturn function()\n{body}\nend")
    assert outcome.error is not None, f"no error from: {body}"
    return outcome.error.message


@pytest.fixture
def host_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's zone is America/New_York for the test (Local follows $TZ as Go's does)."""
    monkeypatch.setenv("TZ", "America/New_York")
    _gotime.local.cache_clear()
    _gotime.location.cache_clear()
    yield
    monkeypatch.undo()
    _gotime.local.cache_clear()
    _gotime.location.cache_clear()


# ------------------------------------------------------------------ constants


async def test_duration_constants_are_float_nanoseconds() -> None:
    assert await values_of("""
        local out = {}
        for _, name in ipairs({"NANOSECOND", "MICROSECOND", "MILLISECOND", "SECOND", "MINUTE", "HOUR"}) do
          out[#out + 1] = math.type(time[name]) .. ":" .. string.format("%d", time[name])
        end
        return out""") == ["float:1", "float:1000", "float:1000000", "float:1000000000", "float:60000000000",
                           "float:3600000000000"]


LAYOUTS = {
    "RFC3339": "2006-01-02T15:04:05Z07:00",
    "RFC3339NANO": "2006-01-02T15:04:05.999999999Z07:00",
    "RFC822": "02 Jan 06 15:04 MST",
    "RFC822Z": "02 Jan 06 15:04 -0700",
    "RFC850": "Monday, 02-Jan-06 15:04:05 MST",
    "RFC1123": "Mon, 02 Jan 2006 15:04:05 MST",
    "RFC1123Z": "Mon, 02 Jan 2006 15:04:05 -0700",
    "KITCHEN": "3:04PM",
    "STAMP": "Jan _2 15:04:05",
    "STAMP_MILLI": "Jan _2 15:04:05.000",
    "STAMP_MICRO": "Jan _2 15:04:05.000000",
    "STAMP_NANO": "Jan _2 15:04:05.000000000",
    "DATE_TIME": "2006-01-02 15:04:05",
    "DATE_ONLY": "2006-01-02",
    "TIME_ONLY": "15:04:05",
}


async def test_layout_constants() -> None:
    names = ", ".join(f"{name} = time.{name}" for name in LAYOUTS)
    assert await values_of(f"return {{{names}}}") == LAYOUTS


async def test_month_and_weekday_constants() -> None:
    months = ["JANUARY", "FEBRUARY", "MARCH", "APRIL", "MAY", "JUNE", "JULY", "AUGUST", "SEPTEMBER", "OCTOBER",
              "NOVEMBER", "DECEMBER"]
    days = ["SUNDAY", "MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY"]
    got = await values_of("return {" + ", ".join(f"time.{n}" for n in months + days) + "}")
    assert got == list(range(1, 13)) + list(range(0, 7))


async def test_location_constants() -> None:
    assert await values_of("""
        return {type(time.utc), tostring(time.utc), time.utc:string(), type(time.localtz), time.localtz:string(),
                time.UTC == time.utc}""") == ["userdata", "UTC", "UTC", "userdata", "Local", True]


async def test_module_is_read_only() -> None:
    assert "read-only" in await raised_by("time.SECOND = 1")


# ------------------------------------------------------------------ type, identity, tostring


async def test_every_time_object_is_opaque_userdata() -> None:
    assert await values_of("""
        local t, d, loc = time.now(), time.parse_duration("1s"), time.load_location("America/New_York")
        local timer, ticker = time.timer("1h"), time.ticker("1h")
        local out = {}
        for _, v in ipairs({t, d, loc, timer, ticker, time.utc}) do
          out[#out + 1] = {type(v), getmetatable(v), v.sec == nil and v.ns == nil and v.key == nil,
                           (pcall(pairs, v)) and (pcall(function() for _ in pairs(v) do end end)),
                           (pcall(function() v.x = 1 end))}
        end
        timer:stop() ticker:stop()
        return out""") == [["userdata", False, True, False, False]] * 6


async def test_equality_is_identity_and_there_are_no_operators() -> None:
    assert await values_of("""
        local a, b = time.unix(0, 0), time.unix(0, 0)
        local d1, d2 = time.parse_duration("1s"), time.parse_duration("1s")
        return {a == b, a == a, a:equal(b), d1 == d2, d1 == d1, time.load_location("UTC") == time.utc,
                (pcall(function() return a < b end)), (pcall(function() return d1 + d2 end)),
                (pcall(function() return d1 < d2 end))}""") == [False, True, True, False, True, True, False, False, False]


async def test_tostring_is_go_string() -> None:
    assert await values_of("""
        local est = time.load_location("America/New_York")
        return {
          tostring(time.date(2024, 12, 29, 15, 4, 5, 500000000, time.utc)),
          tostring(time.date(2024, 12, 29, 15, 4, 5, 0, time.utc)),
          tostring(time.date(2024, 12, 29, 15, 4, 5, 123456789, est)),
          tostring(time.date(2024, 1, 1, 0, 0, 0, 0, time.fixed_zone("", 3600))),
          tostring(time.parse_duration("1h30m")), tostring(time.parse_duration("1.5s")),
          tostring(time.parse_duration("500ms")), tostring(time.parse_duration("1us")),
          tostring(time.parse_duration(0)), tostring(time.parse_duration("-2m3.5s")),
          tostring(est), est:string(), tostring(time.fixed_zone("XST", 3600)),
          tostring(time.now():utc()):find(" m=", 1, true) == nil,
        }""") == [
        "2024-12-29 15:04:05.5 +0000 UTC", "2024-12-29 15:04:05 +0000 UTC",
        "2024-12-29 15:04:05.123456789 -0500 EST", "2024-01-01 00:00:00 +0100 +0100",
        "1h30m0s", "1.5s", "500ms", "1µs", "0s", "-2m3.5s",
        "America/New_York", "America/New_York", "XST", True,
    ]


async def test_now_carries_a_monotonic_reading_outside_workflows() -> None:
    text = await values_of("return tostring(time.now())")
    assert isinstance(text, str)
    assert " m=+" in text and text.endswith(text[-9:]) and text[-10] == "."
    assert text.split(" ")[3] == "UTC"  # this host's zone: /etc/localtime is UTC here


# ------------------------------------------------------------------ functions


async def test_now_and_sleep() -> None:
    before = pytime.time_ns()
    now, slept, bad_ok, bad_kind, nothing = await values_of("""
        local a = time.now()
        local r = {time.sleep("20ms")}
        local ok, err = time.sleep("soon")
        return {a:unix_nano(), time.now():sub(a):milliseconds(), ok == nil, err:kind(), #r}""")
    assert before <= now <= pytime.time_ns()
    assert slept >= 20 and bad_ok is True and bad_kind == "Invalid" and nothing == 0


async def test_date_normalises_and_checks_its_arguments() -> None:
    assert await values_of("""
        local function s(t) return t:format(time.DATE_TIME) end
        local u = time.utc
        return {s(time.date(2024, 13, 1, 0, 0, 0, 0, u)), s(time.date(2024, 3, 0, 0, 0, 0, 0, u)),
                s(time.date(2024, 1, 1, 25, 61, 61, 0, u)), s(time.date(2024, 1, 1, 0, 0, -1, 0, u)),
                s(time.date(2024, 1, 1, 0, 0, 0, 1500000000, u)), time.date(2024, 1, 1, 0, 0, 0, 0):location():string()}
        """) == ["2025-01-01 00:00:00", "2024-02-29 00:00:00", "2024-01-02 02:02:01", "2023-12-31 23:59:59",
                 "2024-01-01 00:00:01", "Local"]
    assert "bad argument #7 to 'date' (number expected, got nil)" in await raised_by("time.date(2024, 1, 1, 0, 0, 0)")
    assert "bad argument #8 to 'date' (Location expected, got string)" in await raised_by(
        "time.date(2024, 1, 1, 0, 0, 0, 0, 'UTC')")
    assert "bad argument #8" in await raised_by("time.date(2024, 1, 1, 0, 0, 0, 0, nil)")


async def test_unix() -> None:
    assert await values_of("""
        local t = time.unix(1709211845, 1500000000)
        return {t:unix(), t:nanosecond(), t:location():string(), time.unix(-1, 0):utc():format(time.RFC3339)}
        """) == [1709211846, 500000000, "Local", "1969-12-31T23:59:59Z"]
    assert "bad argument #2 to 'unix'" in await raised_by("time.unix(5)")


async def test_parse_offsets_locations_and_errors() -> None:
    assert await values_of("""
        local est = time.load_location("America/New_York")
        local z = time.parse(time.RFC3339, "2024-02-29T13:04:05Z", est)
        local off = time.parse(time.RFC3339, "2024-02-29T13:04:05+01:00", est)
        local matching = time.parse(time.RFC3339, "2024-02-29T13:04:05-05:00", est)
        local bare = time.parse(time.DATE_TIME, "2024-07-01 12:00:00", est)
        local default = time.parse(time.DATE_ONLY, "2024-07-01")
        local clock = time.parse(time.KITCHEN, "3:04PM", time.utc)
        return {tostring(z), tostring(off), off:location():string(), matching:location():string(),
                tostring(bare), default:location():string(), tostring(clock)}
        """) == ["2024-02-29 13:04:05 +0000 UTC", "2024-02-29 13:04:05 +0100 +0100", "", "America/New_York",
                 "2024-07-01 12:00:00 -0400 EDT", "Local", "0000-01-01 15:04:00 +0000 UTC"]


@pytest.mark.parametrize(("layout", "text", "message"), [
    ("2006-01-02", "yesterday", 'parsing time "yesterday" as "2006-01-02": cannot parse "yesterday" as "2006"'),
    ("2006-01-02", "2024-13-01", 'parsing time "2024-13-01": month out of range'),
    ("2006-01-02", "2024-02-30", 'parsing time "2024-02-30": day out of range'),
    ("2006-01-02", "2024-01-01 10:00", 'parsing time "2024-01-01 10:00": extra text: " 10:00"'),
    ("15:04:05", "25:00:00", 'parsing time "25:00:00": hour out of range'),
    ("Jan 2", "Foo 2", 'parsing time "Foo 2" as "Jan 2": cannot parse "Foo 2" as "Jan"'),
    # A layout that does not describe the text: the same INVALID parse error.
    ("2006/01/02", "2024-01-01", 'parsing time "2024-01-01" as "2006/01/02": cannot parse "-01-01" as "/"'),
])
async def test_parse_errors_are_invalid_with_go_messages(layout: str, text: str, message: str) -> None:
    assert await values_of(f"""
        local t, err = time.parse("{layout}", "{text}", time.utc)
        return {{t == nil, err:kind(), err:message(), err:retryable()}}""") == [True, "Invalid", message, False]


async def test_parse_raises_on_wrong_argument_types() -> None:
    assert "bad argument #2 to 'parse' (string expected, got nil)" in await raised_by("time.parse(time.RFC3339)")
    assert "bad argument #3 to 'parse' (Location expected, got string)" in await raised_by(
        "time.parse(time.DATE_ONLY, '2024-01-01', 'UTC')")


async def test_parse_duration_values_and_errors() -> None:
    assert await values_of("""
        local function ns(v) local d = time.parse_duration(v) return d:nanoseconds() end
        local out = {ns("1h30m"), ns("1.5s"), ns("-2m"), ns("0"), ns("300µs"), ns("300us"), ns(".5h"),
                     ns(2.9), ns(-2.9), ns(time.parse_duration("7ms"))}
        for _, bad in ipairs({"soon", "5", "1d", "", " 1s", true, {}}) do
          local d, err = time.parse_duration(bad)
          out[#out + 1] = {d == nil, err:kind(), err:message()}
        end
        return out""") == [
        5_400_000_000_000, 1_500_000_000, -120_000_000_000, 0, 300_000, 300_000, 1_800_000_000_000, 2, -2, 7_000_000,
        [True, "Invalid", 'time: invalid duration "soon"'],
        [True, "Invalid", 'time: missing unit in duration "5"'],
        [True, "Invalid", 'time: unknown unit "d" in duration "1d"'],
        [True, "Invalid", 'time: invalid duration ""'],
        [True, "Invalid", 'time: invalid duration " 1s"'],
        [True, "Invalid", "invalid value type: boolean"],
        [True, "Invalid", "invalid value type: table"],
    ]


async def test_duration_methods() -> None:
    assert await values_of("""
        local d = time.parse_duration("1h30m1.5ms")
        local n = time.parse_duration("-1500us")
        return {d:nanoseconds(), d:microseconds(), d:milliseconds(), d:seconds(), d:minutes(), d:hours(),
                math.type(d:milliseconds()), math.type(d:seconds()), n:milliseconds(), n:seconds()}
        """) == [5_400_001_500_000, 5_400_001_500, 5_400_001, 5400.0015, 90.000025, 1.5000004166666665,
                 "integer", "float", -1, -0.0015]


async def test_load_location() -> None:
    assert await values_of("""
        local ny = time.load_location("America/New_York")
        local empty, eerr = time.load_location("")
        local unknown, uerr = time.load_location("Mars/Olympus_Mons")
        return {ny:string(), time.load_location("UTC"):string(), time.load_location("Local"):string(),
                empty == nil, eerr:kind(), unknown == nil, uerr:kind(), uerr:message()}
        """) == ["America/New_York", "UTC", "Local", True, "Invalid", True, "NotFound",
                 "unknown time zone Mars/Olympus_Mons"]


async def test_fixed_zone() -> None:
    assert await values_of("""
        local ist = time.fixed_zone("IST", 19800)
        local t = time.date(2024, 1, 1, 10, 0, 0, 0, ist)
        return {ist:string(), t:format(time.RFC1123Z), t:format(time.RFC1123), t:utc():format(time.KITCHEN)}
        """) == ["IST", "Mon, 01 Jan 2024 10:00:00 +0530", "Mon, 01 Jan 2024 10:00:00 IST", "4:30AM"]


# ------------------------------------------------------------------ Time methods


async def test_time_arithmetic_and_comparisons() -> None:
    assert await values_of("""
        local t = time.date(2024, 2, 29, 13, 4, 5, 0, time.utc)
        local later = t:add("36h")
        local est = t:in_location(time.load_location("America/New_York"))
        return {later:format(time.DATE_ONLY), t:add(time.SECOND):format(time.TIME_ONLY),
                t:add(time.parse_duration("-1m")):format(time.TIME_ONLY), later:sub(t):hours(), t:sub(later):hours(),
                later:after(t), later:before(t), t:equal(est), t == est, t:after(t), t:before(t)}
        """) == ["2024-03-02", "13:04:06", "13:03:05", 36, -36, True, False, True, False, False, False]
    assert "bad argument #1 to 'add'" in await raised_by("time.now():add('soon')")
    assert "bad argument #1 to 'sub' (time expected, got string)" in await raised_by("time.now():sub('x')")
    assert "bad argument #1 to 'equal'" in await raised_by("time.now():equal(1)")
    assert "time expected, got table" in await raised_by("local t = time.now() t.year({})")


async def test_add_date_normalises_like_go() -> None:
    assert await values_of("""
        local function s(t) return t:format(time.DATE_ONLY) end
        local jan31 = time.date(2023, 1, 31, 10, 0, 0, 0, time.utc)
        return {s(jan31:add_date(0, 1, 0)), s(jan31:add_date(1, 1, 0)), s(jan31:add_date(0, 0, -31)),
                s(jan31:add_date(0, -13, 0)), jan31:add_date(0, 0, 1):format(time.TIME_ONLY)}
        """) == ["2023-03-03", "2024-03-02", "2022-12-31", "2021-12-31", "10:00:00"]


async def test_format_unix_and_calendar_getters() -> None:
    assert await values_of("""
        local t = time.date(2024, 12, 31, 23, 4, 5, 600000000, time.utc)
        local y, mo, d = t:date()
        local h, mi, s = t:clock()
        return {t:format_rfc3339(), t:unix(), t:unix_nano(), y, mo, d, h, mi, s, t:year(), t:month(), t:day(),
                t:hour(), t:minute(), t:second(), t:nanosecond(), t:weekday(), t:year_day(), t:yearday(),
                time.unix(-1, 500000000):unix()}
        """) == ["2024-12-31T23:04:05Z", 1735686245, 1735686245600000000, 2024, 12, 31, 23, 4, 5, 2024, 12, 31,
                 23, 4, 5, 600000000, 2, 366, 366, -1]


async def test_is_zero_and_zones() -> None:
    assert await values_of("""
        local zero = time.date(1, 1, 1, 0, 0, 0, 0, time.utc)
        local t = time.date(2024, 7, 1, 12, 0, 0, 0, time.utc)
        return {zero:is_zero(), tostring(zero), zero:in_location(time.fixed_zone("W", -3600)):is_zero(),
                time.unix(0, 0):is_zero(), t:in_local():location():string(), t:utc():location():string(),
                t:location():string(), t:in_location(time.load_location("Asia/Tokyo")):hour()}
        """) == [True, "0001-01-01 00:00:00 +0000 UTC", True, False, "Local", "UTC", "UTC", 21]
    assert "bad argument #1 to 'in_location' (Location expected, got string)" in await raised_by(
        "time.now():in_location('UTC')")


async def test_round_and_truncate_count_from_go_zero_time() -> None:
    # Go's own examples (ExampleTime_Round, ExampleTime_Truncate).
    rounded = await values_of("""
        local t = time.date(0, 0, 0, 12, 15, 30, 918273645, time.utc)
        local out = {}
        for _, d in ipairs({"1ns", "1us", "1ms", "1s", "2s", "1m", "10m", "1h"}) do
          out[#out + 1] = t:round(time.parse_duration(d)):format("15:04:05.999999999")
        end
        return out""")
    assert rounded == ["12:15:30.918273645", "12:15:30.918274", "12:15:30.918", "12:15:31", "12:15:30", "12:16:00",
                       "12:20:00", "12:00:00"]
    truncated = await values_of("""
        local t = time.parse("2006 Jan 02 15:04:05", "2012 Dec 07 12:15:30.918273645", time.utc)
        local out = {}
        for _, d in ipairs({"1ns", "1us", "1ms", "1s", "2s", "1m", "10m"}) do
          out[#out + 1] = t:truncate(time.parse_duration(d)):format("15:04:05.999999999")
        end
        return out""")
    assert truncated == ["12:15:30.918273645", "12:15:30.918273", "12:15:30.918", "12:15:30", "12:15:30",
                         "12:15:00", "12:10:00"]
    # Not local midnight: a day counted from 0001-01-01 UTC is 05:30 in a +05:30 zone.
    assert await values_of("""
        local t = time.date(2024, 1, 1, 10, 0, 0, 0, time.fixed_zone("IST", 19800))
        return {t:truncate(time.parse_duration("24h")):format(time.DATE_TIME),
                t:round(time.parse_duration("0s")):format(time.DATE_TIME)}
        """) == ["2024-01-01 05:30:00", "2024-01-01 10:00:00"]
    assert "bad argument #1 to 'round' (Duration expected, got string)" in await raised_by("time.now():round('1h')")
    assert "bad argument #1 to 'truncate' (Duration expected, got number)" in await raised_by(
        "time.now():truncate(time.HOUR)")


# ------------------------------------------------------------------ Go layouts both ways


async def test_reference_time_formats_as_each_layout() -> None:
    # Go's reference time in a zone named MST at -0700 formats every layout as itself,
    # except fractions (its nanoseconds are 123456789) and the Z forms (it is not UTC).
    got = await values_of("""
        local ref = time.date(2006, 1, 2, 15, 4, 5, 123456789, time.fixed_zone("MST", -7 * 3600))
        local out = {}
        for _, name in ipairs({"RFC3339", "RFC3339NANO", "RFC822", "RFC822Z", "RFC850", "RFC1123", "RFC1123Z",
                               "KITCHEN", "STAMP", "STAMP_MILLI", "STAMP_MICRO", "STAMP_NANO", "DATE_TIME",
                               "DATE_ONLY", "TIME_ONLY"}) do
          out[name] = ref:format(time[name])
        end
        return out""")
    assert got == {
        **LAYOUTS,
        "RFC3339": "2006-01-02T15:04:05-07:00",
        "RFC3339NANO": "2006-01-02T15:04:05.123456789-07:00",
        "STAMP": "Jan  2 15:04:05",
        "STAMP_MILLI": "Jan  2 15:04:05.123",
        "STAMP_MICRO": "Jan  2 15:04:05.123456",
        "STAMP_NANO": "Jan  2 15:04:05.123456789",
    }


@pytest.mark.parametrize(("layout", "text"), [
    ("_2|__2|002|2|02", " 5| 36|036|5|05"),
    ("Jan January Mon Monday", "Feb February Mon Monday"),
    ("3 03 15 4 04 5 05 PM pm", "1 01 13 2 02 3 03 PM pm"),
    ("06 2006", "24 2024"),
    (".000|,000|.999|.9|.000000000", ".120|,120|.12|.1|.120000000"),
    ("Z07:00|Z0700|Z07|-07:00|-0700|-07|-070000|-07:00:00|Z07:00:00", "Z|Z|Z|+00:00|+0000|+00|+000000|+00:00:00|Z"),
    ("MST", "UTC"),
])
async def test_layout_tokens_format(layout: str, text: str) -> None:
    assert await values_of(f"""
        return time.date(2024, 2, 5, 13, 2, 3, 120000000, time.utc):format("{layout}")""") == text


async def test_layout_tokens_with_offsets_and_year_days() -> None:
    assert await values_of("""
        local t = time.date(2024, 12, 31, 9, 0, 0, 0, time.fixed_zone("", -(3 * 3600 + 30 * 60 + 15)))
        return {t:format("Z07:00:00 -070000 -07 MST __2 002")}""") == ["-03:30:15 -033015 -03 -0330 366 366"]


@pytest.mark.parametrize("name", ["RFC3339", "RFC3339NANO", "RFC822Z", "RFC1123Z", "DATE_TIME"])
async def test_layouts_round_trip(name: str) -> None:
    assert await values_of(f"""
        local t = time.date(2024, 7, 4, 18, 30, 0, 250000000, time.fixed_zone("", -4 * 3600))
        local text = t:format(time.{name})
        local back = time.parse(time.{name}, text, time.fixed_zone("", -4 * 3600))
        return {{back:format(time.{name}) == text, back:unix()}}""") == [True, 1720132200]


async def test_parse_tokens() -> None:
    assert await values_of("""
        local function p(layout, text) local t, err = time.parse(layout, text, time.utc)
          return t and tostring(t) or err:message() end
        return {p("Jan _2 2006", "feb  3 2024"), p("January 2, 2006", "MARCH 9, 2024"),
                p("2006 002", "2024 060"), p("2006 __2", "2024  60"), p("2006-01-02 3:04pm", "2024-01-01 12:30am"),
                p("2006-01-02 15:04:05", "2024-01-01 10:00:00.25"), p("2006-01-02 15:04:05.000", "2024-01-01 10:00:00.1"),
                p("2006-01-02 15:04:05,999", "2024-01-01 10:00:00,5"), p("Mon 2006-01-02", "Xyz 2024-01-01"),
                p("2006-01-02 -0700", "2024-01-01 +0530"), p("2006-01-02 MST", "2024-01-01 PST"),
                p("2006 002", "2023 366")}
        """) == [
        "2024-02-03 00:00:00 +0000 UTC", "2024-03-09 00:00:00 +0000 UTC", "2024-02-29 00:00:00 +0000 UTC",
        "2024-02-29 00:00:00 +0000 UTC", "2024-01-01 00:30:00 +0000 UTC", "2024-01-01 10:00:00.25 +0000 UTC",
        'parsing time "2024-01-01 10:00:00.1" as "2006-01-02 15:04:05.000": cannot parse ".1" as ".000"',
        "2024-01-01 10:00:00.5 +0000 UTC",
        'parsing time "Xyz 2024-01-01" as "Mon 2006-01-02": cannot parse "Xyz 2024-01-01" as "Mon"',
        "2024-01-01 00:00:00 +0530 +0530", "2024-01-01 00:00:00 +0000 PST",
        'parsing time "2023 366": day-of-year out of range',
    ]


# ------------------------------------------------------------------ zones


async def test_daylight_saving_zone() -> None:
    assert await values_of("""
        local ny = time.load_location("America/New_York")
        local winter = time.date(2024, 1, 15, 12, 0, 0, 0, ny)
        local summer = time.date(2024, 7, 15, 12, 0, 0, 0, ny)
        local fold = time.date(2024, 11, 3, 1, 30, 0, 0, ny)
        return {tostring(winter), tostring(summer), summer:utc():hour(), tostring(fold), tostring(fold:add("1h")),
                tostring(time.date(2024, 3, 10, 1, 59, 59, 0, ny):add("1s")),
                summer:sub(winter):hours(), tostring(winter:add_date(0, 6, 0))}
        """) == ["2024-01-15 12:00:00 -0500 EST", "2024-07-15 12:00:00 -0400 EDT", 16, "2024-11-03 01:30:00 -0400 EDT",
                 "2024-11-03 01:30:00 -0500 EST", "2024-03-10 03:00:00 -0400 EDT", 4367, "2024-07-15 12:00:00 -0400 EDT"]


@pytest.mark.usefixtures("host_zone")
async def test_local_is_the_host_zone() -> None:
    assert await values_of("""
        local summer = time.date(2024, 7, 15, 12, 0, 0, 0)
        return {tostring(summer), summer:location():string(), tostring(time.unix(0, 0)),
                tostring(time.date(2024, 7, 15, 16, 0, 0, 0, time.utc):in_local()),
                tostring(time.parse(time.DATE_TIME, "2024-01-15 12:00:00")),
                time.now():location():string()}
        """) == ["2024-07-15 12:00:00 -0400 EDT", "Local", "1969-12-31 19:00:00 -0500 EST",
                 "2024-07-15 12:00:00 -0400 EDT", "2024-01-15 12:00:00 -0500 EST", "Local"]


# ------------------------------------------------------------------ timers and tickers


async def test_after_fires_once_then_closes() -> None:
    assert await values_of("""
        local ch = time.after("5ms")
        local v, ok = ch:receive()
        local v2, ok2 = ch:receive()
        return {type(v), ok, v:location():string(), tostring(v):find(" m=", 1, true) == nil, v2 == nil, ok2}
        """) == ["userdata", True, "Local", True, True, False]


async def test_timer_stop_and_reset() -> None:
    assert await values_of("""
        local t = time.timer("1h")
        local same = t:response() == t:channel()
        local stopped = t:stop()
        local v, ok = t:channel():receive()
        local again = t:stop()
        local reset_stopped = t:reset("1ms")

        local t2 = time.timer("1h")
        local reset_armed = t2:reset("5ms")
        local fired, fired_ok = t2:channel():receive()
        local _, closed_ok = t2:channel():receive()
        local stop_fired = t2:stop()
        local reset_fired = t2:reset("1ms")
        return {same, stopped, v == nil, ok, again, reset_stopped, reset_armed, type(fired), fired_ok, closed_ok,
                stop_fired, reset_fired}
        """) == [True, True, True, False, False, False, True, "userdata", True, False, False, False]


async def test_timer_stop_wakes_a_blocked_receiver() -> None:
    assert await values_of("""
        local t = time.timer("1h")
        local got = channel.new(1)
        coroutine.spawn(function() local v, ok = t:channel():receive() got:send({v == nil, ok}) end)
        time.sleep("1ms")  -- lets the spawned thread block first
        t:stop()
        local r = got:receive()
        return r""") == [True, False]


async def test_timer_reset_raises_on_a_bad_duration() -> None:
    assert "timer:reset: duration must be > 0" in await raised_by("local t = time.timer('1h') t:reset(0)")
    assert 'timer:reset: time: invalid duration "x"' in await raised_by("local t = time.timer('1h') t:reset('x')")


async def test_ticker_buffers_sixteen_and_drops_the_rest() -> None:
    assert await values_of("""
        local ticker = time.ticker("1ms")
        local first = ticker:channel():receive()
        time.sleep("100ms")  -- far more than 16 ticks fire meanwhile
        local buffered = 0
        while true do
          local r = channel.select({ticker:channel():case_receive(), default = true})
          if r.default then break end
          buffered = buffered + 1
        end
        local stopped = ticker:stop()
        local v, ok = ticker:response():receive()
        return {type(first), buffered, stopped, v == nil, ok, ticker:response() == ticker:channel()}
        """) == ["userdata", 16, True, True, False, True]


@pytest.mark.parametrize("call", ["after", "timer", "ticker"])
async def test_timer_constructors_return_invalid_errors(call: str) -> None:
    assert await values_of(f"""
        local out = {{}}
        for _, d in ipairs({{0, -5, "-1s", "nope", true}}) do
          local v, err = time.{call}(d)
          out[#out + 1] = {{v == nil, err:kind()}}
        end
        local _, err = time.{call}(0)
        out[#out + 1] = err:message()
        return out""") == [[True, "Invalid"]] * 5 + [f"time.{call}: duration must be > 0"]


async def test_local_is_utc_in_a_workflows_state_wherever_the_worker_runs(host_zone: None) -> None:
    # The host says New York; a workflow replayed on that worker must see the same civil
    # times as on a worker in UTC, so its Local is UTC (still named Local).
    source = """
        return function()
          local t = time.unix(0, 0)
          return {t:hour(), tostring(t:location()), t:format("MST"), time.now():hour()}
        end"""
    workflow = LuaState(replay=Replay(now_ns=lambda: 3 * 3600 * 10**9, random=random.Random(1)))
    assert (await run_lua(source, state=workflow)).value == [0, "Local", "UTC", 3]
    assert (await run_lua(source)).value[:3] == [19, "Local", "EST"]  # outside workflows: the host's


# ------------------------------------------------------------------ hostile input (probe)

BUDGET = "instruction budget exceeded"


@pytest.mark.parametrize("body", [
    # One call into Python was one instruction: ~1.7M tostring() calls of 7.5 us held the
    # loop 12.6 s before the budget ran out (a plain loop: 0.24 s). Charged, 1000 of them
    # outrun a budget of 200,000 instructions; uncharged, they fit in it many times over.
    "local t = time.now() for i = 1, 1000 do tostring(t) end",
    "local t = time.now() for i = 1, 1000 do t:format('2006') end",
    "local d = time.parse_duration('1h30m') for i = 1, 1000 do tostring(d) end",
])
async def test_time_calls_into_python_are_charged_to_the_budget(body: str) -> None:
    outcome = await run_lua(f"local time = require('time')\nreturn function()\n{body}\nend",
                            limits=Limits(instructions=200_000))
    assert outcome.error is not None and BUDGET in outcome.error.message, outcome


@pytest.mark.parametrize("body", [
    # Layout scanning and parsing slice their text per element: quadratic (160 KB: 0.3 s
    # to format, 1.2 s to parse; the 5 MB layout here did not finish in 10 minutes).
    "return #time.now():format(string.rep('2006 x', 1000000))",
    "return time.parse(string.rep('x', 5000000) .. '2006', string.rep('x', 5000000) .. '2020')",
    # The duration parser sliced its text per unit too: 1 MB took 12 s (and then succeeded).
    "return time.parse_duration(string.rep('1h', 500000))",
])
async def test_huge_layouts_and_durations_are_refused_or_charged(body: str) -> None:
    outcome = await run_lua(f"local time = require('time')\nreturn function()\n{body}\nend")
    assert outcome.error is not None, outcome
    assert BUDGET in outcome.error.message or "too long" in outcome.error.message, outcome.error.message


@pytest.mark.parametrize("body", [
    "return time.date(math.maxinteger, 1, 1, 0, 0, 0, 0, time.utc):unix()",
    "return time.date(2000, 1, 1, 0, 0, math.maxinteger, 0, time.utc):unix()",
    "return time.now():add_date(math.maxinteger, math.maxinteger, math.maxinteger):unix()",
    "return time.unix(math.maxinteger, 0):add_date(1, 0, 0):unix()",
])
async def test_dates_past_64_bits_wrap_as_go_does_not_a_python_error(body: str) -> None:
    # They raised OverflowError ("Python int too large to convert to C long") as an
    # Internal error; Go's time.Date wraps around int64.
    assert isinstance(await values_of(body), int)


async def test_a_huge_duration_number_is_gos_error_not_pythons() -> None:
    message = await values_of("local d, err = time.parse_duration(string.rep('9', 100000) .. 'h') return tostring(err)")
    assert message.startswith('time: invalid duration "99999'), message[:200]
