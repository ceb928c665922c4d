-- Runtime type values of typed Lua (wippy-modules §11.2-11.4). Trusted; run once per
-- state after the prelude, with `core` and the prelude's table `M`.
--
-- A type value is an empty, protected table whose metatable (hidden) makes it callable
-- (validate or raise), gives it `is` and the reflection methods, and prints it. What it
-- is lives in `info`, keyed by the value, out of user code's reach: type values are
-- shared by every instance of a state, so nothing user code does may change them.
--
-- User types come from the declarations lua/_typed.py extracts (`build`); a named type
-- resolves its definition on first use, so forward and recursive references work.

local core, M = ...
local setmetatable, type, error, tostring, select, pairs, ipairs, rawequal, next =
      setmetatable, type, error, tostring, select, pairs, ipairs, rawequal, next
local math_type, math_floor, math_huge = math.type, math.floor, math.huge
local table_concat, string_format = table.concat, string.format
local protect = core.protect
local is_error = M.is_error

local info = setmetatable({}, { __mode = "k" })  -- type value -> descriptor
local TypeMT = { __metatable = false, __name = "type" }
local types = {}  -- what Python gets back

local function new_type(d)
    local t = setmetatable({}, TypeMT)
    info[t] = d
    return protect(t)
end

local function is_type(v) return info[v] ~= nil end

-- The descriptor that says what `t` is: an alias (a declared name) resolves, once, to
-- the type its declaration builds; a cycle of bare aliases (type A = A) is `any`.
local ANY
local function resolve(t)
    local d = info[t]
    local seen = 0
    while d.target do
        if d.resolved == nil then
            if d.resolving then return info[ANY] end
            d.resolving = true
            d.resolved = d.target()
            d.resolving = nil
        end
        d = info[d.resolved]
        seen = seen + 1
        if seen > 100 then return info[ANY] end
    end
    return d
end

-- ------------------------------------------------------------------ names and printing

local show
local function show_list(list, sep)
    local parts = {}
    for i, t in ipairs(list) do parts[i] = show(t) end
    return table_concat(parts, sep)
end

local function show_literal(v)
    if type(v) == "string" then return string_format("%q", v) end
    return tostring(v)
end

-- The type as written: its name, else its structure.
function show(t)
    local own = info[t]
    if own.name then return own.name end
    local d = resolve(t)
    local kind = d.kind
    if d.name then return d.name end
    if kind == "optional" then
        local inner = info[d.inner].kind
        local s = show(d.inner)
        if inner == "union" or inner == "intersection" or inner == "function" then s = "(" .. s .. ")" end
        return s .. "?"
    elseif kind == "union" then return show_list(d.variants, " | ")
    elseif kind == "intersection" then return show_list(d.variants, " & ")
    elseif kind == "array" then return "{" .. show(d.elem) .. "}"
    elseif kind == "map" then return "{[" .. show(d.key) .. "]: " .. show(d.val) .. "}"
    elseif kind == "tuple" then
        if d.table then return "{" .. show_list(d.items, ", ") .. "}" end
        return "(" .. show_list(d.items, ", ") .. ")"
    elseif kind == "literal" then return show_literal(d.value)
    elseif kind == "function" then
        if d.anything then return "function" end
        local ret = #d.ret == 1 and show(d.ret[1]) or "(" .. show_list(d.ret, ", ") .. ")"
        return "(" .. show_list(d.params, ", ") .. ") -> " .. ret
    elseif kind == "record" then
        local parts = {}
        for i, f in ipairs(d.fields) do parts[i] = f[1] .. (f[3] and "?: " or ": ") .. show(f[2]) end
        return "{" .. table_concat(parts, ", ") .. "}"
    end
    return kind
end

-- ------------------------------------------------------------------ validation

-- nil when `v` is a `t`, else the failure message and the path to it
-- ("age", "items[2]", "address.city").
local check

local function join(name, path)
    if path == nil then return name end
    if path:byte(1) == 91 then return name .. path end  -- "[": items[2]
    return name .. "." .. path
end

local function mismatch(t, v)
    return "expected " .. show(t) .. ", got " .. type(v)
end

