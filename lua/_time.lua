-- The `time` module (wippy-modules §1). Trusted: run once per state after the
-- prelude, with `core`, `host` (Python functions, see _time_host.py) and the prelude's
-- exports. Durations, times and locations are values of this module; timers and tickers
-- are channels the scheduler fills.
local core, host, P = ...
local request, readonly = core.request, core.readonly
local setmetatable, type, error, ipairs = setmetatable, type, error, ipairs
local math_floor = math.floor
local host_error, KINDS, argerror = P.host_error, P.kinds, P.argerror
local metatable_of = core.metatable_of
local new_channel, channel_handle = P.new_channel, P.channel_handle
local private = setmetatable({}, { __mode = "k" })  -- timer table -> Python handle

local NS, US, MS, SEC = 1, 1000, 1000000, 1000000000
local MIN, HOUR = 60 * SEC, 3600 * SEC

local DurationMethods = {}
local DurationMT = { __index = DurationMethods, __name = "duration", __metatable = false }
local function new_duration(ns) return setmetatable({ _ns = ns }, DurationMT) end
function DurationMethods.nanoseconds(d) return d._ns end
function DurationMethods.microseconds(d) return d._ns // US end
function DurationMethods.milliseconds(d) return d._ns // MS end
function DurationMethods.seconds(d) return d._ns / SEC end
function DurationMethods.minutes(d) return d._ns / MIN end
function DurationMethods.hours(d) return d._ns / HOUR end
function DurationMethods.string(d) return host.format_duration(d._ns) end
DurationMT.__tostring = DurationMethods.string
DurationMT.__eq = function(a, b) return a._ns == b._ns end
DurationMT.__lt = function(a, b) return a._ns < b._ns end
DurationMT.__le = function(a, b) return a._ns <= b._ns end
DurationMT.__add = function(a, b) return new_duration(a._ns + b._ns) end
DurationMT.__sub = function(a, b) return new_duration(a._ns - b._ns) end

local function is_duration(v) return type(v) == "table" and metatable_of(v) == DurationMT end

-- A duration argument: nanoseconds, a Go duration string, or a Duration.
local function to_ns(v, fname)
    if type(v) == "number" then
        return math_floor(v)
    elseif type(v) == "string" then
        local ns, err = host.parse_duration(v)
        if ns == nil then return nil, host_error(err, KINDS.INVALID, false) end
        return ns
    elseif is_duration(v) then
        return v._ns
    end
    return nil, host_error("bad argument to '" .. fname .. "' (duration expected, got " .. type(v) .. ")",
        KINDS.INVALID, false)
end

local TimeMethods = {}
local TimeMT = { __index = TimeMethods, __name = "time", __metatable = false }
-- _ns: nanoseconds since the Unix epoch; _zone: a zone name ("UTC", "Local", or an IANA name)
local function new_time(ns, zone) return setmetatable({ _ns = ns, _zone = zone or "Local" }, TimeMT) end

local function is_time(v) return type(v) == "table" and metatable_of(v) == TimeMT end

function TimeMethods.unix(t) return t._ns // SEC end
function TimeMethods.unix_nano(t) return t._ns end
function TimeMethods.unix_milli(t) return t._ns // MS end
function TimeMethods.add(t, d)
    local ns, err = to_ns(d, "add")
    if ns == nil then error(err:message(), 2) end
    return new_time(t._ns + ns, t._zone)
end
function TimeMethods.sub(t, other)
    if not is_time(other) then argerror(1, "sub", "time", other) end
    return new_duration(t._ns - other._ns)
end
function TimeMethods.add_date(t, years, months, days)
    return new_time(host.time_add_date(t._ns, t._zone, years or 0, months or 0, days or 0), t._zone)
end
function TimeMethods.before(t, o) return t._ns < o._ns end
function TimeMethods.after(t, o) return t._ns > o._ns end
function TimeMethods.equal(t, o) return t._ns == o._ns end
function TimeMethods.utc(t) return new_time(t._ns, "UTC") end
TimeMethods["local"] = function(t) return new_time(t._ns, "Local") end
function TimeMethods.in_location(t, loc)
    if type(loc) ~= "table" or loc._zone == nil then argerror(1, "in_location", "location", loc) end
    return new_time(t._ns, loc._zone)
end
function TimeMethods.location(t) return { _zone = t._zone, string = function() return t._zone end } end
function TimeMethods.format(t, layout)
    if type(layout) ~= "string" then argerror(1, "format", "string layout", layout) end
    return host.time_format(t._ns, t._zone, layout)
