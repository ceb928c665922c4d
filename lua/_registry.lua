-- The `registry` and `env` modules (wippy-modules §6, §7). Trusted: run once per state
-- after the prelude, with `core`, `host` (Python functions, see _registry_host.py) and
-- the prelude's exports. Entries and variables come from the node's project; a
-- workflow's state has neither module (lua/_workflow.lua removes them).
local core, host, P = ...
local readonly = core.readonly
local type, error = type, error
local string_find, string_sub = string.find, string.sub
local host_error = P.host_error

-- Raises naming the user's call: `level` counts the trusted calls in between.
local function check_string(v, n, fname, level)
    if type(v) ~= "string" then
        error("bad argument #" .. n .. " to '" .. fname .. "' (string expected, got " .. type(v) .. ")", level or 3)
    end
    return v
end

-- A host result: the value, or nil, message, kind.
local function result(v, message, kind)
    if v == nil then return nil, host_error(message, kind, false) end
    return v
end

-- ====================================================================== registry

local registry = {}
function registry.parse_id(s)
    check_string(s, 1, "parse_id")
    local colon = string_find(s, ":", 1, true)
    if colon == nil then return { ns = "", name = s } end
    return { ns = string_sub(s, 1, colon - 1), name = string_sub(s, colon + 1) }
end
function registry.get(id)
    return result(host.registry_get(check_string(id, 1, "get")))
end
function registry.find(filter)
    if type(filter) ~= "table" then
        error("bad argument #1 to 'find' (table expected, got " .. type(filter) .. ")", 2)
    end
    return result(host.registry_find(filter))
end
P.modules.registry = readonly(registry)

-- ====================================================================== env

local env = {}
local function check_key(key, fname)
    check_string(key, 1, fname, 4)
    if key == "" then
        return host_error("env." .. fname .. ": key must not be empty", P.kinds.INVALID, false)
    end
end
function env.get(key)
    local bad = check_key(key, "get")
    if bad then return nil, bad end
    return result(host.env_get(key))
end
function env.set(key, value)
    local bad = check_key(key, "set")
    if type(value) ~= "string" then
        error("bad argument #2 to 'set' (string expected, got " .. type(value) .. ")", 2)
    end
    if bad then return nil, bad end
    return result(host.env_set(key, value))
end
function env.get_all()
    return host.env_all()
end
P.modules.env = readonly(env)