local PRIMITIVE_CHECKS = {
    ["nil"] = function(v) return v == nil end,
    boolean = function(v) return type(v) == "boolean" end,
    number = function(v) return type(v) == "number" end,
    integer = function(v)
        if math_type(v) == "integer" then return true end
        -- integral floats count (§11.2: integer(3.0) passes)
        return type(v) == "number" and v == math_floor(v) and v ~= math_huge and v ~= -math_huge
    end,
    string = function(v) return type(v) == "string" end,
    any = function() return true end,
    unknown = function() return true end,
    never = function() return false end,
    -- Names Wippy's checker knows beyond the eight primitives.
    table = function(v) return type(v) == "table" end,
    userdata = function(v) return type(v) == "userdata" end,
    thread = function(v) return type(v) == "thread" end,
    error = function(v) return type(v) == "string" or is_error(v) end,
}

local function check_fields(d, v)
    for _, f in ipairs(d.fields) do
        local value = v[f[1]]
        if not (value == nil and f[3]) then
            local message, path = check(f[2], value)
            if message then return message, join(tostring(f[1]), path) end
        end
    end
    if d.bases then
        for _, base in ipairs(d.bases) do
            local message, path = check(base, v)
            if message then return message, path end
        end
    end
end

function check(t, v)
    local d = resolve(t)
    local kind = d.kind
    local primitive = d.primitive
    if kind == "generic" or kind == "instantiated" then
        return check(d.body(), v)
    elseif primitive then
        if primitive(v) then return nil end
        return mismatch(t, v)
    elseif kind == "optional" then
        if v == nil then return nil end
        return check(d.inner, v)
    elseif kind == "union" then
        for _, variant in ipairs(d.variants) do
            if check(variant, v) == nil then return nil end
        end
        return mismatch(t, v)
    elseif kind == "intersection" then
        for _, variant in ipairs(d.variants) do
            local message, path = check(variant, v)
            if message then return message, path end
        end
        return nil
    elseif kind == "literal" then
        if v == d.value then return nil end
        return "expected " .. show(t) .. ", got " .. (type(v) == type(d.value) and show_literal(v) or type(v))
    elseif kind == "function" then
        if type(v) == "function" then return nil end
        return mismatch(t, v)
    elseif kind == "tuple" then
        if d.table and type(v) ~= "table" then return mismatch(t, v) end
        return nil
    end
    if type(v) ~= "table" then return mismatch(t, v) end
    if kind == "record" then
        return check_fields(d, v)
    elseif kind == "array" then
        for i = 1, #v do
            local message, path = check(d.elem, v[i])
            if message then return message, join("[" .. i .. "]", path) end
        end
    elseif kind == "map" then
        for key, value in pairs(v) do
            local message, path = check(d.key, key)
            if message then return "key " .. tostring(key) .. ": " .. message, path end
            message, path = check(d.val, value)
            if message then return message, join("[" .. tostring(key) .. "]", path) end
        end
    end
    return nil
end

local function failure(t, v)
    local message, path = check(t, v)
    if message and path then message = path .. ": " .. message end
    return message
end

-- ------------------------------------------------------------------ generics

local instantiate

local function call(t, ...)
    local n = select("#", ...)
    local d = resolve(t)
    if n == 0 then error("type " .. show(t) .. " expects at least 1 argument", 2) end
    if d.kind == "generic" then
        local all = true
        for i = 1, n do
            if not is_type((select(i, ...))) then all = false break end
        end
        if all then return instantiate(t, { ... }) end
    end
    if n > 1 then error("type " .. show(t) .. " expects 1 argument, got " .. n, 2) end
    local v = ...
    local message = failure(t, v)
    if message then error(message, 2) end
    return v
end

-- ------------------------------------------------------------------ methods

local function value_arg(...)  -- T:is(v) and T.is(v) both work
    if select("#", ...) >= 2 then return (select(2, ...)) end
    return (...)
end

local function iterate_list(list, pairs_of)
    local i = 0
    return function()
        i = i + 1
        local item = list and list[i]
        if item == nil then return nil end
        if pairs_of then return pairs_of(item) end
        return item
    end
end

