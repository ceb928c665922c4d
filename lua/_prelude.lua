-- The moonwire modules, as user code sees them. Trusted: runs once per state after
-- the core, with `core` and `host` (Python functions) as arguments. Python functions
-- are only ever upvalues here, never values user code can reach.
--
-- Blocking operations yield one kind of request to the scheduler (`core.request`);
-- everything else calls `host` directly.

local core, host = ...
local request, readonly = core.request, core.readonly
local setmetatable, getmetatable, type, error, select, tostring, tonumber, pairs, ipairs, rawget =
      setmetatable, getmetatable, type, error, select, tostring, tonumber, pairs, ipairs, rawget
local table_pack, table_unpack, table_concat = table.pack, table.unpack, table.concat
local getinfo = debug.getinfo
local math_floor = math.floor

local M = {}          -- what Python gets back
local modules = {}    -- require()-able modules, by name
local globals = {}    -- always-present globals

local function argerror(n, fname, expected, got)
    error("bad argument #" .. n .. " to '" .. fname .. "' (" .. expected .. " expected, got " .. type(got) .. ")", 3)
end

-- ====================================================================== errors
--
-- Error objects are userdata (wippy-modules §4) holding:
--   message   what :message() says; a wrap keeps its parent's
--   text      what tostring, `..` and the string functions see: "context: " .. the
--             parent's text for a wrap (issue 17's rule; Wippy shows the message only),
--             else the message
--   kind, retryable, details (string keys only, nil when empty; never handed out:
--             :details() copies), frames (where it was made), context and cause (a
--             wrap's context and its parent's fields, for :stack())
-- Python sees the text as the error's message (`error_fields`), as Wippy's host logs do.

local new_object, fields_of, metatable_of = core.new_object, core.fields, core.metatable_of

local KINDS = {
    NOT_FOUND = "NotFound", ALREADY_EXISTS = "AlreadyExists", INVALID = "Invalid",
    PERMISSION_DENIED = "PermissionDenied", UNAVAILABLE = "Unavailable", INTERNAL = "Internal",
    CANCELED = "Canceled", CONFLICT = "Conflict", TIMEOUT = "Timeout", RATE_LIMITED = "RateLimited",
    UNKNOWN = "",
}

