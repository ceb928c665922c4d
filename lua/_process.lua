-- The `process` global (wippy-surface §2.1, §2.2). Trusted: runs once per state after
-- the prelude, with `core`, `host` (Python functions, see _process.py) and the
-- prelude's exports. Calls that never wait go straight to `host`; spawn, exec and
-- terminate are requests to the scheduler.

local core, host, P = ...
local request, readonly = core.request, core.readonly
local setmetatable, type, error, tostring, pairs = setmetatable, type, error, tostring, pairs
local table_pack = table.pack
local host_error, KINDS, merge, argerror = P.host_error, P.kinds, P.merge, P.argerror
local new_payload, handle_of, preempt = P.new_payload, P.handle_of, P.preempt
local to_ns = P.to_ns
local select = select
local charge_values = core.charge_values

local process = {}
local SCOPES = { ["local"] = true, eventual = true, consistent = true, strong = true }

-- ---------------------------------------------------------------- messages

local MessageMethods = {}
local MessageMT = { __index = MessageMethods, __name = "message", __metatable = false }

-- A message is one array, { topic, from, n, payload 1, ..., payload n }: one table per
-- message, with no hash part (the local path makes one per send; lua/_box.py reads it).
function P.new_message(topic, from, ...)
    return setmetatable({ topic, from, select("#", ...), ... }, MessageMT)
end
-- Python appends to a box a message that came another way (decoded here, as a receive
-- did before): false when the box is full.
local box_push = P.box_push
function P.box_post(box, trace, topic, from, ...)
    if box.last - box.first + 1 >= box.limit then return false end
    box_push(box, P.new_message(topic, from, ...), trace)
    return true
end
function P.new_event(kind, from, at, has_result, value, err, reason, group, sources)
    local event = { kind = kind, from = from, at = at }
    if has_result then event.result = { value = value, error = err } end
    if reason ~= nil then event.reason = reason end
    if group ~= nil then event.group = group end
    if sources ~= nil then event.sources = sources end  -- OUTDATED: the entries whose code changed
    return event
end

function MessageMethods.topic(m) return m[1] end
function MessageMethods.from(m) return m[2] end
-- None: nil; one: a Payload; several: a list of Payloads (wippy's message.go).
function MessageMethods.payload(m)
    local n = m[3]
    if n == 0 then return nil end
    if n == 1 then return new_payload(m[4]) end
    local out = {}
    for i = 1, n do out[i] = new_payload(m[3 + i]) end
    return out
end

-- ---------------------------------------------------------------- checks

local byte = string.byte
local AT = byte("@")
local function bad_topic(topic)
    if type(topic) ~= "string" or topic == "" then
        return host_error("topic must be a non-empty string, got " .. type(topic), KINDS.INVALID, false)
    end
    if byte(topic, 1) == AT then
        return host_error("topic '" .. topic .. "' is reserved: topics starting with @ are system topics",
                          KINDS.INVALID, false)
    end
end

local function bad_dest(dest)
    if type(dest) ~= "string" or dest == "" then
        return host_error("destination must be a PID or a registered name, got " .. type(dest), KINDS.INVALID, false)
    end
end

local function bad_entry(id, host_id)
    if type(id) ~= "string" or not id:find("^[^:]+:[^:]+$") then
        return host_error("invalid entry id " .. tostring(id) .. ": expected namespace:name", KINDS.INVALID, false)
    end
    if type(host_id) ~= "string" or host_id == "" then
        return host_error("host must be a process host id, got " .. type(host_id), KINDS.INVALID, false)
    end
end

-- ---------------------------------------------------------------- identity, sending

function process.pid() return host.proc_pid() end
function process.id() return host.proc_id() end

-- The local path (the boxes in _prelude.lua): a message to a process of this state
-- whose inbox is open is queued here, without calling Python, when nothing else needs
-- to see it. Anything else takes Python's path: no open box for `dest` here (another
-- shard or node, a name, a process that listens to topics), a full box (Python
-- refuses it as it refuses any), a sender that is no process of this state, a payload
-- other than nil, a boolean, a number or a string (Python's conversion copies and
-- checks it). Both end in the same queue, so the order per sender holds whichever path
-- a message took. A string is shared, not copied: Lua strings cannot be changed.
local boxes, owner, LOCAL_SHARE, box_has_room = P.boxes, P.owner, P.LOCAL_SHARE, P.box_has_room
local delivered_here = 0  -- messages the local path delivered (metrics: P.delivered_here)
function P.delivered_here() return delivered_here end
local SCALAR = { ["nil"] = true, boolean = true, number = true, string = true }
local function scalars(n, ...)
    for i = 1, n do
        if not SCALAR[type((select(i, ...)))] then return false end
    end
    return true
