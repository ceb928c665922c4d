-- The `payload` global and the `json` module (wippy-modules §2, §3). Trusted: run once
-- per state after the prelude, with `core`, `host` (Python functions, see
-- _data_host.py) and the prelude's exports.
local core, host, P = ...
local readonly, new_object, fields_of, metatable_of = core.readonly, core.new_object, core.fields, core.metatable_of
local type, error = type, error
local host_error, KINDS, argerror, is_error = P.host_error, P.kinds, P.argerror, P.is_error
local charge_values, charge_decode = core.charge_values, core.charge_decode
local charge, remaining = core.charge, core.remaining
-- Instructions one keyword check of a JSON Schema validation costs (about 10 us in
-- jsonschema; measured with a $ref fan-out schema): validation stops where the budget
-- would, however the schema multiplies the work.
local STEP_COST = 1200
local function validate(schema, data, data_is_text)
    local err, steps = host.json_validate(schema, data, data_is_text, remaining() // STEP_COST)
    charge(steps * STEP_COST)
    return err
end

-- ====================================================================== payload

local FORMAT = {
    JSON = "json/plain", YAML = "yaml/plain", STRING = "text/plain", BYTES = "application/octet-stream",
    MSGPACK = "application/msgpack", LUA = "lua/any", GOLANG = "golang/any", ERROR = "golang/error",
}
local LUA, GOLANG, ERROR = FORMAT.LUA, FORMAT.GOLANG, FORMAT.ERROR

-- A payload holds `value` in `format`: a Lua value for LUA (by reference, as Wippy)
-- and GOLANG (the host's view of it), an error object for ERROR, a Lua string for the
-- others.
local PayloadMethods = {}
local PayloadMT = core.object_type("payload", PayloadMethods, {
    __tostring = function(p) return "payload{format=" .. fields_of(p).format .. "}" end,
})

local function new_payload(value, format)
    return new_object(PayloadMT, { value = value, format = format or LUA })
end

local function receiver(p, name)
    if type(p) ~= "userdata" or metatable_of(p) ~= PayloadMT then
        error("calling '" .. name .. "' on bad self (payload expected, got " .. type(p) .. ")", 3)
    end
    return fields_of(p)
end

-- The transcoder works in Python; what it converts is paid for first, as json's is.
local function transcode(f, to)
    if f.format == ERROR or to == ERROR then
        return nil, host_error("no transcoder from " .. f.format .. " to " .. to, KINDS.INTERNAL, false, "payload")
    end
    if type(f.value) == "string" then charge_decode(f.value) else charge_values(f.value) end
    local ok, value = host.transcode(f.value, f.format, to)
    if not ok then return nil, host_error(value, KINDS.INTERNAL, false, "payload") end
    return value
end

function PayloadMethods.get_format(p) return receiver(p, "get_format").format end

function PayloadMethods.data(p)
    local f = receiver(p, "data")
    if f.format == LUA then return f.value end
    return transcode(f, LUA)
end
PayloadMethods.unmarshal = function(p)
    local f = receiver(p, "unmarshal")
    if f.format == LUA then return f.value end
    return transcode(f, LUA)
end

function PayloadMethods.transcode(p, format)
    local f = receiver(p, "transcode")
    if type(format) ~= "string" then argerror(1, "transcode", "string", format) end
    if format == f.format then return new_payload(f.value, format), nil end
    local value, err = transcode(f, format)
    if err ~= nil then return nil, err end
    return new_payload(value, format), nil
end

-- Python takes a payload crossing to it (a message, a result) as its data.
P.crossings[PayloadMT] = function(p)
    local f = fields_of(p)
    return "payload", f.format, f.value
end

P.globals.payload = readonly({
    format = FORMAT,
    new = function(v)
        if is_error(v) then return new_payload(v, ERROR) end
        return new_payload(v, LUA)
    end,
})
-- Payloads the runtime hands out (messages, futures) hold Lua values.
P.new_payload = function(value) return new_payload(value, LUA) end

-- ====================================================================== json

local json = {}

function json.encode(v)
    charge_values(v)  -- the conversion holds the event loop: paid from the budget first
    local s, err = host.json_encode(v)
    if s == nil then return nil, host_error(err, KINDS.INTERNAL, false, "json.encode") end
    return s, nil
end

function json.decode(s)
    if type(s) ~= "string" then
        return nil, host_error("string expected, got " .. type(s), KINDS.INVALID, false, "json.decode")
    end
    if s == "" then return nil, host_error("empty input", KINDS.INVALID, false, "json.decode") end
    charge_decode(s)
    local ok, v_or_err = host.json_decode(s)
    if not ok then return nil, host_error(v_or_err, KINDS.INTERNAL, false, "json.decode") end
    return v_or_err, nil
end

local function check_schema(schema, fname)
    if schema == nil then
        return host_error("schema is required", KINDS.INVALID, false, fname)
    end
    local t = type(schema)
    if t ~= "table" and t ~= "string" then
        return host_error("schema must be a table or a JSON string, got " .. t, KINDS.INVALID, false, fname)
    end
    if t == "string" then charge_decode(schema) else charge_values(schema) end
end

function json.validate(schema, data)
    local bad = check_schema(schema, "json.validate")
    if bad then return false, bad end
    if data == nil then return false, host_error("data is required", KINDS.INVALID, false, "json.validate") end
    charge_values(data)
    local err = validate(schema, data, false)
    if err ~= nil then return false, host_error(err, KINDS.INVALID, false, "json.validate") end
    return true
end

function json.validate_string(schema, text)
    local bad = check_schema(schema, "json.validate_string")
    if bad then return false, bad end
    if type(text) ~= "string" then
        return false, host_error("data must be a JSON string, got " .. type(text), KINDS.INVALID, false,
                                 "json.validate_string")
    end
    charge_decode(text)
    local err = validate(schema, text, true)
    if err ~= nil then return false, host_error(err, KINDS.INVALID, false, "json.validate_string") end
    return true
end

P.modules.json = readonly(json)