local function capture_frames(level)
    local frames = {}
    while #frames < 32 do
        local info = getinfo(level, "Sln")
        if info == nil then break end
        if info.what ~= "C" then
            frames[#frames + 1] = { source = info.short_src, line = info.currentline, name = info.name }
        end
        level = level + 1
    end
    return frames
end

local ErrorMethods = {}
local ErrorMT

local function is_error(v)
    return type(v) == "userdata" and metatable_of(v) == ErrorMT
end

-- Details as Wippy keeps them: string keys only, at every level (`{items = {1, 2}}`
-- comes back `{items = {}}`); functions and coroutines dropped. `next`, not `pairs`:
-- a user's __pairs does not get to run here. Deeper than MAX_DETAILS_DEPTH is dropped
-- (that is also where a cycle ends).
local MAX_DETAILS_DEPTH = 64
local function copy_details(t, depth)
    local out, any = {}, false
    for k, v in next, t do
        if type(k) == "string" then
            local kind = type(v)
            if kind == "table" then
                if depth < MAX_DETAILS_DEPTH then out[k] = (copy_details(v, depth + 1)); any = true end
            elseif kind ~= "function" and kind ~= "thread" then
                out[k] = v
                any = true
            end
        end
    end
    return out, any
end
local function kept_details(details)
    if type(details) ~= "table" then return nil end
    local out, any = copy_details(details, 1)
    return any and out or nil
end

local function new_error(message, kind, retryable, details, frames)
    return new_object(ErrorMT, {
        message = message, text = message, kind = kind or "", retryable = retryable,
        details = kept_details(details), frames = frames or {},
    })
end

local function receiver(e, name)
    if not is_error(e) then
        error("calling '" .. name .. "' on bad self (error expected, got " .. type(e) .. ")", 3)
    end
    return fields_of(e)
end

function ErrorMethods.kind(e) return receiver(e, "kind").kind end
function ErrorMethods.message(e) return receiver(e, "message").message end
function ErrorMethods.retryable(e) return receiver(e, "retryable").retryable end
function ErrorMethods.details(e)
    local details = receiver(e, "details").details
    return details and (copy_details(details, 1)) or nil
end
local function frame_lines(lines, frames)
    for _, f in ipairs(frames) do
        lines[#lines + 1] = "  " .. f.source .. ":" .. tostring(f.line) .. (f.name and (" (" .. f.name .. ")") or "")
    end
end
-- Per link of the chain, outermost first: its context (the message for the innermost
-- error), then its Lua frames.
local function stack_of(f)
    local lines = {}
    while f do
        lines[#lines + 1] = f.context or f.message
        frame_lines(lines, f.frames)
        f = f.cause
    end
    return table_concat(lines, "\n")
end
function ErrorMethods.stack(e) return stack_of(receiver(e, "stack")) end

local function text_of(v)
    if is_error(v) then return fields_of(v).text end
    local t = type(v)
    if t == "string" or t == "number" then return v end
    error("attempt to concatenate a " .. t .. " value", 3)
end

ErrorMT = core.object_type("error", ErrorMethods, {
    __tostring = function(e) return fields_of(e).text end,
    __concat = function(a, b) return text_of(a) .. text_of(b) end,
})
core.textual(ErrorMT)  -- string.find(err, ...) and friends work on the text

local errors = {}
for k, v in pairs(KINDS) do errors[k] = v end

-- A second argument is ignored, as Wippy's VM does.
function errors.new(spec)
    local t = type(spec)
    if t == "string" then
        return new_error(spec, "", nil, nil, capture_frames(3))
    elseif t == "table" then
        local message = spec.message
        if type(message) ~= "string" then
            error("errors.new: message must be a string, got " .. type(message), 2)
        end
        local kind, retryable = spec.kind, spec.retryable
        if type(retryable) ~= "boolean" then retryable = nil end  -- ignored, as Wippy
        return new_error(message, type(kind) == "string" and kind or "", retryable, spec.details, capture_frames(3))
    end
    error("errors.new: expected string or table, got " .. t, 2)
end

function errors.wrap(parent, context)
    if is_error(context) then
        context = fields_of(context).message
    elseif type(context) == "number" then
        context = tostring(context)
    elseif type(context) ~= "string" then
        argerror(2, "wrap", "string or error", context)
    end
    if is_error(parent) then
        local p = fields_of(parent)
        return new_object(ErrorMT, {
            message = p.message, text = context .. ": " .. p.text, kind = p.kind, retryable = p.retryable,
            details = p.details, frames = capture_frames(3), context = context, cause = p,
        })
    elseif type(parent) == "string" then
        return new_object(ErrorMT, {
            message = parent, text = context .. ": " .. parent, kind = "", frames = capture_frames(3),
            context = context, cause = { message = parent, frames = {} },
        })
    end
    argerror(1, "wrap", "error or string", parent)
end

function errors.is(v, kind)
    local t = type(kind)
    if t == "number" then
        kind = tostring(kind)
    elseif t ~= "string" then
        argerror(2, "is", "string", kind)
    end
    return is_error(v) and fields_of(v).kind == kind
end

function errors.call_stack(v)
    if not is_error(v) then return nil end
    local frames = {}
    local f = fields_of(v)
    while f do
        for _, frame in ipairs(f.frames) do
            frames[#frames + 1] = { level = #frames + 1, source = frame.source, line = frame.line,
                                    name = frame.name, type = "lua" }
        end
        f = f.cause
    end
    if #frames == 0 then return nil end
    return { thread = "main", frames = frames }
end

-- Python's view of error objects: the text is the message there.
function M.error_fields(v)
    if is_error(v) then
        local f = fields_of(v)
        return f.text, f.kind, f.retryable, f.details, stack_of(f)
    end
    return nil
end
function M.make_error(message, kind, retryable, details)
    return new_error(message, kind, retryable, details, {})
end
-- An error made by a module. With `context` (a label such as "json.decode"), the
-- message stays the cause's text and tostring shows "context: message".
local function host_error(message, kind, retryable, context)
    local e = new_error(message, kind, retryable, nil, capture_frames(3))
    if context ~= nil then
        local f = fields_of(e)
        f.text, f.context, f.cause = context .. ": " .. message, context, { message = message, frames = {} }
    end
    return e
end

-- What Python makes of userdata crossing to it (_values.py): an error's fields, what a
-- type registered in `crossings` says (payloads), else the text tostring gives (Wippy's
-- rule for userdata turned into host values).
local crossings = {}  -- metatable -> function(v) returning a tag and values
function M.userdata_parts(v)
    local mt = metatable_of(v)
    if mt == ErrorMT then return "error" end
    local crossing = crossings[mt]
    if crossing ~= nil then return crossing(v) end
    return "text", tostring(v)
end

globals.errors = readonly(errors)

-- ====================================================================== channels

local ChannelMethods = {}
local ChannelMT = { __index = ChannelMethods, __name = "channel", __metatable = false }
-- Python objects behind user-visible tables live only in these weak maps, never in a
-- field user code could read.
local handles = setmetatable({}, { __mode = "k" })  -- channel table -> Python channel
local private = setmetatable({}, { __mode = "k" })  -- timer or future table -> Python handle

-- What a channel's Python object costs (lua/_channel.py, measured with tracemalloc),
-- counted against the state's memory limit while the channel lives (core.hold).
local CHANNEL_BYTES = 1024
local hold, handed = core.hold, core.handed
ChannelMT.__gc = function() hold(-CHANNEL_BYTES) end

local function wrap_channel(handle)
    hold(CHANNEL_BYTES)
    handed(CHANNEL_BYTES)
    local ch = setmetatable({}, ChannelMT)
    handles[ch] = handle
    return ch
end
M.wrap_channel = wrap_channel

local function handle_of(ch, fname)
    local h = type(ch) == "table" and handles[ch]
    if not h then argerror(1, fname, "channel", ch) end
    return h
end

local function raise_if(ok, message)
    if ok == false then error(message, 3) end
end

function ChannelMethods.send(ch, value)
    raise_if(request("chan_send", handle_of(ch, "send"), value))
    return true
end
-- Calls that complete without waiting (a send to a process, a receive from a channel
-- that holds a value) skip the scheduler; every PREEMPT_EVERY of them the thread yields
-- anyway, so a loop of them keeps within its instruction budget and lets others run.
-- A call that stays in Lua (the local message path below) counts LOCAL_SHARE of one:
-- it costs a small fraction of a call into Python, and a yield costs a scheduler turn.
local PREEMPT_EVERY = 512
local CALL = 8        -- what a call into Python counts
local LOCAL_SHARE = 1  -- what a send or receive that stays in Lua counts
-- The count is the state's, not a thread's: the thread that reaches it may be inside a
-- C function's callback (string.gsub, table.sort) or loading a chunk, where a yield
-- fails; it yields at its next call that can (a loop with none still ends at the
-- instruction budget).
local unyielded = 0
local preemptible = core.preemptible
local function preempt(share)
    unyielded = unyielded + (share or CALL)
    if unyielded >= PREEMPT_EVERY and preemptible() then
        unyielded = 0
        request("yield")
    end
end
M.preempt = preempt
-- A workflow run on a reused state starts from 0, as on a new one: where its threads
-- yield decides how its coroutines interleave, which a replay must repeat.
function M.reset_preempt() unyielded = 0 end
M.LOCAL_SHARE = LOCAL_SHARE

-- ---------------------------------------------------------------------- the local message path
--
-- A process of this state whose inbox is open has a *box*: a queue of its inbox messages
-- as Lua values, which a sender in the same state appends to without calling Python, and
-- its inbox:receive() takes from without calling Python (docs/architecture.md, "The
-- local message path"). Everything else that reaches that inbox (a message from
-- another node, shard or a function call) is appended to the same queue by Python, so
-- one queue keeps the order. Python keeps the rest of the mailbox (lua/_mailbox.py):
-- the bound is the same (Python only sees an empty queue of its own then), and a box
-- closes, its messages going back to Python in order, when the process first
-- listens to a topic, upgrades or exits.
--
-- Box fields: id (Python's key), pid, limit, first/last (the queue is box[2k-1] the
-- message, box[2k] its sender's traceparent, for k in first..last), trace (the
-- traceparent Python's unit has, mirrored here), waiting (a thread of it may be
-- parked on the inbox: a send must have Python wake it).
-- Boxes live only here and in Python: no user value refers to one.
local boxes = {}                                    -- pid -> open box, for senders
local inbox_box = setmetatable({}, { __mode = "k" })  -- open inbox channel table -> its box
local owner = core.owner

function M.new_box(id, pid, limit, trace)
    return { id = id, pid = pid, limit = limit, first = 1, last = 0, trace = trace }  -- waiting: nil
end
-- The inbox `ch` of the process of `box` opened: messages to it go through the box.
function M.box_open(box, ch)
    boxes[box.pid] = box
    inbox_box[ch] = box
end
local function push(box, msg, trace)
    local last = box.last + 1
    box.last = last
    box[2 * last - 1], box[2 * last] = msg, trace
end
-- The oldest message and its traceparent (nil when empty); the box's trace follows it.
local function pop(box)
    local first = box.first
    if first > box.last then return nil end
    local msg, trace = box[2 * first - 1], box[2 * first]
    box[2 * first - 1], box[2 * first] = nil, nil
    if first == box.last then box.first, box.last = 1, 0 else box.first = first + 1 end
    box.trace = trace
    return msg, trace
end
M.box_pop = pop
function M.box_depth(box) return box.last - box.first + 1 end
function M.box_waiting(box, waiting) box.waiting = waiting end
function M.box_trace(box, trace) box.trace = trace end
-- What `box` holds, in order, for Python: { message, traceparent or false, ... }.
local function box_items(box)
    local out = {}
    for k = box.first, box.last do
        out[#out + 1] = box[2 * k - 1]
        out[#out + 1] = box[2 * k] or false
    end
    return out
end
M.box_items = box_items
-- Close `box`, the box of inbox `ch` (no sender finds it any more, and receives go to
-- Python), and hand what it held back to Python (as box_items) when it will `keep` it.
function M.box_close(box, ch, keep)
    if boxes[box.pid] == box then boxes[box.pid] = nil end
    inbox_box[ch] = nil
    local out = keep and box_items(box) or nil
    for k = 2 * box.first - 1, 2 * box.last do box[k] = nil end
    box.first, box.last, box.waiting = 1, 0, false
    return out
end
M.boxes, M.box_push, M.owner = boxes, push, owner
-- Lua memory (KiB) above which a send stops queueing in Lua: a sender flooding a
-- neighbour that does not read would otherwise fill the state's memory, which every
-- process of the state shares, with that backlog. Past it the message takes Python's
-- path, whose post closes the box (lua/_box.py), so the backlog is held in Python as it
-- was before the local path. Checked every 256th local send of the state (a count per
-- box missed a flood spread over many boxes), and on every send while past it.
local box_memory_kb, memory_kb = math.huge, collectgarbage
local local_sends, crowded = 0, false
function M.set_box_memory(bytes) box_memory_kb = bytes / 1024 end
function M.box_has_room(box)
    if box.last - box.first + 1 >= box.limit then return false end
    local_sends = local_sends + 1
    if crowded or local_sends % 256 == 0 then crowded = memory_kb("count") >= box_memory_kb end
    return not crowded
end

function ChannelMethods.receive(ch)
    local box = inbox_box[ch]
    if box ~= nil then
        unyielded = unyielded + LOCAL_SHARE
        local first = box.first
        if first <= box.last then
            if unyielded < PREEMPT_EVERY or not preemptible() then  -- pop(box), written out
                local msg, trace = box[2 * first - 1], box[2 * first]
                box[2 * first - 1], box[2 * first] = nil, nil
                if first == box.last then box.first, box.last = 1, 0 else box.first = first + 1 end
                if trace ~= box.trace then  -- the unit works in the message's trace from now on
                    box.trace = trace
                    host.box_trace(trace)
                end
                return msg, true
            end
            unyielded = 0
            return request("chan_recv", handles[ch])
        end
        box.waiting = true  -- the next sender hands its message over through Python, which wakes this thread
        unyielded = 0
        return request("box_wait", handles[ch])
    end
    local handle = handle_of(ch, "receive")
    unyielded = unyielded + CALL
    if unyielded < PREEMPT_EVERY or not preemptible() then
        local done, value, ok = host.chan_poll(handle)
        if done then return value, ok end
    end
    unyielded = 0
    local value, ok = request("chan_recv", handle)
    return value, ok
end
function ChannelMethods.close(ch)
    host.chan_close(handle_of(ch, "close"))
end
function ChannelMethods.case_send(ch, value)
    return { _case = "send", channel = ch, value = value }
end
function ChannelMethods.case_receive(ch)
    return { _case = "recv", channel = ch }
end

local channel = {}
function channel.new(size)
    size = size or 0
    if type(size) ~= "number" or size < 0 or size ~= math_floor(size) then
        argerror(1, "new", "non-negative integer", size)
    end
    return wrap_channel(host.chan_new(size))
end
function channel.select(cases)
    if type(cases) ~= "table" then argerror(1, "select", "table of cases", cases) end
    local specs = {}
    for i, case in ipairs(cases) do
        if type(case) ~= "table" or (case._case ~= "send" and case._case ~= "recv") then
            error("channel.select: case " .. i .. " is not a case (use ch:case_send(v) or ch:case_receive())", 2)
        end
        specs[i] = { case._case, handle_of(case.channel, "select"), case.value }
    end
    if #specs == 0 and not cases.default then
        error("channel.select: no cases", 2)
    end
    local index, value, ok = request("select", specs, cases.default == true)
    if index == 0 then
        return { default = true, ok = true }
    elseif index == -1 then
        error("send on closed channel", 2)
    end
    return { channel = cases[index].channel, value = value, ok = ok }
end
globals.channel = readonly(channel)

-- ====================================================================== logger, print

local LoggerMethods = {}
local LoggerMT = { __index = LoggerMethods, __name = "logger", __metatable = false }
local function new_logger(name, fields) return setmetatable({ _name = name, _fields = fields }, LoggerMT) end
local function merge(a, b)
    local out = {}
    if a then for k, v in pairs(a) do out[k] = v end end
    if b then for k, v in pairs(b) do out[k] = v end end
    return out
end
for _, level in ipairs({ "debug", "info", "warn", "error" }) do
    LoggerMethods[level] = function(l, message, fields)
        host.log(level, l._name, tostring(message), merge(l._fields, fields))
    end
end
function LoggerMethods.with(l, fields) return new_logger(l._name, merge(l._fields, fields)) end
function LoggerMethods.named(l, name)
    return new_logger(l._name ~= "" and (l._name .. "." .. tostring(name)) or tostring(name), l._fields)
end
-- The module is the root logger. Every unit shares it, so it is a read-only view with
-- the methods copied in, not a logger object whose `_name`/`_fields` a unit could set.
local root_logger = { _name = "" }
for k, method in pairs(LoggerMethods) do root_logger[k] = method end
modules.logger = readonly(root_logger)

function globals.print(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    host.log("info", "print", table_concat(parts, "\t"), nil)
end

-- ====================================================================== json, uuid, ctx


local uuid = {}
-- A call into Python costs microseconds, a thousand instructions' worth, but is one
-- instruction to the count hook: charged, so a loop of them ends at the budget (a loop
-- of uuid.v4() held the event loop 3.9 s).
local charge, HOST_CALL = core.charge, 1000
for _, name in ipairs({ "v1", "v4", "v7" }) do
    uuid[name] = function() charge(HOST_CALL) return host.uuid_new(name) end
end
function uuid.v3(ns, name) charge(HOST_CALL) return host.uuid_named(3, ns, name) end
function uuid.v5(ns, name) charge(HOST_CALL) return host.uuid_named(5, ns, name) end
function uuid.validate(s) charge(HOST_CALL) return host.uuid_validate(s) end
function uuid.version(s) charge(HOST_CALL) return host.uuid_info(s, "version") end
function uuid.variant(s) charge(HOST_CALL) return host.uuid_info(s, "variant") end
function uuid.parse(s) charge(HOST_CALL) return host.uuid_info(s, "parse") end
function uuid.format(s, fmt) charge(HOST_CALL) return host.uuid_info(s, fmt or "standard") end
modules.uuid = readonly(uuid)

local ctx = {}
function ctx.get(key)
    if type(key) ~= "string" or key == "" then return nil, host_error("ctx.get: key must be a non-empty string", KINDS.INVALID, false) end
    local found, value = host.ctx_get(key)
    if found == nil then return nil, host_error("no context: not running in a call or process", KINDS.INTERNAL, false) end
    if not found then return nil, host_error("context key not found: " .. key, KINDS.NOT_FOUND, false) end
    return value
end
function ctx.all()
    local values = host.ctx_all()
    if values == nil then return nil, host_error("no context: not running in a call or process", KINDS.INTERNAL, false) end
    return values
end
modules.ctx = readonly(ctx)

-- ====================================================================== funcs and futures

local FutureMethods = {}
local FutureMT = { __index = FutureMethods, __name = "future", __metatable = false }
local function new_future(handle, ch)
    local future = setmetatable({ _channel = ch }, FutureMT)
    private[future] = handle
    handed()
    return future
end
M.new_future = new_future
function FutureMethods.response(f) return f._channel end
FutureMethods.channel = FutureMethods.response
function FutureMethods.is_complete(f) return (host.future_state(private[f])) ~= "pending" end
function FutureMethods.is_canceled(f) return (host.future_state(private[f])) == "canceled" end
function FutureMethods.result(f)
    local state, value, err = host.future_state(private[f])
    if state == "pending" then return nil, nil end
    if state == "done" then return M.new_payload(value), nil end
    return nil, err
end
function FutureMethods.error(f)
    local state, _, err = host.future_state(private[f])
    if state == "failed" or state == "canceled" then return err, true end
    return nil, false
end
function FutureMethods.cancel(f) return host.future_cancel(private[f]) end

local function check_target(target)
    if type(target) ~= "string" or not target:find("^[^:]+:[^:]+$") then
        return host_error("invalid function id " .. tostring(target) .. ": expected namespace:name", KINDS.INVALID, false)
    end
end

local ExecutorMethods = {}
local ExecutorMT = { __index = ExecutorMethods, __name = "executor", __metatable = false }
-- `_security`: the actor and scope a call runs as instead of the caller's, set by
-- with_actor/with_scope ({actor = {id, meta}, policies = {ids}}, see _security.lua);
-- nil: the caller's.
local function new_executor(context, options, security)
    return setmetatable({ _context = context, _options = options, _security = security }, ExecutorMT)
end
function ExecutorMethods.with_context(e, values)
    if type(values) ~= "table" then argerror(1, "with_context", "table", values) end
    return new_executor(merge(e._context, values), e._options, e._security)
end
function ExecutorMethods.with_options(e, options)
    if type(options) ~= "table" then argerror(1, "with_options", "table", options) end
    return new_executor(e._context, merge(e._options, options), e._security)
end
-- A nil or non-Actor/Scope argument raises (wippy-modules §5.3).
function ExecutorMethods.with_actor(e, actor)
    return new_executor(e._context, e._options, merge(e._security, { actor = M.security_actor(actor, "with_actor") }))
end
function ExecutorMethods.with_scope(e, scope)
    return new_executor(e._context, e._options,
                        merge(e._security, { policies = M.security_scope(scope, "with_scope") }))
end
function ExecutorMethods.call(e, target, ...)
    local bad = check_target(target)
    if bad then return nil, bad end
    return request("call", target, e._context, e._options, e._security, ...)
end
function ExecutorMethods.async(e, target, ...)
    local bad = check_target(target)
    if bad then return nil, bad end
    local ch = channel.new(1)
    local handle, err = request("async", target, e._context, e._options, e._security, handles[ch], ...)
    if handle == nil then return nil, err end
    return new_future(handle, ch)
end

local plain = new_executor(nil, nil, nil)  -- never handed out: a caller could change its fields
local funcs = {
    new = function() return new_executor(nil, nil, nil) end,
    call = function(target, ...) return ExecutorMethods.call(plain, target, ...) end,
    async = function(target, ...) return ExecutorMethods.async(plain, target, ...) end,
}
modules.funcs = readonly(funcs)

-- ====================================================================== code

-- Compiled entry code, by key (the entry id, with a revision after a reload): the
-- chunk (called with an environment, see core.compile), the modules its entry may
-- require and its imports (alias -> the imported code, registered before it). An
-- instance refers to its code itself, so a newer revision can replace the key while
-- instances of the older one still require from theirs.
local codes = {}
local new_env = core.new_env

function M.register_code(id, chunk, allowed, imports, types)
    local resolved = {}
    for alias, dep in pairs(imports) do resolved[alias] = codes[dep] end
    codes[id] = { chunk = chunk, allowed = allowed, imports = resolved, types = types }
end

function M.forget_code(id)
    codes[id] = nil
end

-- Run `code`'s chunk in a fresh environment and return what it returns. `loaded`
-- holds the libraries this instance has required (by code): a library is loaded
-- once per instance, on first require, so instances never share module state.
local function instantiate(code, loaded)
    local env = new_env()
    env.require = function(name)
        if type(name) ~= "string" then argerror(1, "require", "string", name) end
        local dep = code.imports[name]
        if dep ~= nil then
            local value = loaded[dep]
            if value == nil then
                value = instantiate(dep, loaded)
                if value == nil then value = true end  -- as Lua's require
                loaded[dep] = value
            end
            return value
        end
        if code.allowed[name] then
            local value = modules[name]
            if value ~= nil then return value end
        end
        -- As Wippy: any global can be required (`require("errors")`), the entry's
        -- modules included, since they are globals too.
        local value = env[name]
        if value ~= nil then return value end
        error("module '" .. name .. "' not found", 2)
    end
    -- As Wippy, the modules an entry lists are globals before its chunk runs.
    for name in pairs(code.allowed) do
        local value = modules[name]
        if value ~= nil then env[name] = value end
    end
    -- The chunk's declared types (lua/_types.lua), as globals where the name is free.
    if code.types then
        for name, t in pairs(code.types) do
            if env[name] == nil then env[name] = t end
        end
    end
    return code.chunk(env)
end

function M.instantiate(id)
    return instantiate(codes[id], {})
end

-- ====================================================================== exports

M.globals = globals
M.modules = modules
M.host_error = host_error
M.is_error = is_error
M.crossings = crossings
M.kinds = KINDS
-- For the other trusted chunks (_process.lua).
M.handle_of = handle_of
M.merge = merge
M.argerror = argerror
M.new_channel = channel.new
M.channel_handle = function(ch) return handles[ch] end
return M
