-- The `security` module (wippy-modules §5). Trusted: run once per state after the
-- prelude, with `core`, `host` (Python functions, see _security_host.py) and the
-- prelude's exports.
--
-- A unit's actor and scope live on the Python side (the unit's Security), so they
-- travel with its calls and spawns, to other nodes too; `security.actor()` and
-- `security.scope()` build fresh objects from them. Actor and Scope are userdata.
--
-- Policies (`security.policy` entries, `security.policy(id)`, `named_scope`) and token
-- stores are not supported: no Policy object can exist, so every scope is empty and a
-- scope travels as its (empty) list of policy ids. A receiver would resolve the ids in
-- its own policy registry, skipping unknown ones, as Wippy does (§5.3).
local core, host, P = ...
local readonly, object_type, new_object, fields, metatable_of =
      core.readonly, core.object_type, core.new_object, core.fields, core.metatable_of
local type, error, pairs = type, error, pairs
local host_error, KINDS, argerror = P.host_error, P.kinds, P.argerror

local ActorMethods, ScopeMethods = {}, {}
local ActorMT = object_type("security.Actor", ActorMethods)
local ScopeMT = object_type("security.Scope", ScopeMethods)

-- `v` if it is an object of type `mt`, else raise a bad-argument error `level` levels
-- above the caller of `expect`.
local function expect(mt, v, n, fname, expected, level)
    if metatable_of(v) ~= mt then
        error("bad argument #" .. n .. " to '" .. fname .. "' (" .. expected .. " expected, got " .. type(v) .. ")",
              level + 1)
    end
    return fields(v)
end

-- Plain data only (checked by host.actor_meta), so a copy is a walk over tables.
local function copy(v)
    if type(v) ~= "table" then return v end
    local out = {}
    for k, x in pairs(v) do out[k] = copy(x) end
    return out
end

-- ---------------------------------------------------------------- Actor

local function new_actor(id, meta)
    return new_object(ActorMT, { id = id, meta = meta })
end
function ActorMethods.id(a) return expect(ActorMT, a, 1, "id", "Actor", 2).id end
-- A new table each time: the actor's own cannot be changed through it.
function ActorMethods.meta(a) return copy(expect(ActorMT, a, 1, "meta", "Actor", 2).meta) end

-- ---------------------------------------------------------------- Scope

-- `policies`: Policy objects by id (always empty here, see above).
local function new_scope(policies)
    return new_object(ScopeMT, { policies = policies })
end

-- A policy id argument: "ns:name", or {ns =, name =} (a Policy would do too, if one
-- could exist); anything else raises.
local function policy_id(v, fname)
    if type(v) == "string" then return v end
    if type(v) == "table" and type(v.ns) == "string" and type(v.name) == "string" then
        return v.ns .. ":" .. v.name
    end
    error("bad argument #1 to '" .. fname .. "' (policy id \"ns:name\" or {ns=, name=} expected, got "
          .. type(v) .. ")", 3)
end

function ScopeMethods.with(s, policy)
    expect(ScopeMT, s, 1, "with", "Scope", 2)
    -- No Policy object exists: whatever `policy` is, it is not one.
    argerror(1, "with", "Policy", policy)
end
function ScopeMethods.without(s, id)
    local own = expect(ScopeMT, s, 1, "without", "Scope", 2).policies
    id = policy_id(id, "without")
    local kept = {}
    for k, p in pairs(own) do
        if k ~= id then kept[k] = p end
    end
    return new_scope(kept)
end
function ScopeMethods.contains(s, id)
    local own = expect(ScopeMT, s, 1, "contains", "Scope", 2).policies
    return own[policy_id(id, "contains")] ~= nil
end
function ScopeMethods.policies(s)
    local out = {}
    for _, p in pairs(expect(ScopeMT, s, 1, "policies", "Scope", 2).policies) do out[#out + 1] = p end
    return out
end
-- Wippy's rule: empty -> undefined; any deny -> deny; else any allow -> allow; else
-- undefined. With no policies it is always "undefined".
function ScopeMethods.evaluate(s, actor, action, resource, meta)
    expect(ScopeMT, s, 1, "evaluate", "Scope", 2)
    expect(ActorMT, actor, 1, "evaluate", "Actor", 2)
    if type(action) ~= "string" then argerror(2, "evaluate", "string", action) end
    if type(resource) ~= "string" then argerror(3, "evaluate", "string", resource) end
    if meta ~= nil and type(meta) ~= "table" then argerror(4, "evaluate", "table", meta) end
    return "undefined"
end

-- ---------------------------------------------------------------- for the executor and the spawner
-- Their `with_actor`/`with_scope` keep what the unit's Python side reads: the shape of
-- Security.from_wire. Defined before the workflow check below: a workflow's executor
-- has `with_actor` too, and raises there (no Actor can exist in a workflow).

function P.security_actor(a, fname)
    local f = expect(ActorMT, a, 1, fname, "Actor", 3)
    return { id = f.id, meta = f.meta }
end
function P.security_scope(s, fname)
    local ids = {}
    for id in pairs(expect(ScopeMT, s, 1, fname, "Scope", 3).policies) do ids[#ids + 1] = id end
    return ids
end

-- §0: not in workflows.
if host.in_workflow() then return end

-- ---------------------------------------------------------------- the module

local security = {}

function security.actor()
    local id, meta = host.current()
    if id == nil then return nil end
    return new_actor(id, meta)
end

-- The unit's scope, its policies resolved here (none can be: see above).
function security.scope()
    local _, _, ids = host.current()
    if ids == nil then return nil end
    return new_scope({})
end

-- §5.4: with an actor and a scope, what the scope decides ("undefined" denies);
-- without either, allowed (moonwire has no strict mode).
function security.can(action, resource, meta)
    if type(action) ~= "string" then argerror(1, "can", "string", action) end
    if type(resource) ~= "string" then argerror(2, "can", "string", resource) end
    if meta ~= nil and type(meta) ~= "table" then argerror(3, "can", "table", meta) end
    local id, actor_meta, ids = host.current()
    if id == nil or ids == nil then return true end
    return ScopeMethods.evaluate(new_scope({}), new_actor(id, actor_meta), action, resource, meta) == "allow"
end

function security.new_actor(id, meta)
    if type(id) ~= "string" then argerror(1, "new_actor", "string", id) end
    if meta ~= nil and type(meta) ~= "table" then argerror(2, "new_actor", "table", meta) end
    local own, err = host.actor_meta(meta)
    if own == nil then
        error(host_error("bad argument #2 to 'new_actor' (" .. err .. ")", KINDS.INVALID, false), 2)
    end
    return new_actor(id, own)
end

-- Elements that are not Policy objects are skipped, as Wippy's: all of them, here.
function security.new_scope(policies)
    if policies ~= nil and type(policies) ~= "table" then argerror(1, "new_scope", "table", policies) end
    return new_scope({})
end

local function unsupported(what, id)
    return nil, host_error(what .. " " .. id .. " not found: moonwire does not support security policies",
                           KINDS.NOT_FOUND, false)
end
function security.policy(id)
    if type(id) ~= "string" then argerror(1, "policy", "string", id) end
    return unsupported("security policy", id)
end
function security.named_scope(id)
    if type(id) ~= "string" then argerror(1, "named_scope", "string", id) end
    return unsupported("policy group", id)
end
function security.token_store(id)
    if type(id) ~= "string" then argerror(1, "token_store", "string", id) end
    return nil, host_error("token store " .. id .. " not found: moonwire does not support token stores",
                           KINDS.NOT_FOUND, false)
end

P.modules.security = readonly(security)