local METHODS = {
    is = function(t) return function(...)
        local v = value_arg(...)
        local message = failure(t, v)
        if message then return nil, message end
        return v, nil
    end end,
    kind = function(t) return function() return resolve(t).kind end end,
    name = function(t) return function() return info[t].name or resolve(t).name end end,
    elem = function(t) return function() return resolve(t).elem end end,
    key = function(t) return function() return resolve(t).key end end,
    val = function(t) return function() return resolve(t).val end end,
    inner = function(t) return function() return resolve(t).inner end end,
    ret = function(t) return function()
        local d = resolve(t)
        if d.kind ~= "function" or d.anything then return nil end
        if #d.ret == 1 then return d.ret[1] end
        return new_type({ kind = "tuple", items = d.ret })
    end end,
    fields = function(t) return function()
        local d = resolve(t)
        return iterate_list(d.kind == "record" and d.fields or nil, function(f) return f[1], f[2] end)
    end end,
    variants = function(t) return function()
        local d = resolve(t)
        return iterate_list((d.kind == "union" or d.kind == "intersection") and d.variants or nil)
    end end,
    params = function(t) return function()
        local d = resolve(t)
        return iterate_list(d.kind == "function" and d.params or nil)
    end end,
    tparams = function(t) return function()
        local d = resolve(t)
        if d.kind ~= "generic" then return iterate_list(nil) end
        d.body()  -- builds the constraints
        return iterate_list(d.tparams, function(p) return p[1], p[2] end)
    end end,
}

local bound = setmetatable({}, { __mode = "k" })  -- type value -> { method name -> closure }

local function method(t, key)
    local make = METHODS[key]
    if make == nil then return nil end
    local cache = bound[t]
    if cache == nil then cache = {}; bound[t] = cache end
    local fn = cache[key]
    if fn == nil then fn = make(t); cache[key] = fn end
    return fn
end

TypeMT.__index = function(t, key)
    local fn = method(t, key)
    if fn ~= nil then return fn end
    local d = resolve(t)
    if d.kind == "instantiated" or d.kind == "generic" then d = resolve(d.body()) end
    if d.field_index then return d.field_index[key] end  -- T.field: the field's type
    return nil
end
TypeMT.__newindex = function(_, key)
    error("attempt to modify a type (field '" .. tostring(key) .. "')", 2)
end
TypeMT.__call = call
TypeMT.__tostring = function(t) return show(t) end

-- ------------------------------------------------------------------ built-in types

local primitives = {}
for _, name in ipairs({ "nil", "boolean", "number", "integer", "string", "any", "unknown", "never",
                        "table", "userdata", "thread", "error" }) do
    primitives[name] = new_type({ kind = name, name = name, primitive = PRIMITIVE_CHECKS[name] })
end
ANY = primitives.any
local ANY_FUNCTION = new_type({ kind = "function", anything = true, params = {}, ret = {} })

-- ------------------------------------------------------------------ building declared types

-- A node (see lua/_typed.py) as a type value. `scope`: the chunk's declared names and
-- the type parameters in force.
local build

local function build_list(nodes, scope)
    local out = {}
    for i, node in ipairs(nodes or {}) do out[i] = build(node, scope) end
    return out
end

local function opaque(name)
    return new_type({ kind = "any", name = name, primitive = PRIMITIVE_CHECKS.any })
end

function build(node, scope)
    local k = node.k
    if k == "name" then
        local name = node.name
        local found = scope.params[name] or scope.declared[name] or primitives[name]
        if found == nil then return opaque(name) end  -- a module's type (time.Time), unknown here
        if node.args then return instantiate(found, build_list(node.args, scope)) end
        return found
    elseif k == "optional" then
        return new_type({ kind = "optional", inner = build(node.type, scope) })
    elseif k == "union" or k == "intersection" then
        return new_type({ kind = k, variants = build_list(node.types, scope) })
    elseif k == "array" then
        return new_type({ kind = "array", elem = build(node.type, scope) })
    elseif k == "variadic" then
        return build(node.type, scope)
    elseif k == "map" then
        return new_type({ kind = "map", key = build(node.key, scope), val = build(node.value, scope) })
    elseif k == "record" then
        local fields, index = {}, {}
        for i, f in ipairs(node.fields) do
            local ft = build(f[2], scope)
            fields[i] = { f[1], ft, f[3] }
            index[f[1]] = ft
        end
        return new_type({ kind = "record", fields = fields, field_index = index,
                          bases = node.bases and build_list(node.bases, scope) or nil })
    elseif k == "func" then
        if node.any then return ANY_FUNCTION end
        return new_type({ kind = "function", params = build_list(node.params, scope), ret = build_list(node.ret, scope) })
    elseif k == "tuple" then
        return new_type({ kind = "tuple", items = build_list(node.types, scope), table = node.table })
    elseif k == "literal" then
        return new_type({ kind = "literal", value = node.value })
    end
    return opaque(nil)  -- typeof, keyof, T[K], conditional: not known at run time
