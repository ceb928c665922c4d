-- The `time` module (wippy-modules §1). Trusted: run once per state after the
-- prelude, with `core`, `host` (Python functions, see _time_host.py) and the prelude's
-- exports. Time, Duration, Location, Timer and Ticker are opaque userdata
-- (core.new_object): `type()` says "userdata", no field can be read, `==` is identity
-- (Wippy defines no __eq/__lt), and only Time, Duration and Location have __tostring.
--
-- A Time holds `sec` (Unix seconds, any size), `nsec` (0..999999999), its location's
-- `key` (how Python finds the zone: "UTC", "Local", "Z:<IANA>", "F:<offset>:<name>") and
-- `name`, and `mono`: Go's monotonic reading (ns since the node started) or nil. As in
-- Go, `add` keeps it, comparisons and `sub` use it when both sides have one, and
-- zone changes, `add_date`, `round` and `truncate` drop it.
local core, host, P = ...
local request, readonly = core.request, core.readonly
local new_object, fields, metatable_of = core.new_object, core.fields, core.metatable_of
local type, error, tostring, select = type, error, tostring, select
local math_floor, math_ceil, math_tointeger = math.floor, math.ceil, math.tointeger
local MAXINT, MININT = math.maxinteger, math.mininteger
local host_error, KINDS, argerror = P.host_error, P.kinds, P.argerror
local new_channel, channel_handle = P.new_channel, P.channel_handle
local charge = core.charge

-- Every call into Python (_time_host.py) is charged to the instruction budget: one costs
-- 1-8 us, a thousand instructions' worth, and was one instruction to the count hook (a
-- loop of tostring(t) held the event loop 12.6 s before its budget ran out). Layouts
-- and parsed values also cost per byte, and stop at MAX_TEXT bytes: Go's layout scan is
-- ported with slices, quadratic in Python (160 KB: 1.2 s to parse).
local HOST_CALL, TEXT_BYTE, MAX_TEXT = 1000, 100, 4096
do
    local raw = host
    host = {}
    for name, fn in pairs(raw) do
        host[name] = function(...)
            charge(HOST_CALL)
            return fn(...)
        end
    end