end

-- Written out in one function (the checks too): a local send costs about as much as
-- the calls it would otherwise make.
function process.send(dest, topic, ...)
    if type(dest) ~= "string" or dest == "" or type(topic) ~= "string" or topic == "" or byte(topic, 1) == AT then
        return nil, bad_dest(dest) or bad_topic(topic)
    end
    local box = boxes[dest]
    if box ~= nil and box_has_room(box) then
        local me = owner()
        local n = select("#", ...)
        if me ~= nil and (n == 0 or (n == 1 and SCALAR[type((...))]) or (n > 1 and scalars(n, ...))) then
            local trace = me.trace
            if trace == nil then  -- once: Python makes one, as for any send
                trace = host.proc_traceparent()
                me.trace = trace
            end
            local msg = setmetatable(n == 1 and { topic, me.pid, 1, (...) } or { topic, me.pid, n, ... }, MessageMT)
            delivered_here = delivered_here + 1
            local last = box.last + 1
            box.last = last
            box[2 * last - 1], box[2 * last] = msg, trace
            if box.waiting then
                -- A thread of it may wait on its inbox: Python hands it the box's oldest
                -- message. Not `msg` as an argument: lupa would tie that wrapper to this
                -- thread's Lua stack, which may be freed (the thread ended) before the
                -- receiver lets the wrapper go, and the wrapper's release then crashed.
                box.waiting = false
                host.box_hand(box.id)
            end
            preempt(LOCAL_SHARE)  -- after the message is in: a yield here leaves it delivered
            return true
        end
    end
    preempt()
    charge_values(...)  -- converting the payloads holds the event loop: paid from the budget first
    return host.proc_send(dest, topic, ...)
end

-- ---------------------------------------------------------------- spawning

local SpawnerMethods = {}
local SpawnerMT = { __index = SpawnerMethods, __name = "spawner", __metatable = false }
-- `security`: the actor and scope the child runs as instead of the caller's (see
-- ExecutorMethods.with_actor in _prelude.lua); nil: the caller's (spawn) or none (exec).
local function new_spawner(context, options, name, messages, scope, security)
    return setmetatable({ _context = context, _options = options, _name = name, _messages = messages,
                          _scope = scope, _security = security }, SpawnerMT)
end

function SpawnerMethods.with_context(s, values)
    if type(values) ~= "table" then argerror(1, "with_context", "table", values) end
    return new_spawner(merge(s._context, values), s._options, s._name, s._messages, s._scope, s._security)
end
function SpawnerMethods.with_options(s, options)
    if type(options) ~= "table" then argerror(1, "with_options", "table", options) end
    return new_spawner(s._context, merge(s._options, options), s._name, s._messages, s._scope, s._security)
end
-- `scope` (a process.registry scope, LOCAL by default): a cluster scope registers the
-- name cluster-wide before the child's first instruction; taken, the spawn fails.
function SpawnerMethods.with_name(s, name, scope)
    if type(name) ~= "string" or name == "" then argerror(1, "with_name", "non-empty string", name) end
    if scope ~= nil and not SCOPES[scope] then argerror(2, "with_name", "registry scope", scope) end
    return new_spawner(s._context, s._options, name, s._messages, scope, s._security)
end
-- A nil or non-Actor/Scope argument raises (wippy-modules §5.3).
function SpawnerMethods.with_actor(s, actor)
    return new_spawner(s._context, s._options, s._name, s._messages, s._scope,
                       merge(s._security, { actor = P.security_actor(actor, "with_actor") }))
