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
local sethook, gethook, traceback = debug.sethook, debug.gethook, debug.traceback
local load, collectgarbage = load, collectgarbage
local setmetatable, getmetatable, rawget, rawset = setmetatable, getmetatable, rawget, rawset
local pairs, next, type, error, select, tostring, pcall = pairs, next, type, error, select, tostring, pcall
local table_pack, table_unpack = table.pack, table.unpack

-- Marks a yield as a request to the Python scheduler (as opposed to a user coroutine's
-- own yield). Unreachable from user code, so it cannot be forged.
local REQUEST = setmetatable({}, { __metatable = false })

local threads = {}        -- id -> thread
local owners = {}         -- id -> the mailbox box of the process the thread belongs to (_prelude.lua)
local current_owner = nil -- the box of the thread being resumed (nil: a function call, no process)
local managed = setmetatable({}, { __mode = "k" })  -- threads only the scheduler may resume
local next_thread_id = 0
local budget = 0          -- instructions allowed per resume; 0 = unlimited
local budget_error = nil  -- set by Python: the error value raised when a budget runs out

-- ------------------------------------------------------------------ runaway protection
--
local patterns = ...      -- lua/_patterns.lua: the matcher that can be interrupted

-- The budget is a count per scheduler resume, shared by the unit's thread and every
-- user coroutine it resumes. A count hook adds TICK every TICK instructions, and
-- library functions whose cost grows with their input (one C call, one instruction to
-- the hook) add their cost with `charge` before they run; see docs/architecture.md,
-- "How C functions are bounded".

local TICK = 1000          -- instructions between two hook calls (bench/hostile.py: overhead)
local used = 0             -- instructions run and costs charged during this resume
local metering = false     -- inside a resume with a budget: `used` counts

local function always_fail()
    error(budget_error, 0)
end

local function over_budget()
    -- From here on every instruction fails, so a pcall loop cannot outlive its budget.
    sethook(coroutine_running(), always_fail, "", 1)
    error(budget_error, 0)
end

