-- The `payload` global and the `json` module (wippy-modules §2, §3). Trusted: run once
-- per state after the prelude, with `core`, `host` (Python functions, see
-- _data_host.py) and the prelude's exports.
local core, host, P = ...
local readonly = core.readonly
local setmetatable, type = setmetatable, type
local host_error, KINDS = P.host_error, P.kinds

local PayloadMethods = {}
local PayloadMT = { __index = PayloadMethods, __name = "payload", __metatable = false }
local function new_payload(value, format)
    return setmetatable({ _value = value, _format = format or "lua" }, PayloadMT)
end
function PayloadMethods.data(p) return p._value end
function PayloadMethods.get_format(p) return p._format end
function PayloadMethods.transcode(p, format) return new_payload(p._value, format) end

P.globals.payload = readonly({ new = function(v, fmt) return new_payload(v, fmt) end })
local json = {}
local charge_values, charge_decode = core.charge_values, core.charge_decode
function json.encode(v)
    charge_values(v)  -- the conversion holds the event loop: paid from the budget first
    local s, err = host.json_encode(v)
    if s == nil then return nil, host_error(err, KINDS.INTERNAL, false) end
    return s
end
function json.decode(s)
    if type(s) ~= "string" then return nil, host_error("json.decode expects a string", KINDS.INVALID, false) end
    charge_decode(s)
    local ok, v_or_err = host.json_decode(s)
    if not ok then return nil, host_error(v_or_err, KINDS.INVALID, false) end
    return v_or_err
end
P.modules.json = readonly(json)
P.new_payload = new_payload