end
function SpawnerMethods.with_scope(s, scope)
    return new_spawner(s._context, s._options, s._name, s._messages, s._scope,
                       merge(s._security, { policies = P.security_scope(scope, "with_scope") }))
end
function SpawnerMethods.with_message(s, topic, ...)
    local bad = bad_topic(topic)
    if bad then error(bad, 2) end
    local messages = {}
    if s._messages then for i, m in ipairs(s._messages) do messages[i] = m end end
    messages[#messages + 1] = { topic, table_pack(...) }
    return new_spawner(s._context, s._options, s._name, messages, s._scope, s._security)
end

local plain  -- the spawner of process.spawn and friends: no context, options, name, messages, actor or scope
-- A direct spawn loads the child's chunk inside this call: a chunk whose top level
-- spawns itself recursed until Python's stack ran out. Deeper than this, the spawn is
-- a request, which a load refuses ("a module cannot block while it loads").
local MAX_NESTED_LOADS, loads = 8, core.loads
local function spawn(s, op, monitor, link, id, host_id, ...)
    local bad = bad_entry(id, host_id)
    if bad then return nil, bad end
    if s == plain and op == "proc_spawn" and loads() < MAX_NESTED_LOADS then
        -- A plain spawn on a host of this node never waits: a direct call, as a send,
        -- not a request (which costs the thread a yield and a resume per spawn).
        preempt()
        charge_values(...)
        local pid, err = host.proc_spawn_here(id, host_id, monitor, link, ...)
        if pid ~= false then return pid, err end  -- false: not here; the request goes where it must
    end
    return request(op, id, host_id, table_pack(...), monitor, link, s._context, s._options, s._name, s._messages,
                   s._scope, s._security)
end
function SpawnerMethods.spawn(s, id, h, ...) return spawn(s, "proc_spawn", false, false, id, h, ...) end
function SpawnerMethods.spawn_monitored(s, id, h, ...) return spawn(s, "proc_spawn", true, false, id, h, ...) end
function SpawnerMethods.spawn_linked(s, id, h, ...) return spawn(s, "proc_spawn", false, true, id, h, ...) end
function SpawnerMethods.spawn_linked_monitored(s, id, h, ...) return spawn(s, "proc_spawn", true, true, id, h, ...) end
function SpawnerMethods.exec(s, id, h, ...) return spawn(s, "proc_exec", false, false, id, h, ...) end
-- A Temporal update to workflow `pid` (a moonwire addition: Wippy sends none from Lua):
-- its result, or nil, err. Waits for the workflow's answer at most the spawner's
-- `update.timeout` option (default 30 s).
function SpawnerMethods.update(s, pid, name, ...)
    local bad = bad_dest(pid) or bad_topic(name)
    if bad then return nil, bad end
    return request("proc_update", pid, name, s._options, table_pack(...))
end

plain = new_spawner(nil, nil, nil, nil, nil, nil)
for _, name in ipairs({ "spawn", "spawn_monitored", "spawn_linked", "spawn_linked_monitored", "exec", "update" }) do
    local method = SpawnerMethods[name]
    process[name] = function(id, h, ...) return method(plain, id, h, ...) end
end
for _, name in ipairs({ "with_context", "with_options", "with_name", "with_actor", "with_scope", "with_message" }) do
    local method = SpawnerMethods[name]
    process[name] = function(...) return method(plain, ...) end
end

-- ---------------------------------------------------------------- control

function process.terminate(dest)
    local bad = bad_dest(dest)
    if bad then return nil, bad end
    return request("proc_terminate", dest)
end

function process.cancel(dest, reason)
    local bad = bad_dest(dest)
    if bad then return nil, bad end
    if reason ~= nil and type(reason) ~= "string" then
        return nil, host_error("cancel reason must be a string", KINDS.INVALID, false)
    end
    return request("proc_cancel", dest, reason)
end

-- Replaces the calling process's code and keeps its PID, mailbox, names, monitors and
-- links (wippy-modules §12.1); inside a workflow, continues as new (§12.4). Never
-- returns on success. A non-string `id` means the current entry.
function process.upgrade(id, ...)
    if type(id) ~= "string" then id = nil end
    charge_values(...)  -- the arguments are copied for the new code: paid from the budget first
    return request("proc_upgrade", id, table_pack(...))
end

-- Requests: a watch on another node's process returns once that node has it in place.
for _, verb in ipairs({ "monitor", "unmonitor", "link", "unlink" }) do
    process[verb] = function(dest)
        local bad = bad_dest(dest)
        if bad then return nil, bad end
        return request("proc_watch", verb, dest)
    end
end

function process.get_options() return host.proc_options() end

function process.set_options(options)
    if type(options) ~= "table" then
        return false, host_error("set_options expects a table", KINDS.INVALID, false)
    end
    for k, v in pairs(options) do
        if k ~= "trap_links" and k ~= "upgradable" then
            return false, host_error("unknown process option '" .. tostring(k) .. "'", KINDS.INVALID, false)
        end
        if type(v) ~= "boolean" then
            return false, host_error("process option '" .. k .. "' must be a boolean", KINDS.INVALID, false)
        end
    end
    return host.proc_set_options(options.trap_links, options.upgradable)
end

-- ---------------------------------------------------------------- receiving

function process.inbox() return host.proc_inbox() end
function process.events() return host.proc_events() end

function process.listen(topic, options)
    local bad = bad_topic(topic)
    if bad then error(bad, 2) end
    if options ~= nil and type(options) ~= "table" then argerror(2, "listen", "table", options) end
    return host.proc_listen(topic, options ~= nil and options.message == true)
end

function process.unlisten(ch)
    host.proc_unlisten(handle_of(ch, "unlisten"))
end

process.event = readonly({
    CANCEL = "pid.cancel", EXIT = "pid.exit", LINK_DOWN = "pid.link.down", OUTDATED = "pid.outdated",
})

-- ---------------------------------------------------------------- name registry

local registry = {
    LOCAL = "local", EVENTUAL = "eventual", CONSISTENT = "consistent", STRONG = "strong",
}
-- LOCAL names are this node's and never wait; the cluster scopes share one consistent
-- store on JetStream (docs/cluster.md) and wait for it.
local function cluster_scope(scope, fname)
    if scope == nil or scope == "local" then return false end
    if not SCOPES[scope] then
        return nil, host_error("unknown registry scope " .. tostring(scope) .. " to " .. fname
                               .. ": use process.registry.LOCAL, EVENTUAL, CONSISTENT or STRONG", KINDS.INVALID, false)
    end
    return true
end
function registry.register(name, pid, scope)
    if type(name) ~= "string" or name == "" then
        return nil, host_error("name must be a non-empty string", KINDS.INVALID, false)
    end
    if pid ~= nil and type(pid) ~= "string" then
        return nil, host_error("pid must be a string", KINDS.INVALID, false)
    end
    local cluster, err = cluster_scope(scope, "register")
    if cluster == nil then return nil, err end
    if cluster then return request("cluster", "register", name, pid, scope) end
    return host.proc_register(name, pid)
end
-- Cluster-wide first, then this node's (a cluster name shadows a local one); `node` (a
-- moonwire extension) looks the name up in that node's LOCAL registry.
function registry.lookup(name, node)
    if type(name) ~= "string" or name == "" then
        return nil, host_error("name must be a non-empty string", KINDS.INVALID, false)
    end
    if node ~= nil and (type(node) ~= "string" or node == "") then
        return nil, host_error("node must be a node name", KINDS.INVALID, false)
    end
    return request("proc_lookup", name, node)
