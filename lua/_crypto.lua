-- The `crypto` and `hash` modules (wippy-modules §8). Trusted: run once per state
-- after the prelude, with `core`, `host` (Python functions, see _crypto_host.py) and
-- the prelude's exports. Arguments are checked here; the work is done in Python.
--
-- Every call whose work grows with its input charges the instruction budget first, at
-- the rates below, measured against plain Lua (docs/lua.md, "crypto and hash").
local core, host, P = ...
local readonly, request, charge, charge_values, charge_decode =
      core.readonly, core.request, core.charge, core.charge_values, core.charge_decode
local type, tostring, error, ipairs = type, tostring, error, ipairs
local host_error, KINDS = P.host_error, P.kinds

-- Instructions' worth of time per unit of work (bench: ~8 ns per Lua instruction).
local BYTES_PER_INSTRUCTION = 8     -- hashing, HMAC, AEAD: about 1 ns per byte
local RANDOM_BYTES_PER_INSTRUCTION = 4
local FNV_COST_PER_BYTE = 8         -- FNV runs a Python loop: about 60 ns per byte
local PBKDF2_COST = { sha256 = 25, sha512 = 60 }  -- per iteration and derived block: 200 / 490 ns
local PBKDF2_BLOCK = { sha256 = 32, sha512 = 64 }
local RSA_SIGN_COST, RSA_VERIFY_COST = 250000, 20000
-- A pbkdf2 costing more than this runs in a worker thread while the unit waits (outside
-- workflows), so password hashing with hundreds of thousands of iterations needs no
-- bigger budget and does not hold the event loop.
local OFFLOAD_ABOVE = 1000000