end
-- nil, or why `s` is refused (too long); charges it otherwise.
local function charge_text(s, what)
    if #s > MAX_TEXT then
        return "time: " .. what .. " too long (" .. #s .. " bytes, at most " .. MAX_TEXT .. ")"
    end
    charge(#s * TEXT_BYTE)
end

local SEC = 1000000000
local ZERO_TO_UNIX = 62135596800  -- seconds from Go's zero time (0001-01-01 UTC) to 1970

local function invalid(message) return host_error(message, KINDS.INVALID, false) end

-- A number as an integer, its fraction truncated toward zero as Go's int(float) does;
-- nil when it has no integer value (NaN, out of range).
local function truncate_number(n)
    if n >= 0 then return math_tointeger(math_floor(n)) end
    return math_tointeger(math_ceil(n))
end

-- ------------------------------------------------------------------ Duration

local DurationMethods = {}
local DurationMT = core.object_type("time.Duration", DurationMethods, {
    __tostring = function(d) return host.format_duration(fields(d).ns) end,
})
local function new_duration(ns) return new_object(DurationMT, { ns = ns }) end
local function is_duration(v) return type(v) == "userdata" and metatable_of(v) == DurationMT end

local function duration_of(d, fname)
    if not is_duration(d) then argerror(1, fname, "Duration", d) end
    return fields(d).ns
end
function DurationMethods.nanoseconds(d) return duration_of(d, "nanoseconds") end
-- Go's integer division truncates toward zero; Lua's `//` floors.
local function quo_rem(n, d)
    local q = n // d
    if q < 0 and q * d ~= n then q = q + 1 end
    return q, n - q * d
end
function DurationMethods.microseconds(d) return (quo_rem(duration_of(d, "microseconds"), 1000)) end
function DurationMethods.milliseconds(d) return (quo_rem(duration_of(d, "milliseconds"), 1000000)) end
-- Go splits whole and fraction so that large values keep their precision.
local function in_units(d, unit, fname)
    local q, r = quo_rem(duration_of(d, fname), unit)
    return q + r / unit
end
function DurationMethods.seconds(d) return in_units(d, SEC, "seconds") end
function DurationMethods.minutes(d) return in_units(d, 60 * SEC, "minutes") end
function DurationMethods.hours(d) return in_units(d, 3600 * SEC, "hours") end

-- A duration argument: nanoseconds (fraction truncated), a Go duration string, or a
-- Duration. Returns ns, or nil and an INVALID error with Go's message.
local function to_ns(v)
    local kind = type(v)
    if kind == "number" then
        local ns = truncate_number(v)
        if ns == nil then return nil, invalid("time: invalid duration " .. tostring(v)) end
        return ns
    elseif kind == "string" then
        charge(#v * 30)  -- a match per unit (_duration.py): 1 MB of "1h" takes 0.28 s
        local ns, err = host.parse_duration(v)
        if ns == nil then return nil, invalid(err) end
        return ns
    elseif is_duration(v) then
        return fields(v).ns
    end
    return nil, invalid("invalid value type: " .. kind)
end

-- ------------------------------------------------------------------ Location

local LocationMethods = {}
local LocationMT = core.object_type("time.Location", LocationMethods, {
    __tostring = function(loc) return fields(loc).name end,
})
local function new_location(key, name) return new_object(LocationMT, { key = key, name = name }) end
local function is_location(v) return type(v) == "userdata" and metatable_of(v) == LocationMT end
function LocationMethods.string(loc)
    if not is_location(loc) then argerror(1, "string", "Location", loc) end
    return fields(loc).name
end

local UTC = new_location("UTC", "UTC")
local LOCAL = new_location("Local", "Local")

-- ------------------------------------------------------------------ Time

local TimeMethods = {}
local TimeMT = core.object_type("time.Time", TimeMethods, {
    __tostring = function(t)
        local f = fields(t)
        return host.string(f.sec, f.nsec, f.key, f.mono)
    end,
})
local function new_time(sec, nsec, key, name, mono)
    return new_object(TimeMT, { sec = sec, nsec = nsec, key = key, name = name, mono = mono })
end
local function is_time(v) return type(v) == "userdata" and metatable_of(v) == TimeMT end

-- The fields of the Time receiver of method `fname` (raises on anything else).
local function self_time(t, fname)
    if not is_time(t) then error("bad argument #1 to '" .. fname .. "' (time expected, got " .. type(t) .. ")", 3) end
    return fields(t)
end
local function time_arg(v, fname)
    if not is_time(v) then error("bad argument #1 to '" .. fname .. "' (time expected, got " .. type(v) .. ")", 3) end
    return fields(v)
end
local function integer_arg(v, n, fname)
    if type(v) ~= "number" then argerror(n, fname, "number", v) end
    local i = truncate_number(v)
    if i == nil then error("bad argument #" .. n .. " to '" .. fname .. "' (number has no integer representation)", 3) end
    return i
end

-- sec, nsec plus ns (any integer), carried.
local function plus(sec, nsec, ns)
    local s, n = sec + ns // SEC, nsec + ns % SEC
    if n >= SEC then s, n = s + 1, n - SEC end
    return s, n
end

function TimeMethods.add(t, d)
    local f = self_time(t, "add")
    local ns, err = to_ns(d)
    if ns == nil then error("bad argument #1 to 'add' (" .. err:message() .. ")", 2) end
    local sec, nsec = plus(f.sec, f.nsec, ns)
    local mono = f.mono
    if mono ~= nil then
        local m = mono + ns  -- wraps on overflow: Go drops the reading then
        if (ns < 0 and m > mono) or (ns > 0 and m < mono) then mono = nil else mono = m end
    end
    return new_time(sec, nsec, f.key, f.name, mono)
end

-- Go's Time.Sub: saturates at the largest and smallest Duration.
function TimeMethods.sub(t, u)
    local a, b = self_time(t, "sub"), time_arg(u, "sub")
    if a.mono ~= nil and b.mono ~= nil then
        local d = a.mono - b.mono
        if a.mono > b.mono and d < 0 then return new_duration(MAXINT) end
        if a.mono < b.mono and d > 0 then return new_duration(MININT) end
        return new_duration(d)
    end
    local ds, dn = a.sec - b.sec, a.nsec - b.nsec
    local approx = ds * 1e9 + dn
    if approx >= 9.2233720368547e18 then return new_duration(MAXINT) end
    if approx <= -9.2233720368547e18 then return new_duration(MININT) end
    return new_duration(ds * SEC + dn)
end

-- -1, 0 or 1: `a` before, at or after `b` (by monotonic readings when both have one).
local function compare(a, b)
    if a.mono ~= nil and b.mono ~= nil then
        return a.mono < b.mono and -1 or (a.mono > b.mono and 1 or 0)
    end
    if a.sec ~= b.sec then return a.sec < b.sec and -1 or 1 end
    return a.nsec < b.nsec and -1 or (a.nsec > b.nsec and 1 or 0)
end
function TimeMethods.after(t, u) return compare(self_time(t, "after"), time_arg(u, "after")) > 0 end
function TimeMethods.before(t, u) return compare(self_time(t, "before"), time_arg(u, "before")) < 0 end
function TimeMethods.equal(t, u) return compare(self_time(t, "equal"), time_arg(u, "equal")) == 0 end

function TimeMethods.add_date(t, years, months, days)
    local f = self_time(t, "add_date")
    years = integer_arg(years, 1, "add_date")
    months = integer_arg(months, 2, "add_date")
    days = integer_arg(days, 3, "add_date")
    local sec, nsec = host.add_date(f.sec, f.nsec, f.key, years, months, days)
    return new_time(sec, nsec, f.key, f.name)
end

local function string_arg(v, n, fname)
    if type(v) == "number" then return tostring(v) end
    if type(v) ~= "string" then argerror(n, fname, "string", v) end
    return v
end

function TimeMethods.format(t, layout)
    local f = self_time(t, "format")
    layout = string_arg(layout, 1, "format")
    local refused = charge_text(layout, "layout")
    if refused then error("bad argument #1 to 'format' (" .. refused .. ")", 2) end
    return host.format(f.sec, f.nsec, f.key, layout)
end
function TimeMethods.format_rfc3339(t)
    local f = self_time(t, "format_rfc3339")
    return host.format(f.sec, f.nsec, f.key, "2006-01-02T15:04:05Z07:00")
end
function TimeMethods.unix(t) return self_time(t, "unix").sec end
function TimeMethods.unix_nano(t)
    local f = self_time(t, "unix_nano")
    return f.sec * SEC + f.nsec  -- wraps outside 1678..2262, where Go's is undefined too
end
function TimeMethods.nanosecond(t) return self_time(t, "nanosecond").nsec end

-- year, month, day, hour, minute, second, weekday, year_day in the time's zone.
local function civil(t, fname)
    local f = self_time(t, fname)
    return host.civil(f.sec, f.key)
end
function TimeMethods.date(t)
    local y, mo, d = civil(t, "date")
    return y, mo, d
end
function TimeMethods.clock(t)
    local _, _, _, h, mi, s = civil(t, "clock")
    return h, mi, s
end
for i, name in ipairs({ "year", "month", "day", "hour", "minute", "second", "weekday", "year_day" }) do
    TimeMethods[name] = function(t) return (select(i, civil(t, name))) end
end
TimeMethods.yearday = TimeMethods.year_day  -- moonwire's earlier name, kept

function TimeMethods.is_zero(t)
    local f = self_time(t, "is_zero")
    return f.sec == -ZERO_TO_UNIX and f.nsec == 0
end

function TimeMethods.in_location(t, loc)
    local f = self_time(t, "in_location")
    if not is_location(loc) then argerror(1, "in_location", "Location", loc) end
    local l = fields(loc)
    return new_time(f.sec, f.nsec, l.key, l.name)
end
function TimeMethods.utc(t)
    local f = self_time(t, "utc")
    return new_time(f.sec, f.nsec, "UTC", "UTC")
end
function TimeMethods.in_local(t)
    local f = self_time(t, "in_local")
    return new_time(f.sec, f.nsec, "Local", "Local")
end
function TimeMethods.location(t)
    local f = self_time(t, "location")
    return new_location(f.key, f.name)
end

-- Go's Round/Truncate count from the zero time (0001-01-01 UTC), not from midnight of
-- the time's zone; Python computes the remainder, which needs more than 64 bits on the way.
local function remainder(f, d) return host.remainder(f.sec, f.nsec, d) end
local function duration_arg(d, fname)
    if not is_duration(d) then argerror(1, fname, "Duration", d) end
    return fields(d).ns
end
function TimeMethods.truncate(t, d)
    local f = self_time(t, "truncate")
    local ns = duration_arg(d, "truncate")
    if ns <= 0 then return new_time(f.sec, f.nsec, f.key, f.name) end
    local sec, nsec = plus(f.sec, f.nsec, -remainder(f, ns))
    return new_time(sec, nsec, f.key, f.name)
end
function TimeMethods.round(t, d)
    local f = self_time(t, "round")
    local ns = duration_arg(d, "round")
    if ns <= 0 then return new_time(f.sec, f.nsec, f.key, f.name) end
    local r = remainder(f, ns)
    local sec, nsec
    if r < ns - r then
        sec, nsec = plus(f.sec, f.nsec, -r)
    else
        sec, nsec = plus(f.sec, f.nsec, ns - r)
    end
    return new_time(sec, nsec, f.key, f.name)
end

-- ------------------------------------------------------------------ timers

-- Timer and Ticker objects keep their Python handle in `private`, never in a field.
local private = setmetatable({}, { __mode = "k" })

local TimerMethods = {}
local TimerMT = core.object_type("time.Timer", TimerMethods)
local TickerMethods = {}
local TickerMT = core.object_type("time.Ticker", TickerMethods)

local function timer_self(t, mt, fname)
    if type(t) ~= "userdata" or metatable_of(t) ~= mt then
        error("bad argument #1 to '" .. fname .. "' (" .. mt.__name .. " expected, got " .. type(t) .. ")", 3)
    end
    return fields(t)
end
function TimerMethods.response(t) return timer_self(t, TimerMT, "response").channel end
TimerMethods.channel = TimerMethods.response
function TimerMethods.stop(t)
    timer_self(t, TimerMT, "stop")
    return host.timer_stop(private[t])
end
function TimerMethods.reset(t, d)
    timer_self(t, TimerMT, "reset")
    local ns, err = to_ns(d)
    if ns == nil then error("timer:reset: " .. err:message(), 2) end
    if ns <= 0 then error("timer:reset: duration must be > 0", 2) end
    return host.timer_reset(private[t], ns)
end
function TickerMethods.response(t) return timer_self(t, TickerMT, "response").channel end
TickerMethods.channel = TickerMethods.response
function TickerMethods.stop(t)
    timer_self(t, TickerMT, "stop")
    host.timer_stop(private[t])
    return true
end

-- A timer's channel holds one fire; a ticker's 16, dropping ticks while full.
local function start_timer(d, fname, mt, capacity)
    local ns, err = to_ns(d)
    if ns == nil then return nil, invalid(err:message()) end
    if ns <= 0 then return nil, invalid("time." .. fname .. ": duration must be > 0") end
    local ch = new_channel(capacity)
    local object = new_object(mt, { channel = ch })
    private[object] = request("timer", channel_handle(ch), ns, mt == TickerMT)
    core.handed()
    return object
end

-- ------------------------------------------------------------------ the module

local time = {
    NANOSECOND = 1.0, MICROSECOND = 1e3, MILLISECOND = 1e6, SECOND = 1e9, MINUTE = 6e10, HOUR = 3.6e12,
    RFC3339 = "2006-01-02T15:04:05Z07:00",
    RFC3339NANO = "2006-01-02T15:04:05.999999999Z07:00",
    RFC822 = "02 Jan 06 15:04 MST",
    RFC822Z = "02 Jan 06 15:04 -0700",
    RFC850 = "Monday, 02-Jan-06 15:04:05 MST",
    RFC1123 = "Mon, 02 Jan 2006 15:04:05 MST",
    RFC1123Z = "Mon, 02 Jan 2006 15:04:05 -0700",
    KITCHEN = "3:04PM",
    STAMP = "Jan _2 15:04:05",
    STAMP_MILLI = "Jan _2 15:04:05.000",
    STAMP_MICRO = "Jan _2 15:04:05.000000",
    STAMP_NANO = "Jan _2 15:04:05.000000000",
    DATE_TIME = "2006-01-02 15:04:05",
    DATE_ONLY = "2006-01-02",
    TIME_ONLY = "15:04:05",
    JANUARY = 1, FEBRUARY = 2, MARCH = 3, APRIL = 4, MAY = 5, JUNE = 6, JULY = 7, AUGUST = 8,
    SEPTEMBER = 9, OCTOBER = 10, NOVEMBER = 11, DECEMBER = 12,
    SUNDAY = 0, MONDAY = 1, TUESDAY = 2, WEDNESDAY = 3, THURSDAY = 4, FRIDAY = 5, SATURDAY = 6,
    utc = UTC, localtz = LOCAL,
    UTC = UTC,  -- moonwire's earlier name, kept
}

function time.now()
    local sec, nsec, mono = host.now()
    return new_time(sec, nsec, "Local", "Local", mono)
end

function time.date(...)
    local parts = { ... }
    for i = 1, 7 do parts[i] = integer_arg(parts[i], i, "date") end
    local key, name = "Local", "Local"
    if select("#", ...) >= 8 then
        local loc = parts[8]
        if not is_location(loc) then argerror(8, "date", "Location", loc) end
        local l = fields(loc)
        key, name = l.key, l.name
    end
    local sec, nsec = host.date(parts[1], parts[2], parts[3], parts[4], parts[5], parts[6], parts[7], key)
    return new_time(sec, nsec, key, name)
end

function time.unix(sec, nsec)
    sec, nsec = integer_arg(sec, 1, "unix"), integer_arg(nsec, 2, "unix")
    local s, n = plus(sec, 0, nsec)
    return new_time(s, n, "Local", "Local")
end

function time.parse(...)
    local layout, value, loc = ...
    layout, value = string_arg(layout, 1, "parse"), string_arg(value, 2, "parse")
    local refused = charge_text(layout, "layout") or charge_text(value, "value")
    if refused then return nil, invalid(refused) end
    local key = "Local"
    if select("#", ...) >= 3 then
        if not is_location(loc) then argerror(3, "parse", "Location", loc) end
        key = fields(loc).key
    end
    local sec, nsec, zkey, zname = host.parse(layout, value, key)
    if sec == nil then return nil, invalid(nsec) end
    return new_time(sec, nsec, zkey, zname)
end

function time.parse_duration(v)
    local ns, err = to_ns(v)
    if ns == nil then return nil, err end
    return new_duration(ns)
end

function time.load_location(name)
    name = string_arg(name, 1, "load_location")
    if name == "" then return nil, invalid("empty location name") end
    local key, zname = host.load_location(name)
    if key == nil then return nil, host_error(zname, KINDS.NOT_FOUND, false) end
    if key == "UTC" then return UTC end
    if key == "Local" then return LOCAL end
    return new_location(key, zname)
end

function time.fixed_zone(name, offset)
    name = string_arg(name, 1, "fixed_zone")
    offset = integer_arg(offset, 2, "fixed_zone")
    return new_location("F:" .. offset .. ":" .. name, name)
end

function time.sleep(d)
    local ns, err = to_ns(d)
    if ns == nil then return nil, err end
    request("sleep", ns)
end
function time.after(d)
    local timer, err = start_timer(d, "after", TimerMT, 1)
    if timer == nil then return nil, err end
    return fields(timer).channel
end
function time.timer(d) return start_timer(d, "timer", TimerMT, 1) end
function time.ticker(d) return start_timer(d, "ticker", TickerMT, 16) end

P.modules.time = readonly(time)

-- For Python (timer fires): a local-zone Time of `ns` since the epoch, no monotonic reading.
P.new_time = function(ns)
    local sec, nsec = plus(0, 0, ns)
    return new_time(sec, nsec, "Local", "Local")
end
-- For other modules: a duration argument as nanoseconds, or nil and an INVALID error.
P.to_ns = to_ns