end
-- A cluster name is unregistered only by its holder: anyone else gets false.
function registry.unregister(name, scope)
    if type(name) ~= "string" then return false end
    local cluster, err = cluster_scope(scope, "unregister")
    if cluster == nil then return false, err end
    if cluster then
        local removed, failed = request("cluster", "unregister", name, scope)
        if failed ~= nil then return false, failed end
        return removed == true
    end
    return host.proc_unregister(name) == true
end
process.registry = readonly(registry)

P.globals.process = readonly(process)

-- ---------------------------------------------------------------- system (wippy-modules §9)
-- The parts that span nodes: this node's id, the live nodes, and cluster-wide locks.

local system = { node = {}, cluster = {}, lock = {} }
function system.node.id() return host.cluster_now("node.id") end
-- `{ {id, is_local, hosts}, ... }`: this node first, then the others by id.
function system.cluster.members() return host.cluster_now("cluster.members") end
function system.cluster.size()
    local members = host.cluster_now("cluster.members")
    return members and #members or 0
end
-- moonwire runs no Raft: Wippy answers these so when Raft is off.
function system.node.role() return "non-member" end
function system.cluster.leader() return "" end
function system.node.addr()
    return nil, host_error("node.addr: moonwire nodes advertise no address; they meet on NATS", KINDS.INTERNAL, false)