-- The memory limit user code sees (KiB; nil: none). lupa's own limit sits a reserve
-- above it: an allocation lupa makes while it holds the GIL (the value a Python
-- function returns, a wrapper for a Python object) must never fail, because the error
-- then jumps out with the GIL taken and the next return to Python waits for it for
-- ever (a frozen node). The hook checks this limit instead, from Lua, where an error is
-- harmless; a full collection first, as Lua's allocator does before it gives up.
local memory_limit_kb = nil
local gc = collectgarbage
-- Python memory that Lua values keep alive (a channel's Python object), in KiB: counted
-- against the same limit, so a state cannot pin memory outside it (core.hold).
local held_kb = 0

-- ------------------------------------------------------------------ wrappers of Python objects
--
-- lupa hands Lua a Python object as a userdata wrapper and finds that wrapper again,
-- when it hands over the same object, through a dict keyed by the object's address and
-- a weak table of wrappers (slots from luaL_ref). When a wrapper dies, Lua clears its
-- slot at once but runs lupa's finaliser, which frees the slot, later, between steps of
-- the program. A wrapper made in between can be given the cleared slot (luaL_ref takes
-- the table's length when its free list is empty); the late finaliser then frees that
-- slot under it, the slot goes to the next object handed over, and handing Lua the
-- first object again gives it that other object: another process's channel, say
-- (lupa issue #294; Lua 5.5 often, 5.4 too once the timing is arranged). The same double
-- release loops lupa's free list, after which the table grows by a slot for every
-- object handed over, for good.
--
-- So the table is strong: no wrapper dies while Lua code runs. `release_wrappers` lets
-- the dead ones go inside one full collection, which runs every finaliser it makes due
-- before it returns, with no wrapper made in between: every slot is freed before it can
-- be given out again. User code's own finalisers, the only Lua code that could make a
-- wrapper inside that collection, never run (`user_setmetatable`).
local refs = debug.getregistry().LUPA_PYTHON_REFERENCES_TABLE
local refs_meta = refs and debug.getmetatable(refs)  -- lupa's own, { __mode = "v" }, used by nothing else
-- Another lupa could keep its wrappers otherwise: stop rather than run unprotected.
assert(refs_meta and refs_meta.__mode == "v", "lupa's LUPA_PYTHON_REFERENCES_TABLE is not as lua/_core.lua expects")
refs_meta.__mode = ""  -- strong; a string either way, so switching it allocates nothing

-- Wrappers handed over since the last release, counted where trusted code gets them
-- (opaque objects' tokens, channels, futures, timers), in tokens' worth: a token's
-- wrapper keeps about WRAPPER_BYTES of Python (the token, lupa's dict entry and
-- reference; 160 bytes of Lua heap with its fields), a channel its Python object's
-- size more. A release is a full collection, about 0.6 ms per MiB of heap
-- (bench/identity.py --pause), so it comes after as many new wrappers as were alive
-- after the last one, or two per KiB of heap then, or RELEASE_MIN, whichever is most:
-- dead wrappers stay within about a third of the heap (and as much Python memory),
-- as Lua's own pause keeps garbage within a multiple of it, and a release costs about
-- 0.3 us per wrapper.
local RELEASE_MIN = 4096
local WRAPPERS_PER_KB = 2
local WRAPPER_BYTES = 200
local math_max = math.max
local handed = 0
local release_after = RELEASE_MIN
local leftover_holes = 0  -- empty slots that survive a release (none expected)

local function release_wrappers()
    refs_meta.__mode = "v"
    gc("collect")
    refs_meta.__mode = ""
    local live, present, top = 0, 0, 0
    for slot, v in next, refs do
        present = present + 1
        if slot > top then top = slot end
        if type(v) == "userdata" then live = live + 1 end
    end
    if top - present > leftover_holes then
        -- A slot still cleared and not freed: an emergency collection inside that one
        -- (an allocation failing in a finaliser) skipped its finaliser. Run it now,
        -- while the table is strong, before any wrapper can be made.
        gc("collect")
        present = 0
        for _ in next, refs do present = present + 1 end
        leftover_holes = top - present
    end
    handed = 0
    release_after = math_max(RELEASE_MIN, live, gc("count") * WRAPPERS_PER_KB // 1)
end

local function tick()
    used = used + TICK
    if used > budget then over_budget() end
    if handed > release_after then release_wrappers() end
    if memory_limit_kb ~= nil and gc("count") + held_kb > memory_limit_kb then
        release_wrappers()
        if gc("count") + held_kb > memory_limit_kb then error("not enough memory", 0) end
    end
end

-- Account `cost` instructions' worth of work about to be done by C; fails with the
-- budget's error, before the work, when it does not fit.
local function charge(cost)
    if metering and cost > 0 then
        used = used + cost
        if used > budget then over_budget() end
    end
end

-- Instructions this resume may still run (math.huge: no budget, or not in a resume).
local function remaining()
    if not metering then return math.huge end
    return budget - used
end

-- A thread keeps its hook (and its partial count) across resumes: setting it afresh on
-- every resume would forget up to TICK instructions each time.
local function meter(co)
    if gethook(co) ~= tick then sethook(co, tick, "", TICK) end
end

-- ------------------------------------------------------------------ requests

-- Suspend the calling Lua thread until Python answers `op`. Works from inside user
-- coroutines too: their resume forwards requests outwards (see `user_resume`).
local charge_values  -- the cost of converting values for Python; defined with the bounded C functions

local function request(op, ...)
    if metering then
        -- Only tables and long strings cost anything to convert. Checked here, with C
        -- calls only: a deeper Lua call on every request grew every waiting thread's
        -- stack and call chain for good (+0.8 KiB per idle process, bench/processes.py).
        for i = 1, select("#", ...) do
            local v = select(i, ...)
            local t = type(v)
            if t == "table" or t == "userdata" or t == "string" and #v > 256 then
                charge_values(...)
                break
            end
        end
    end
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
    if metering then
        -- User coroutines count into the same budget; without this a loop inside one
        -- would escape it.
        if used > budget then over_budget() end
        meter(co)
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

-- `bytes` of Python memory held (negative: released) by a Lua value.
function core.hold(bytes)
    held_kb = held_kb + bytes / 1024
end

-- Trusted code was handed a new wrapper of a Python object that keeps about `bytes` of
-- Python memory (see release_wrappers; nil: a token's worth).
function core.handed(bytes)
    handed = handed + (bytes and bytes / WRAPPER_BYTES or 1)
end

function core.set_limits(instructions, err, memory_bytes)
    budget = instructions or 0
    budget_error = err
    memory_limit_kb = memory_bytes and memory_bytes / 1024 or nil
end

-- Create a thread that will run fn; its first resume passes fn's arguments. Returns
-- the thread's id. `owner`: the box of the process it belongs to (the local message
-- path knows the sender by it, see `core.owner`), or nil.
function core.spawn(fn, owner)
    local co = coroutine_create(fn)
    next_thread_id = next_thread_id + 1
    threads[next_thread_id] = co
    managed[co] = true
    owners[next_thread_id] = owner
    return next_thread_id
end

-- The box of the process whose thread is running (nil: none, or a function call).
function core.owner() return current_owner end

-- Resume thread `id` with `...`. Returns one of:
--   "request", op, args...   the thread waits for Python to answer `op`
--   "return", values...      the thread finished
--   "error", err, traceback  the thread raised
--   "yield"                  the thread yielded outside any user coroutine (a misuse)
function core.resume(id, ...)
    local co = threads[id]
    local outer_used, outer_metering, outer_owner = used, metering, current_owner  -- a resume nested in a call from Lua
    used, metering, current_owner = 0, budget > 0, owners[id]
    if metering then
        sethook(co, tick, "", TICK)
    end
    local result = table_pack(coroutine_resume(co, ...))
    -- A nested resume (a direct spawn loading the child's chunk) runs in the outer
    -- resume's turn of the event loop: the outer one pays for it.
    used, metering, current_owner = outer_metering and outer_used + used or outer_used, outer_metering, outer_owner
    if handed > release_after then release_wrappers() end
    if coroutine_status(co) == "dead" then
        threads[id], owners[id] = nil, nil
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
    threads[id], owners[id] = nil, nil
    return "yield"
end

-- Create a thread running fn(...) and resume it at once: returns the thread's id, then
-- what core.resume returns. One call from Python, where spawn and resume would be two,
-- for the common case of a function call that never waits.
function core.start(fn, ...)
    local id = core.spawn(fn)
    return id, core.resume(id, ...)
end

-- core.start for a chunk's top level (LuaState._run_chunk), which must not block: a
-- preemption yield there would fail the load (core.preemptible), however few calls the
-- chunk made, when the state's count happened to be near its end.
local loading = 0
function core.start_load(fn, ...)
    loading = loading + 1
    local result = table_pack(core.start(fn, ...))
    loading = loading - 1
    return table_unpack(result, 1, result.n)
end
-- Loads running, one inside another (a chunk whose top level spawns directly).
function core.loads() return loading end
-- May a preemption yield now: not in a load, nor where a yield cannot cross a C call.
function core.preemptible() return loading == 0 and coroutine_isyieldable() end

-- Stop a thread for good (its pending request is abandoned).
function core.kill(id)
    local co = threads[id]
    threads[id], owners[id] = nil, nil
    if co ~= nil then
        pcall(coroutine_close, co)
    end
end

function core.thread_count()
    local n = 0
    for _ in pairs(threads) do n = n + 1 end
    return n
end

-- A full collection that also lets dead wrappers of Python objects go.
core.collect = release_wrappers

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
-- nested in `lib` (`payload.format`, `process.registry`) become views of their own, in place:
-- `lib` is private, and trusted code keeps its own references to the nested tables.
local function readonly(lib, extra)
    protected[lib] = true  -- also ends the recursion on a cycle of nested tables
    for k, v in next, lib do
        if type(v) == "table" and getmetatable(v) == nil and not protected[v] then
            lib[k] = readonly(v)
        end
    end
    local function iterate(_, key) return next(lib, key) end
    local meta = {
        __index = lib,
        __newindex = deny_write,
        __metatable = false,
        __pairs = function(t) return iterate, t, nil end,
    }
    -- `extra` (trusted): `methods` read before lib (a chain of tables, so lib's own
    -- names cost no function call) and a `__call`; the string view is also a type.
    if extra then
        if extra.methods then meta.__index = setmetatable(extra.methods, { __index = lib }) end
        meta.__call = extra.__call
    end
    local view = setmetatable({}, meta)
    protected[view] = true
    return view
end
core.readonly = readonly
function core.protect(t)  -- rawset refuses `t` (trusted code's own immutable tables)
    protected[t] = true
    return t
end

local function copy(lib, except)
    local out = {}
    for k, v in pairs(lib) do
        if not (except and except[k]) then out[k] = v end
    end
    return out
end

-- ------------------------------------------------------------------ bounded C functions
--
-- What a C library function costs, in instructions: its input (or output) in bytes
-- divided by BYTES_PER_INSTRUCTION (copying and scanning), its elements times
-- ELEMENT_COST (table traversal), a sort's n*log2(n) comparisons times ELEMENT_COST,
-- and the pattern matcher's steps divided by STEPS_PER_INSTRUCTION. Measured in
-- bench/hostile.py so that a charge takes about as long as that many instructions.
local BYTES_PER_INSTRUCTION = 16  -- copying (memcpy)
local CHARS_PER_INSTRUCTION = 4   -- a C loop over characters (upper, lower, reverse)
local ELEMENT_COST = 3
local STEPS_PER_INSTRUCTION = 0.5
local TEST_COST = 30  -- extra per character test of the Lua matcher, for its C calls
local SHORT = 256  -- strings this short cost too little to be worth the arithmetic

local raw_metatable = debug.getmetatable
local function typename(v)  -- as luaL_typeerror names a value
    local mt = raw_metatable(v)
    local name = mt and rawget(mt, "__name")
    if type(name) == "string" then return name end
    return type(v)
end

-- Opaque types whose values the string functions take as their text (error objects:
-- `string.find(err, "not found")` works on the message, as issue 17 asks, where Wippy
-- raises). Trusted chunks register a type with `core.textual(mt)`. The check sits only
-- on each function's non-string path, so a string argument costs nothing more.
local textual = {}  -- metatable -> true
function core.textual(mt) textual[mt] = true end
local function text_of(v)
    if type(v) == "userdata" and textual[raw_metatable(v)] then return tostring(v) end
    return nil
end

local bounded = patterns.bounded(charge, remaining, typename, STEPS_PER_INSTRUCTION, BYTES_PER_INSTRUCTION,
                                 TEST_COST, text_of)
local math_huge, math_tointeger, math_log = math.huge, math.tointeger, math.log

local function charge_bytes(n)
    if n > SHORT then charge(n // BYTES_PER_INSTRUCTION) end
end

-- The length of a string argument (numbers convert), or 0 for anything else: the C
-- function then raises its own argument error.
local function strlen(v)
    local t = type(v)
    if t == "string" then return #v end
    if t == "number" then return #tostring(v) end
    local text = text_of(v)
    return text and #text or 0
end

-- The arguments with each textual object replaced by its text; their count is kept, so
-- a missing argument stays missing for the C function's checks.
local function texts(...)
    local args = table_pack(...)
    for i = 1, args.n do
        local text = text_of(args[i])
        if text ~= nil then args[i] = text end
    end
    return table_unpack(args, 1, args.n)
end
local function is_text(v)
    return type(v) == "userdata" and textual[raw_metatable(v)] ~= nil
end

-- An integer argument, or nil (absent or not an integer: C decides what that means).
local function int(v)
    if type(v) == "number" then return math_tointeger(v) end
    return nil
end

-- How many items a range [i, j] of a length-n sequence holds, relative positions as
-- string.sub reads them.
local function span(n, i, j)
    if i < 0 then i = n + i + 1 end
    if i < 1 then i = 1 end
    if j < 0 then j = n + j + 1 elseif j > n then j = n end
    return j >= i and j - i + 1 or 0
end

local string_gmatch, string_find = string.gmatch, string.find

local safe_string = copy(string, { dump = true })
safe_string.find, safe_string.match = bounded.find, bounded.match
safe_string.gmatch, safe_string.gsub = bounded.gmatch, bounded.gsub

-- Each wrapper takes `...` and hands it on whole, so the C function sees the same
-- arguments (a missing one stays "no value"); the C function's local is named as Lua
-- names it, for its argument errors.
do
    local rep = string.rep
    function safe_string.rep(...)
        local s, n, sep = ...
        if type(s) == "userdata" and is_text(s) or type(sep) == "userdata" and is_text(sep) then
            return safe_string.rep(texts(...))
        end
        local count = int(n)
        if metering and count and count > 0 then
            -- a copy per repetition, however short
            charge(count // 2 + ((strlen(s) + strlen(sep)) * count) // BYTES_PER_INSTRUCTION)
        end
        return rep(...)
    end
end

do
    local format = string.format
    function safe_string.format(...)
        local fmt = ...
        if type(fmt) == "userdata" and is_text(fmt) then return safe_string.format(texts(...)) end
        if metering and type(fmt) == "string" then
            -- An item prints at most a few hundred bytes (widths stop at 99), plus its
            -- string argument, which %q walks character by character.
            local bytes = #fmt * 256
            for i = 2, select("#", ...) do
                bytes = bytes + strlen((select(i, ...))) * BYTES_PER_INSTRUCTION // CHARS_PER_INSTRUCTION
            end
            charge_bytes(bytes)
        end
        return format(...)
    end
end

do
    local byte = string.byte
    function safe_string.byte(...)
        local s, i, j = ...
        if type(s) == "userdata" and is_text(s) then return safe_string.byte(texts(...)) end
        if metering and j ~= nil and type(s) == "string" and int(i or 1) and int(j) then
            charge_bytes(span(#s, i or 1, j) * BYTES_PER_INSTRUCTION // 4)  -- a value pushed per byte
        end
        return byte(...)
    end
end

do
    local sub = string.sub
    function safe_string.sub(...)
        local s, i, j = ...
        if type(s) == "userdata" and is_text(s) then return safe_string.sub(texts(...)) end
        if metering and type(s) == "string" and #s > SHORT and int(i) and (j == nil or int(j)) then
            charge_bytes(span(#s, i, j or -1))
        end
        return sub(...)
    end
end

do
    local upper, lower, reverse, len = string.upper, string.lower, string.reverse, string.len
    function safe_string.upper(...)
        local s = ...
        if type(s) == "userdata" and is_text(s) then return safe_string.upper(texts(...)) end
        if metering then charge(strlen(s) // CHARS_PER_INSTRUCTION) end
        return upper(...)
    end
    function safe_string.lower(...)
        local s = ...
        if type(s) == "userdata" and is_text(s) then return safe_string.lower(texts(...)) end
        if metering then charge(strlen(s) // CHARS_PER_INSTRUCTION) end
        return lower(...)
    end
    function safe_string.reverse(...)
        local s = ...
        if type(s) == "userdata" and is_text(s) then return safe_string.reverse(texts(...)) end
        if metering then charge(strlen(s) // CHARS_PER_INSTRUCTION) end
        return reverse(...)
    end
    -- Wrapped only for textual objects: the C function is constant time.
    function safe_string.len(...)
        local s = ...
        if type(s) == "userdata" and is_text(s) then return len(texts(...)) end
        return len(...)
    end
end

-- Sizes written in a pack format ("c1000000", "s4", "!8"): at most what it pads or copies.
local function format_bytes(fmt)
    local bytes = #fmt
    if #fmt > SHORT then charge_bytes(#fmt) end
    for digits in string_gmatch(fmt, "%d+") do bytes = bytes + (math_tointeger(tonumber(digits)) or math_huge) end
    return bytes
end

do
    local pack, unpack = string.pack, string.unpack
    function safe_string.pack(...)
        local fmt = ...
        for i = 1, select("#", ...) do
            if is_text((select(i, ...))) then return safe_string.pack(texts(...)) end
        end
        if metering and type(fmt) == "string" then
            local bytes = format_bytes(fmt)
            for i = 2, select("#", ...) do bytes = bytes + strlen((select(i, ...))) end
            charge_bytes(bytes)
        end
        return pack(...)
    end
    function safe_string.unpack(...)
        local fmt, s = ...
        if is_text(fmt) or is_text(s) then return safe_string.unpack(texts(...)) end
        if metering and type(fmt) == "string" then
            -- It reads what the format says, except strings ("s", "z"), which may be all of s.
            local bytes = format_bytes(fmt)
            if string_find(fmt, "[sz]") then bytes = bytes + strlen(s) end
            charge_bytes(bytes)
        end
        return unpack(...)
    end
end

-- The table library, with the functions whose cost grows with the table charged.
local safe_table = copy(table)

do
    local sort = table.sort
    function safe_table.sort(...)
        local t = ...
        if metering and type(t) == "table" then
            local n = #t
            if n > 1 then charge((n * math_log(n, 2) * ELEMENT_COST) // 1) end
        end
        return sort(...)
    end
end

do
    local concat = table.concat
    function safe_table.concat(...)
        local t, sep, i, j = ...
        if not (metering and type(t) == "table") then return concat(...) end
        local first, last = int(i or 1), int(j or #t)
        if not (first and last) then return concat(...) end
        if last >= first then charge((last - first + 1) * ELEMENT_COST) end
        local result = concat(t, sep, first, last)
        charge_bytes(#result)  -- the copy, known once done; a single call is bounded by memory
        return result
    end
end

do
    local unpack = table.unpack
    function safe_table.unpack(...)
        local t, i, j = ...
        if metering and type(t) == "table" then
            local first, last = int(i or 1), int(j or #t)
            if first and last and last >= first then charge((last - first + 1) * ELEMENT_COST) end
        end
        return unpack(...)
    end
end

-- insert/remove at a position shift the elements after it.
do
    local insert, remove = table.insert, table.remove
    function safe_table.insert(...)
        local t, pos = ...
        if metering and select("#", ...) == 3 and type(t) == "table" and int(pos) then
            charge((#t - int(pos) + 1) * ELEMENT_COST)
        end
        return insert(...)
    end
    function safe_table.remove(...)
        local t, pos = ...
        if metering and type(t) == "table" and int(pos) then
            charge((#t - int(pos) + 1) * ELEMENT_COST)
        end
        return remove(...)
    end
end

do
    local move = table.move
    function safe_table.move(...)
        local _, f, e = ...
        local first, last = int(f), int(e)
        if metering and first and last and last >= first then charge((last - first + 1) * ELEMENT_COST) end
        return move(...)
    end
end

-- Values crossing to Python (json.encode, process.send, request arguments): lupa
-- converts them item by item, measured at about 1.2 us per value and 5 us per table on
-- this machine (bench/hostile.py), so a table of a million values would hold the loop for
-- seconds. The walk below runs under the count hook and charges the conversion ahead.
local ITEM_COST, TABLE_COST, MAX_DEPTH = 500, 2000, 128
local release  -- the finaliser of opaque objects (below): what marks one
local debug_getuservalue = debug.getuservalue
local function charge_value(v, depth)
    local t = type(v)
    if t == "string" then
        charge_bytes(#v)
    elseif t == "table" and depth <= MAX_DEPTH then  -- deeper is refused by the conversion
        local n, bytes = 0, 0
        for _, item in next, v do
            n = n + 1
            local kind = type(item)
            if kind == "table" or kind == "userdata" then
                charge_value(item, depth + 1)
            elseif kind == "string" then
                bytes = bytes + #item
            end
        end
        charge(TABLE_COST + n * ITEM_COST + bytes // BYTES_PER_INSTRUCTION)
    elseif t == "userdata" and depth <= MAX_DEPTH then
        -- An opaque object crosses as what it holds (a payload's value, an error's details).
        local mt = raw_metatable(v)
        if mt ~= nil and rawget(mt, "__gc") == release then
            charge_value((debug_getuservalue(v, 1)), depth + 1)
        end
    end
end

charge_values = function(...)
    if metering then
        for i = 1, select("#", ...) do charge_value((select(i, ...)), 1) end
    end
end

-- JSON text decoded in Python: parsing and building the Lua value, per byte of text.
local DECODE_BYTE_COST = 8
local function charge_decode(text)
    if metering and type(text) == "string" then charge(#text * DECODE_BYTE_COST) end
end

core.charge, core.remaining, core.charge_values, core.charge_decode = charge, remaining, charge_values, charge_decode
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

-- `setmetatable` as user code sees it: a `__gc` in the metatable is never called. A
-- finaliser runs inside whichever unit's code the collector happens to interrupt, with
-- that unit's context, actor and mailbox (a process's finaliser read another process's
-- `ctx`), and inside release_wrappers it could hand Lua a new wrapper of a Python object
-- while finalisers are still due. Lua only marks an object for finalisation if its
-- metatable has `__gc` when it is set, so the field is left out for that moment.
local function user_setmetatable(t, mt)
    local finaliser = type(mt) == "table" and rawget(mt, "__gc")
    if finaliser == nil or finaliser == false then
        return setmetatable(t, mt)
    end
    rawset(mt, "__gc", nil)
    local ok, err = pcall(setmetatable, t, mt)
    rawset(mt, "__gc", finaliser)
    if not ok then error(err, 0) end
    return t
end

local base = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    pcall = pcall, xpcall = xpcall, rawequal = rawequal, rawget = rawget, rawset = guarded_rawset,
    select = select, setmetatable = user_setmetatable, getmetatable = getmetatable,
    tonumber = tonumber, tostring = tostring, type = type, _VERSION = _VERSION,
}
local libraries = {
    string = safe_string, table = safe_table, math = math, os = safe_os, coroutine = safe_coroutine,
}

-- What every environment of this state sees: the base functions, read-only views of
-- the libraries and `globals` (the moonwire modules). Built once; environments reach it
-- through a hidden __index, so an environment costs one small table.
local env_meta = { __metatable = false }

function core.set_globals(globals, views)
    local shared = {}
    for k, v in pairs(base) do shared[k] = v end
    for k, lib in pairs(libraries) do shared[k] = readonly(lib, views and views[k]) end
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

-- ------------------------------------------------------------------ opaque objects
--
-- Wippy's Time, Duration, error objects and the like are userdata: `type(v)` says
-- "userdata", nothing can be read or written through them but their methods, `pairs`
-- refuses them. Lua alone cannot make a userdata, so each one starts as a lupa wrapper
-- of a fresh, empty Python object (tokens come from Python in batches) whose metatable
-- is then swapped for the type's own; the object's fields live in its user value. The
-- lupa metatable is never reachable from user code, and when the userdata is
-- collected its finaliser hands it back to lupa, whose own finaliser drops the Python
-- reference (bench/hostile.py measures the cost: a few microseconds per batch).
local debug_setmetatable, getuservalue, setuservalue = debug.setmetatable, debug.getuservalue, debug.setuservalue
local token_source = nil  -- Python: returns a batch of fresh tokens
local tokens, token_count = {}, 0
local lupa_meta, lupa_gc = nil, nil

-- What a released object keeps: a user finaliser may still hold it (resurrection), and
-- must then find neither lupa's metatable (shared by every Python object of the state:
-- replacing its __call intercepted trusted code's calls into Python) nor a working object.
local Finalised = { __name = "finalised object", __metatable = false,
                    __index = function() error("attempt to use a finalised object", 2) end }

local function take_lupa_meta()
    if lupa_meta == nil then
        lupa_meta = debug.getmetatable(tokens[1])
        lupa_gc = lupa_meta.__gc
        lupa_meta.__metatable = false  -- getmetatable() of any Python object says false
    end
end

-- Also hides lupa's metatable from the state's start (a Python exception a host function
-- let through carries it too).
function core.set_token_source(fn)
    token_source = fn
    if token_count == 0 then
        tokens = table_pack(token_source())
        token_count = tokens.n
    end
    take_lupa_meta()
end

-- lupa's finaliser, run on the object with lupa's metatable back, drops the Python
-- reference; the object then keeps a metatable with no finaliser and no way in.
release = function(object)
    debug_setmetatable(object, lupa_meta)
    pcall(lupa_gc, object)
    debug_setmetatable(object, Finalised)
end

-- A metatable for an opaque type named `name`: `methods` is its __index (a table or a
-- function); `meta` may add __tostring, __concat, __eq... Returns the metatable.
function core.object_type(name, methods, meta)
    local mt = { __name = name, __index = methods, __metatable = false, __gc = release }
    if meta then
        for k, v in pairs(meta) do mt[k] = v end
    end
    return mt
end

-- A new opaque object of type `mt` (from core.object_type) holding `fields` (a table).
function core.new_object(mt, fields)
    if token_count == 0 then
        tokens = table_pack(token_source())
        token_count = tokens.n
        handed = handed + token_count
        -- Here too, for a state without an instruction budget (no count hook).
        if handed > release_after then release_wrappers() end
    end
    local object = tokens[token_count]
    tokens[token_count] = nil
    token_count = token_count - 1
    debug_setmetatable(object, mt)
    setuservalue(object, fields, 1)
    return object
end

-- The fields of an opaque object (trusted code only: check its type first).
function core.fields(object)
    return (getuservalue(object, 1))
end

-- Nothing below is meant for user code; drop what lupa put in the real globals.
python = nil

return core