end
function TimeMethods.string(t) return host.time_format(t._ns, t._zone, "2006-01-02 15:04:05.999999999 -0700 MST") end
function TimeMethods.truncate(t, d)
    if not is_duration(d) then argerror(1, "truncate", "Duration", d) end
    if d._ns <= 0 then return t end
    return new_time(t._ns - t._ns % d._ns, t._zone)
end
function TimeMethods.round(t, d)
    if not is_duration(d) then argerror(1, "round", "Duration", d) end
    if d._ns <= 0 then return t end
    local r = t._ns % d._ns
    if r + r < d._ns then return new_time(t._ns - r, t._zone) end
    return new_time(t._ns + d._ns - r, t._zone)
end
for _, field in ipairs({ "year", "month", "day", "hour", "minute", "second", "nanosecond", "weekday", "yearday" }) do
    TimeMethods[field] = function(t) return host.time_field(t._ns, t._zone, field) end
end
TimeMT.__tostring = TimeMethods.string
TimeMT.__eq = function(a, b) return a._ns == b._ns end
TimeMT.__lt = function(a, b) return a._ns < b._ns end
TimeMT.__le = function(a, b) return a._ns <= b._ns end

local TimerMethods = {}
local TimerMT = { __index = TimerMethods, __name = "timer", __metatable = false }
function TimerMethods.response(t) return t._channel end
TimerMethods.channel = TimerMethods.response
function TimerMethods.stop(t) return host.timer_stop(private[t]) end
function TimerMethods.reset(t, d)
    local ns, err = to_ns(d, "reset")
    if ns == nil then return false, err end
    if ns <= 0 then return false, host_error("duration must be positive", KINDS.INVALID, false) end
    return host.timer_reset(private[t], ns)
end

local function start_timer(d, fname, periodic)
    local ns, err = to_ns(d, fname)
    if ns == nil then return nil, err end
    if ns <= 0 then return nil, host_error("duration must be positive", KINDS.INVALID, false) end
    local ch = new_channel(1)
    local timer = setmetatable({ _channel = ch }, TimerMT)
    private[timer] = request("timer", channel_handle(ch), ns, periodic)
    return timer
end

local time = {
    NANOSECOND = NS, MICROSECOND = US, MILLISECOND = MS, SECOND = SEC, MINUTE = MIN, HOUR = HOUR,
    RFC3339 = "2006-01-02T15:04:05Z07:00", RFC3339NANO = "2006-01-02T15:04:05.999999999Z07:00",
    RFC1123 = "Mon, 02 Jan 2006 15:04:05 MST", RFC822 = "02 Jan 06 15:04 MST",
    KITCHEN = "3:04PM", DATE_TIME = "2006-01-02 15:04:05", DATE_ONLY = "2006-01-02", TIME_ONLY = "15:04:05",
    UTC = { _zone = "UTC" }, LOCAL = { _zone = "Local" },
}
time.RFC3339Nano = time.RFC3339NANO
function time.now() return new_time(host.now_ns(), "Local") end
function time.unix(sec, nsec) return new_time(math_floor(sec) * SEC + math_floor(nsec or 0), "Local") end
function time.unix_nano(ns) return new_time(math_floor(ns), "Local") end
function time.date(year, month, day, hour, min, sec, nsec, loc)
    local zone = (type(loc) == "table" and loc._zone) or "Local"
    local ns, err = host.time_date(year, month, day, hour or 0, min or 0, sec or 0, nsec or 0, zone)
    if ns == nil then return nil, host_error(err, KINDS.INVALID, false) end
    return new_time(ns, zone)
end
function time.parse(layout, value, loc)
    local zone = (type(loc) == "table" and loc._zone) or "UTC"
    local ns, zone_or_err = host.time_parse(layout, value, zone)
    if ns == nil then return nil, host_error(zone_or_err, KINDS.INVALID, false) end
    return new_time(ns, zone_or_err)
end
function time.load_location(name)
    local ok, err = host.check_zone(name)
    if not ok then return nil, host_error(err, KINDS.NOT_FOUND, false) end
    return { _zone = name, string = function() return name end }
end
function time.fixed_zone(name, offset_seconds)
    return { _zone = host.fixed_zone(name, offset_seconds), string = function() return name end }
end
function time.parse_duration(v)
    local ns, err = to_ns(v, "parse_duration")
    if ns == nil then return nil, err end
    return new_duration(ns)
end
function time.sleep(d)
    local ns, err = to_ns(d, "sleep")
    if ns == nil then error(err:message(), 2) end
    request("sleep", ns)
end
function time.after(d)
    local timer, err = start_timer(d, "after", false)
    if timer == nil then return nil, err end
    return timer._channel
end
function time.timer(d) return start_timer(d, "timer", false) end
function time.ticker(d) return start_timer(d, "ticker", true) end
P.modules.time = readonly(time)

P.new_time = new_time
P.to_ns = to_ns