end

-- A generic applied to type arguments. Cached per generic and argument list, so
-- Box(string) returns the same value each time.
function instantiate(generic, args)
    local d = resolve(generic)
    if d.kind ~= "generic" then return generic end
    local key = {}
    for i, a in ipairs(args) do key[i] = tostring(info[a]) end
    key = table_concat(key, ",")
    local cached = d.instances[key]
    if cached then return cached end
    local names = {}
    for i, a in ipairs(args) do names[i] = show(a) end
    local body
    local t = new_type({
        kind = "instantiated", name = d.name .. "<" .. table_concat(names, ", ") .. ">",
        body = function()
            if body == nil then body = d.make(args) end
            return body
        end,
    })
    d.instances[key] = t
    return t
end

-- The chunk's declarations (lua/_typed.py) as type values, by name.
function types.build(declarations)
    local declared = {}
    for _, decl in ipairs(declarations) do
        local name = decl.name
        if declared[name] == nil then
            local scope = { declared = declared, params = {} }
            if decl.params and #decl.params > 0 then
                local tparams = {}
                local d = { kind = "generic", name = name, tparams = tparams,
                            -- weak: instantiating in a loop cannot fill the state's memory
                            instances = setmetatable({}, { __mode = "v" }) }
                local default_args
                for i, p in ipairs(decl.params) do
                    -- constraints resolve lazily too: they may name later declarations
                    tparams[i] = { p.name, nil, p.constraint }
                end
                function d.make(args)
                    local params = {}
                    for i, p in ipairs(tparams) do params[p[1]] = args[i] or ANY end
                    return build(decl.type, { declared = declared, params = params })
                end
                function d.body()
                    if default_args == nil then
                        default_args = {}
                        for i, p in ipairs(tparams) do
                            default_args[i] = p[3] and build(p[3], scope) or ANY
                            p[2] = p[3] and default_args[i] or nil
                        end
                    end
                    if d.default_body == nil then d.default_body = d.make(default_args) end
                    return d.default_body
                end
                declared[name] = new_type(d)
            else
                declared[name] = new_type({ name = name, target = function() return build(decl.type, scope) end })
            end
        end
    end
    -- Resolved now, while the chunk registers (no instruction budget runs here): a
    -- resolution cut short by a unit's budget would leave the type half made.
    for _, t in pairs(declared) do resolve(t) end
    return declared
end

-- ------------------------------------------------------------------ globals

local globals = M.globals
for _, name in ipairs({ "number", "integer", "boolean", "any", "unknown", "never" }) do
    globals[name] = primitives[name]
end

-- type(T) is "type" for a type value (§11.3); everything else as Lua's type().
local string_view  -- the library view: a type where a type is expected, yet type() says "table"
globals.type = function(v)
    local t = type(v)
    if t == "table" and info[v] ~= nil and v ~= string_view then return "type" end
    return t
end

-- The shared `string` view (core.set_globals) is also the string type: callable, and
-- `string.is`/`string:kind()` and the other reflection names reach the type while
-- `string.format` still reaches the library.
local STRING = primitives.string
local string_methods = {}
for key in pairs(METHODS) do string_methods[key] = method(STRING, key) end
types.library_views = {
    string = {
        methods = string_methods,
        __call = function(_, ...) return call(STRING, ...) end,
    },
}
-- Called with the view once core.set_globals made it: `string` is then a type value
-- wherever one is expected (Box(string), {[string]: T} built at run time, type()).
function types.adopt_string_view(view)
    info[view] = info[STRING]
    string_view = view
end
return types
