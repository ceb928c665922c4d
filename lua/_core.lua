-- The trusted core of a moonwire Lua state.
--
-- It runs once per state with the full standard library and returns the functions the
-- Python side drives the state with. User code never runs with this chunk's globals:
-- each loaded entry gets an environment built by `new_env`, holding only what
-- wippy-surface §1.2 allows, and the dangerous functions stay upvalues here.
--
-- Threads live in the `threads` table, keyed by integer id; Python refers to them by
-- id only (lupa's thread objects do not survive the trip to Python and back).

local coroutine_create, coroutine_resume = coroutine.create, coroutine.resume
local coroutine_status, coroutine_yield = coroutine.status, coroutine.yield
local coroutine_running, coroutine_close = coroutine.running, coroutine.close
local coroutine_isyieldable = coroutine.isyieldable
local sethook, traceback = debug.sethook, debug.traceback
local load, collectgarbage = load, collectgarbage
local setmetatable, getmetatable, rawget, rawset = setmetatable, getmetatable, rawget, rawset
local pairs, next, type, error, select, tostring, pcall = pairs, next, type, error, select, tostring, pcall
local table_pack, table_unpack = table.pack, table.unpack

-- Marks a yield as a request to the Python scheduler (as opposed to a user coroutine's
-- own yield). Unreachable from user code, so it cannot be forged.
local REQUEST = setmetatable({}, { __metatable = false })

local threads = {}        -- id -> thread
local managed = setmetatable({}, { __mode = "k" })  -- threads only the scheduler may resume
local next_thread_id = 0
local budget = 0          -- instructions allowed per resume; 0 = unlimited
local budget_error = nil  -- set by Python: the error value raised when a budget runs out

-- ------------------------------------------------------------------ runaway protection

local function always_fail()
    error(budget_error, 0)
end

local function over_budget()
    -- From here on every instruction fails, so a pcall loop cannot outlive its budget.
    sethook(coroutine_running(), always_fail, "", 1)
    error(budget_error, 0)
end

-- ------------------------------------------------------------------ requests

-- Suspend the calling Lua thread until Python answers `op`. Works from inside user
-- coroutines too: their resume forwards requests outwards (see `user_resume`).
local function request(op, ...)
    return coroutine_yield(REQUEST, op, ...)
end

-- `coroutine.resume` as user code sees it. A request yielded inside a user coroutine is
-- passed up to the scheduler and its answer passed back down, so blocking calls work
-- at any depth of user coroutines.
local function user_resume(co, ...)
    if type(co) ~= "thread" then
        error("bad argument #1 to 'resume' (coroutine expected)", 2)
    end
    if managed[co] then
        error("cannot resume a thread run by the scheduler", 2)
    end
    if budget > 0 then
        -- Every thread has its own instruction count; without this a loop inside a
        -- user coroutine would escape the budget.
        sethook(co, over_budget, "", budget)
    end
    local result = table_pack(coroutine_resume(co, ...))
    while result[1] and result[2] == REQUEST and coroutine_status(co) == "suspended" do
        result = table_pack(coroutine_resume(co, coroutine_yield(REQUEST, table_unpack(result, 3, result.n))))
    end
    return table_unpack(result, 1, result.n)
end

local function user_wrap(fn)
    local co = coroutine_create(fn)
    return function(...)
        local result = table_pack(user_resume(co, ...))
        if not result[1] then
            error(result[2], 0)
        end
        return table_unpack(result, 2, result.n)
    end
end

-- ------------------------------------------------------------------ Python's side

local core = {}

function core.set_limits(instructions, err)
    budget = instructions or 0
    budget_error = err
end

-- Create a thread that will run fn; its first resume passes fn's arguments. Returns
-- the thread's id.
function core.spawn(fn)
    local co = coroutine_create(fn)
    next_thread_id = next_thread_id + 1
    threads[next_thread_id] = co
    managed[co] = true
    return next_thread_id
end

-- Resume thread `id` with `...`. Returns one of:
--   "request", op, args...   the thread waits for Python to answer `op`
--   "return", values...      the thread finished
--   "error", err, traceback  the thread raised
--   "yield"                  the thread yielded outside any user coroutine (a misuse)
function core.resume(id, ...)
    local co = threads[id]
    if budget > 0 then
        sethook(co, over_budget, "", budget)
    end
    local result = table_pack(coroutine_resume(co, ...))
    if coroutine_status(co) == "dead" then
        threads[id] = nil
        if result[1] then
            return "return", table_unpack(result, 2, result.n)
        end
        local err = result[2]
        if err == "not enough memory" then
            return "error", err  -- a traceback would need memory too
        end
        return "error", err, traceback(co, type(err) == "string" and err or nil)
    end
    if result[2] == REQUEST then
        return "request", table_unpack(result, 3, result.n)
    end
    threads[id] = nil
    return "yield"
end

-- Create a thread running fn(...) and resume it at once: returns the thread's id, then
-- what core.resume returns. One call from Python, where spawn and resume would be two,
-- for the common case of a function call that never waits.
function core.start(fn, ...)
    local id = core.spawn(fn)
    return id, core.resume(id, ...)
end

-- Stop a thread for good (its pending request is abandoned).
function core.kill(id)
    local co = threads[id]
    threads[id] = nil
    if co ~= nil then
        pcall(coroutine_close, co)
    end
end

function core.thread_count()
    local n = 0
    for _ in pairs(threads) do n = n + 1 end
    return n
end

function core.collect()
    collectgarbage("collect")
end

-- Compile text (never bytecode) into a chunk that runs with the environment it is
-- called with: `chunk(env)`. One compiled chunk serves every instance (function
-- prototypes are shared); the prefix sits on line 1 so line numbers stay true.
function core.compile(text, chunkname)
    if text:byte(1) == 27 then
        return nil, "attempt to load a binary chunk (mode is 't')"
    end
    return load("local _ENV = ...; " .. text, "=" .. chunkname, "t", {})
end

-- ------------------------------------------------------------------ environments

-- Tables user code can see but never change: the library views and everything that
-- environments share. `rawset` refuses them, `__newindex` refuses them, `__metatable`
-- hides their metatable, so sharing them between units of one state leaks nothing.
local protected = setmetatable({}, { __mode = "k" })

local function deny_write(_, key)
    error("attempt to modify read-only table (field '" .. tostring(key) .. "')", 2)
end

local function guarded_rawset(t, k, v)
    if protected[t] then
        error("attempt to modify read-only table (field '" .. tostring(k) .. "')", 2)
    end
    return rawset(t, k, v)
end

-- A read-only view of `lib`. Reads fall through to `lib`, which stays live for trusted
-- code (make_deterministic swaps functions in `safe_os` after views exist); iteration
-- goes through a closure, so `pairs(view)` hands out lib's values but never lib itself
-- (handing out `next, lib` let any unit rewrite what all units share). Plain tables
-- nested in `lib` (`time.UTC`, `process.registry`) become views of their own, in place:
-- `lib` is private, and trusted code keeps its own references to the nested tables.
local function readonly(lib)
    protected[lib] = true  -- also ends the recursion on a cycle of nested tables
    for k, v in next, lib do
        if type(v) == "table" and getmetatable(v) == nil and not protected[v] then
            lib[k] = readonly(v)
        end
    end
    local function iterate(_, key) return next(lib, key) end
    local view = setmetatable({}, {
        __index = lib,
        __newindex = deny_write,
        __metatable = false,
        __pairs = function(t) return iterate, t, nil end,
    })
    protected[view] = true
    return view
end
core.readonly = readonly

local function copy(lib, except)
    local out = {}
    for k, v in pairs(lib) do
        if not (except and except[k]) then out[k] = v end
    end
    return out
end

local safe_string = copy(string, { dump = true })
local safe_os = { clock = os.clock, date = os.date, difftime = os.difftime, time = os.time }

-- For a workflow's state (DESIGN §11): what would differ on replay reads the workflow's
-- clock and seed instead, and what cannot be replayed is refused. `now_seconds` and
-- `refuse(what)` are Python functions; refuse records the violation so the run fails
-- its workflow task even if user code catches the error.
function core.make_deterministic(seed, now_seconds, refuse)
    math.randomseed(seed)
    local os_time, os_date = os.time, os.date
    safe_os.time = function(t)
        if t == nil then return now_seconds() end
        return os_time(t)
    end
    safe_os.date = function(format, t)
        return os_date(format, t or now_seconds())
    end
    safe_os.clock = function()
        refuse("os.clock")
        error("os.clock is not deterministic inside a workflow: use time.now()", 2)
    end
end
local safe_coroutine = {
    create = coroutine_create,
    resume = user_resume,
    wrap = user_wrap,
    yield = coroutine_yield,
    status = coroutine_status,
    running = coroutine_running,
    isyieldable = coroutine_isyieldable,
    -- Closing the unit's own thread would end it with no error and no result; closing
    -- another unit's is refused like resuming it.
    close = function(co)
        if managed[co] then
            error("coroutine.close: cannot close a thread run by the scheduler "
                  .. "(return from it, or raise an error)", 2)
        end
        return coroutine_close(co)
    end,
    spawn = function(fn)
        if type(fn) ~= "function" then
            error("bad argument #1 to 'spawn' (function expected, got " .. type(fn) .. ")", 2)
        end
        return request("spawn", fn)
    end,
}

-- Strings index a copy without `dump`, and their metatable is hidden, so no user can
-- reach or change what every other environment's strings share.
local string_meta = getmetatable("")
string_meta.__index = safe_string
string_meta.__metatable = false

local base = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    pcall = pcall, xpcall = xpcall, rawequal = rawequal, rawget = rawget, rawset = guarded_rawset,
    select = select, setmetatable = setmetatable, getmetatable = getmetatable,
    tonumber = tonumber, tostring = tostring, type = type, _VERSION = _VERSION,
}
local libraries = {
    string = safe_string, table = table, math = math, os = safe_os, coroutine = safe_coroutine,
}

-- What every environment of this state sees: the base functions, read-only views of
-- the libraries and `globals` (the moonwire modules). Built once; environments reach it
-- through a hidden __index, so an environment costs one small table.
local env_meta = { __metatable = false }

function core.set_globals(globals)
    local shared = {}
    for k, v in pairs(base) do shared[k] = v end
    for k, lib in pairs(libraries) do shared[k] = readonly(lib) end
    for k, v in pairs(globals) do shared[k] = v end
    protected[shared] = true
    env_meta.__index = shared
end

-- A fresh global table for one instance of a chunk: writes stay in it, reads fall
-- through to the shared globals.
function core.new_env()
    local env = setmetatable({}, env_meta)
    rawset(env, "_G", env)
    return env
end

core.request = request
core.metatable_of = debug.getmetatable  -- sees through __metatable; trusted code only

-- Nothing below is meant for user code; drop what lupa put in the real globals.
python = nil

return core