end
-- Not re-entrant; held → false, err (ALREADY_EXISTS). Without `timeout` it fails at once
-- when held (as Wippy's); with one (a duration), it waits that long for the lock to be
-- freed. Released by `release`, when the holder exits, or when its node goes down.
function system.lock.acquire(name, timeout)
    if type(name) ~= "string" or name == "" then argerror(1, "acquire", "non-empty string", name) end
    local ns
    if timeout ~= nil then
        local err
        ns, err = to_ns(timeout, "acquire")
        if ns == nil then return nil, err end
    end
    local ok, err = request("cluster", "lock.acquire", name, ns)
    if ok == nil then
        if err:kind() == KINDS.ALREADY_EXISTS then return false, err end
        return nil, err
    end
    return true
end
-- true when the caller held it and now does not; false otherwise.
function system.lock.release(name)
    if type(name) ~= "string" or name == "" then argerror(1, "release", "non-empty string", name) end
    local released, err = request("cluster", "lock.release", name)
    if released == nil then return false, err end
    return released == true
end
P.modules.system = readonly(system)

-- ---------------------------------------------------------------- pg (wippy-modules §10)
-- Cluster-wide process groups (Erlang's pg): a process joins as often as it likes and
-- leaves as often (N joins need N leaves); members leave when they exit or their node
-- goes down. Reads answer from this node's replica; join, leave and broadcast wait for
-- the broker.

local pg = { event = readonly({ JOINED = "pg.member.joined", LEFT = "pg.member.left" }) }
local function check_group(group, fname)
    if type(group) ~= "string" or group == "" then argerror(1, fname, "non-empty string", group) end
end
local function check_pid(pid, fname)
    if pid ~= nil and type(pid) ~= "string" then argerror(2, fname, "PID string", pid) end
end
-- true | nil, err; `pid` (a process of this node) defaults to the caller.
function pg.join(group, pid)
    check_group(group, "join"); check_pid(pid, "join")
    return request("cluster", "pg.join", group, pid)
end
-- true when it was a member (one join undone); false otherwise.
function pg.leave(group, pid)
    check_group(group, "leave"); check_pid(pid, "leave")
    local left, err = request("cluster", "pg.leave", group, pid)
    if left == nil then return false, err end
    return left == true
end
-- Every member cluster-wide (a PID once per join), sorted; {} for an empty group.
function pg.members(group) check_group(group, "members") return host.cluster_now("pg.members", group) end
function pg.local_members(group)
    check_group(group, "local_members")
    return host.cluster_now("pg.local_members", group)
end
function pg.groups() return host.cluster_now("pg.groups") end
function pg.local_groups() return host.cluster_now("pg.local_groups") end
-- `topic` and the payloads to every member once, on every node (the caller too, if a
-- member), with one publish: true | nil, err. No order is kept against process.send.
function pg.broadcast(group, topic, ...)
    check_group(group, "broadcast")
    local bad = bad_topic(topic)
    if bad then return nil, bad end
    preempt()
    charge_values(...)
    return request("cluster", "pg.broadcast", group, topic, ...)
end
-- From now on a pg.event.JOINED / LEFT event (`from` the member, `group` the group) for
-- each join and leave, on process.events(); returns the members at that moment.
function pg.monitor(group) check_group(group, "monitor") return host.cluster_now("pg.monitor", group) end
function pg.demonitor(group) check_group(group, "demonitor") return host.cluster_now("pg.demonitor", group) end

-- Wippy's instance API: `pg.open(scope)` gives an isolated namespace of groups. A
-- scope's groups are cluster groups named `pg=<scope, encoded>/<group>`, so the flat
-- calls above never meet them by accident; events of an instance's `monitor`/`events`
-- come on a channel of their own (64 deep, as Wippy's), shaped as Wippy's:
-- {system = "pg", kind = "member.joined" | "member.left", path = group,
--  data = {Group = group, PIDs = {pid}}}.
local new_object, fields_of, metatable_of = core.new_object, core.fields, core.metatable_of
local KIND_NAMES = { ["pg.member.joined"] = "member.joined", ["pg.member.left"] = "member.left" }
function P.new_group_event(kind, group, pid)
    return { system = "pg", kind = KIND_NAMES[kind] or kind, path = group, data = { Group = group, PIDs = { pid } } }
end

local SubscriptionMethods = {}
local SubscriptionMT = core.object_type("pg.subscription", SubscriptionMethods)
function SubscriptionMethods.channel(sub)
    if metatable_of(sub) ~= SubscriptionMT then argerror(1, "channel", "pg subscription", sub) end
    return fields_of(sub).channel
end
-- Stops the events, closes the channel; `{flush = true}` leaves what it holds readable.
function SubscriptionMethods.close(sub, options)
    if metatable_of(sub) ~= SubscriptionMT then argerror(1, "close", "pg subscription", sub) end
    local f = fields_of(sub)
    if f.closed then return true end
    f.closed = true
    local last = host.pg_unsubscribe(handle_of(f.channel, "close"), type(options) == "table" and options.flush == true)
    if last then  -- no other subscription of this process needs the watch
        host.cluster_now(f.prefix and "pg.demonitor_prefix" or "pg.demonitor", f.match)
    end
    return true
end

local InstanceMethods = {}
local InstanceMT = core.object_type("pg.instance", InstanceMethods)
local function instance(g, fname)
    if metatable_of(g) ~= InstanceMT then argerror(1, fname, "pg instance", g) end
    local f = fields_of(g)
    if f.released then return nil, host_error("pg instance is released", KINDS.INVALID, false) end
    return f
end
local function group_list(groups, fname)
    if type(groups) == "string" then groups = { groups } end
    if type(groups) ~= "table" or #groups == 0 then
        return nil, host_error(fname .. ": a group name or a non-empty list of them", KINDS.INVALID, false)
    end
    for _, group in ipairs(groups) do
        if type(group) ~= "string" or group == "" then
            return nil, host_error(fname .. ": group names are non-empty strings", KINDS.INVALID, false)
        end
    end
    return groups
end
function InstanceMethods.join(g, groups)
    local f, err = instance(g, "join")
    if f == nil then return nil, err end
    local list, bad = group_list(groups, "join")
    if list == nil then return nil, bad end
    for _, group in ipairs(list) do
        local ok, failed = request("cluster", "pg.join", f.prefix .. group, nil)
        if ok == nil then return nil, failed end
    end
    return true, nil
end
-- Best effort over the list: an error only when the caller was in none of them.
function InstanceMethods.leave(g, groups)
    local f, err = instance(g, "leave")
    if f == nil then return nil, err end
    local list, bad = group_list(groups, "leave")
    if list == nil then return nil, bad end
    local any, last = false, nil
    for _, group in ipairs(list) do
        local left, failed = request("cluster", "pg.leave", f.prefix .. group, nil)
        if left == true then any = true elseif failed ~= nil then last = failed end
    end
    if any then return true, nil end
    return nil, last or host_error("not a member of " .. table.concat(list, ", "), KINDS.NOT_FOUND, false)
end
local function members(verb)
    return function(g, group)
        local f, err = instance(g, verb)
        if f == nil then return nil, err end
        check_group(group, verb)
        return host.cluster_now(verb == "get_members" and "pg.members" or "pg.local_members", f.prefix .. group)
    end
end
InstanceMethods.get_members = members("get_members")
InstanceMethods.get_local_members = members("get_local_members")
local function which(verb)
    return function(g)
        local f, err = instance(g, verb)
        if f == nil then return nil, err end
        local all = host.cluster_now(verb == "which_groups" and "pg.groups" or "pg.local_groups")
        local out, n = {}, #f.prefix
        for _, name in ipairs(all or {}) do
            if name:sub(1, n) == f.prefix then out[#out + 1] = name:sub(n + 1) end
        end
        return out
    end
end
InstanceMethods.which_groups = which("which_groups")
InstanceMethods.which_local_groups = which("which_local_groups")
function InstanceMethods.broadcast(g, group, topic, ...)
    local f, err = instance(g, "broadcast")
    if f == nil then return nil, err end
    check_group(group, "broadcast")
    local bad = bad_topic(topic)
    if bad then return nil, bad end
    preempt()
    charge_values(...)
    return request("cluster", "pg.broadcast", f.prefix .. group, topic, ...)
end
-- To the members on this node only, one send each (a full mailbox drops, as Wippy's).
function InstanceMethods.broadcast_local(g, group, topic, ...)
    local f, err = instance(g, "broadcast_local")
    if f == nil then return nil, err end
    check_group(group, "broadcast_local")
    local bad = bad_topic(topic)
    if bad then return nil, bad end
    for _, pid in ipairs(host.cluster_now("pg.local_members", f.prefix .. group) or {}) do
        process.send(pid, topic, ...)
    end
    return true, nil
end
local function subscribe(f, match, prefix)
    local channel = host.pg_subscribe(match, prefix, #f.prefix)
    return new_object(SubscriptionMT, { channel = channel, match = match, prefix = prefix })
end
-- sub, members (the snapshot and the subscription start together), nil.
function InstanceMethods.monitor(g, group)
    local f, err = instance(g, "monitor")
    if f == nil then return nil, nil, err end
    check_group(group, "monitor")
    local snapshot, failed = host.cluster_now("pg.monitor", f.prefix .. group)
    if snapshot == nil then return nil, nil, failed end
    return subscribe(f, f.prefix .. group, false), snapshot, nil
end
-- sub, {group = members} for every group of the scope, nil.
function InstanceMethods.events(g)
    local f, err = instance(g, "events")
    if f == nil then return nil, nil, err end
    local snapshot, failed = host.cluster_now("pg.monitor_prefix", f.prefix)
    if snapshot == nil then return nil, nil, failed end
    local groups, n = {}, #f.prefix
    for name, pids in pairs(snapshot) do groups[name:sub(n + 1)] = pids end
    return subscribe(f, f.prefix, true), groups, nil
end
function InstanceMethods.release(g)
    if metatable_of(g) ~= InstanceMT then argerror(1, "release", "pg instance", g) end
    fields_of(g).released = true
    return true
end

-- A scope id as a run of the characters group names allow, one to one and without "/":
-- "=" starts an escape ("=e" "=", "=s" "/", "=c" ":", "=xHH" any other byte), so the
-- "/" after it ends the scope and no scope's groups are another scope's.
local ESCAPES = { ["="] = "=e", ["/"] = "=s", [":"] = "=c" }
local function encode_scope(scope)
    return (scope:gsub("[^%w_%.%-]", function(c) return ESCAPES[c] or string.format("=x%02X", c:byte()) end))
end

-- One value, or nil, err: "" is Invalid. Any `ns:name` string opens a scope (moonwire
-- needs no `pg.scope` entry; a project that declares them loads them inert).
function pg.open(scope)
    if type(scope) ~= "string" or scope == "" then
        return nil, host_error("pg.open: scope must be a non-empty scope id", KINDS.INVALID, false)
    end
    return new_object(InstanceMT, { scope = scope, prefix = "pg=" .. encode_scope(scope) .. "/" })
end
P.modules.pg = readonly(pg)