local function charge_bytes(n, per)
    if n > 256 then charge(n // (per or BYTES_PER_INSTRUCTION)) end
end

-- As luaL_checklstring: a string, or a number converted to one; else a raised error
-- naming the caller's call.
local function check_string(v, n, fname)
    local t = type(v)
    if t == "string" then return v end
    if t == "number" then return tostring(v) end
    error("bad argument #" .. n .. " to '" .. fname .. "' (string expected, got " .. t .. ")", 3)
end
local function check_number(v, n, fname)
    if type(v) ~= "number" then
        error("bad argument #" .. n .. " to '" .. fname .. "' (number expected, got " .. type(v) .. ")", 3)
    end
    return v
end
local function opt_string(v, n, fname, default)
    if v == nil then return default end
    return check_string(v, n, fname)
end

-- A host result: the value, or nil, message, kind.
local function result(v, message, kind)
    if v == nil then return nil, host_error(message, kind, false) end
    return v
end

-- ====================================================================== crypto

local random = {}
function random.bytes(n)
    check_number(n, 1, "bytes")
    if n > 0 and n <= 1048576 then charge(n // RANDOM_BYTES_PER_INSTRUCTION) end
    return result(host.random_bytes(n))
end
function random.string(n, charset)
    check_number(n, 1, "string")
    if n > 0 and n <= 1048576 then charge(n // RANDOM_BYTES_PER_INSTRUCTION) end
    if type(charset) ~= "string" then charset = nil end  -- as Wippy: a non-string charset is ignored
    return result(host.random_string(n, charset))
end
function random.uuid() return host.random_uuid() end

local function hmac_with(algorithm, fname)
    return function(key, data)
        key, data = check_string(key, 1, fname), check_string(data, 2, fname)
        charge_bytes(#data)
        return result(host.hmac(algorithm, key, data))
    end
end
local hmac = { sha256 = hmac_with("sha256", "sha256"), sha512 = hmac_with("sha512", "sha512") }

local function aead(direction, algorithm)
    local run = host[direction]
    return function(data, key, aad)
        data, key = check_string(data, 1, algorithm), check_string(key, 2, algorithm)
        if type(aad) ~= "string" then aad = nil end  -- as Wippy: only a string is used as AAD
        charge_bytes(#data + (aad and #aad or 0))
        return result(run(algorithm, data, key, aad))
    end
end
local encrypt = { aes = aead("encrypt", "aes"), chacha20 = aead("encrypt", "chacha20") }
local decrypt = { aes = aead("decrypt", "aes"), chacha20 = aead("decrypt", "chacha20") }

local jwt = {}
function jwt.encode(claims, key, alg)
    if type(claims) ~= "table" then
        error("bad argument #1 to 'encode' (table expected, got " .. type(claims) .. ")", 2)
    end
    key = check_string(key, 2, "encode")
    alg = opt_string(alg, 3, "encode", "HS256")
    charge_values(claims)
    if alg == "RS256" then charge(RSA_SIGN_COST) end
    return result(host.jwt_encode(claims, key, alg))
end
function jwt.verify(token, key, alg, require_exp)
    token, key = check_string(token, 1, "verify"), check_string(key, 2, "verify")
    alg = opt_string(alg, 3, "verify", "HS256")
    if require_exp == nil then
        require_exp = true
    elseif type(require_exp) ~= "boolean" then
        error("bad argument #4 to 'verify' (boolean expected, got " .. type(require_exp) .. ")", 2)
    end
    charge_decode(token)
    if alg == "RS256" then charge(RSA_VERIFY_COST) end
    return result(host.jwt_verify(token, key, alg, require_exp))
end

local function pbkdf2(password, salt, iterations, length, hash_name)
    password, salt = check_string(password, 1, "pbkdf2"), check_string(salt, 2, "pbkdf2")
    check_number(iterations, 3, "pbkdf2")
    check_number(length, 4, "pbkdf2")
    if type(hash_name) ~= "string" then hash_name = "sha256" end  -- as Wippy: a non-string is the default
    local per = PBKDF2_COST[hash_name]
    local cost = 0
    if per and iterations > 0 and iterations <= 10000000 and length > 0 and length <= 1048576 then
        local blocks = (length + PBKDF2_BLOCK[hash_name] - 1) // PBKDF2_BLOCK[hash_name]
        cost = (iterations * blocks * per) // 1
    end
    if cost > OFFLOAD_ABOVE and host.can_offload() then
        local channel, message, kind = host.pbkdf2_start(password, salt, iterations, length, hash_name)
        if channel == nil then return nil, host_error(message, kind, false) end
        local key = request("chan_recv", channel)
        if not key then return nil, host_error("pbkdf2: key derivation failed", KINDS.INTERNAL, false) end
        return key
    end
    charge(cost)
    return result(host.pbkdf2(password, salt, iterations, length, hash_name))
end

local function constant_time_compare(a, b)
    a, b = check_string(a, 1, "constant_time_compare"), check_string(b, 2, "constant_time_compare")
    charge_bytes(#a + #b, 16)
    return host.compare(a, b)
end

P.modules.crypto = readonly({
    random = readonly(random), hmac = readonly(hmac), encrypt = readonly(encrypt), decrypt = readonly(decrypt),
    jwt = readonly(jwt), pbkdf2 = pbkdf2, constant_time_compare = constant_time_compare,
})

-- ====================================================================== hash

-- Deterministic; `value, nil`. A non-string first argument is an INVALID error (no
-- coercion, unlike crypto's checks).
local function not_a_string(fname, n, v)
    return nil, host_error("hash." .. fname .. ": argument #" .. n .. " must be a string, got " .. type(v),
        KINDS.INVALID, false)
end

local hash = {}
for _, algorithm in ipairs({ "md5", "sha1", "sha256", "sha512" }) do
    hash[algorithm] = function(s, raw)
        if type(s) ~= "string" then return not_a_string(algorithm, 1, s) end
        charge_bytes(#s)
        return host.digest(algorithm, s, not not raw), nil
    end
    hash["hmac_" .. algorithm] = function(data, secret, raw)
        local fname = "hmac_" .. algorithm
        if type(data) ~= "string" then return not_a_string(fname, 1, data) end
        if type(secret) ~= "string" then return not_a_string(fname, 2, secret) end
        charge_bytes(#data + #secret)
        return host.hmac_digest(algorithm, data, secret, not not raw), nil
    end
end
function hash.fnv32(s)
    if type(s) ~= "string" then return not_a_string("fnv32", 1, s) end
    charge(#s * FNV_COST_PER_BYTE)
    return host.fnv(32, s), nil
end
function hash.fnv64(s)
    if type(s) ~= "string" then return not_a_string("fnv64", 1, s) end
    charge(#s * FNV_COST_PER_BYTE)
    return host.fnv(64, s), nil
end
P.modules.hash = readonly(hash)
