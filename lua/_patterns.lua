-- Lua pattern matching that cannot hold the event loop (issue 14, finding 3).
--
-- lstrlib's matcher is a backtracking C function: `("a"):rep(100):find(("a-"):rep(5) .. "b")`
-- runs for seconds and no count hook can stop it. This chunk holds two things:
--
--  * `lua`: a port of lstrlib's matcher (Lua 5.4/5.5) to Lua, with the same results,
--    captures and error messages. It runs under the ordinary count hook, so a hostile
--    pattern just runs out of instruction budget.
--  * `bounded(...)`: the `find`, `match`, `gmatch` and `gsub` user code sees. Each
--    computes a cheap upper bound on the C matcher's work (starts x the product of
--    what each backtracking item can try x the pattern's length); when the bound fits
--    in the thread's remaining budget the C function runs and the bound is charged,
--    otherwise the Lua matcher runs and is charged instruction by instruction.
--
-- Trusted: runs once per state with the full standard library, before the core.

local byte, sub, char, cfind, cgsub, format = string.byte, string.sub, string.char, string.find, string.gsub, string.format
local cmatch, cgmatch = string.match, string.gmatch
local type, tostring, tonumber, error, setmetatable, getmetatable, pcall =
      type, tostring, tonumber, error, setmetatable, getmetatable, pcall
local tointeger, huge, math_type = math.tointeger, math.huge, math.type
local concat, unpack = table.concat, table.unpack
local getinfo = debug.getinfo

local ESC, LBRACKET, RBRACKET, CARET, DOLLAR, LPAREN, RPAREN, DOT = 37, 91, 93, 94, 36, 40, 41, 46
local STAR, PLUS, MINUS, QUESTION = 42, 43, 45, 63
local LETTER_B, LETTER_F, DIGIT_0, DIGIT_1, DIGIT_9 = 98, 102, 48, 49, 57
local MAXCAPTURES, MAXCCALLS = 32, 200  -- as lstrlib (LUA_MAXCAPTURES, MAXCCALLS)
local CAP_UNFINISHED, CAP_POSITION = -1, -2

-- A pattern error raised by the Lua matcher, told apart from errors raised by a gsub
-- replacement function (which pass through untouched).
local PatternError = {}
local function fail(message)
    error(setmetatable({ message = message }, PatternError), 0)
end

-- What %x matches for every letter x, computed by the C matcher itself, so both agree
-- on the classes this build has (%z included) under any locale. Kept small, as every
-- state holds them: the members only; no table for a letter that is no class (it
-- matches only itself); an upper-case class that is its lower-case one's complement
-- (lstrlib's rule) shares that one's table. A table of all 256 for each letter was
-- 110 KiB of every state.
local CLASS, COMPLEMENT = {}, {}
for l in ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"):gmatch(".") do
    if l ~= "b" and l ~= "f" then  -- %b and %f are not classes (inside [] they match themselves)
        local members, own, class = {}, byte(l), false
        for c = 0, 255 do
            local member = cfind(char(c), "^%" .. l) ~= nil
            if member then members[c] = true end
            if member ~= (c == own) then class = true end
        end
        if class then CLASS[own] = members end
    end
end
for upper = byte("A"), byte("Z") do
    local mine, lower = CLASS[upper], CLASS[upper + 32]
    if mine and lower then
        local complement = true
        for c = 0, 255 do
            if (mine[c] == true) == (lower[c] == true) then complement = false break end
        end
        if complement then CLASS[upper], COMPLEMENT[upper] = nil, lower end
    end
end

local function match_class(c, cl)
    local members = CLASS[cl]
    if members then return members[c] == true end
    members = COMPLEMENT[cl]
    if members then return members[c] ~= true end
    return cl == c
end

-- p: index of '['; ec: index of the closing ']'.
local function matchbracketclass(pat, c, p, ec)
    local sig = true
    if byte(pat, p + 1) == CARET then
        sig = false
        p = p + 1
    end
    p = p + 1
    while p < ec do
        local pc = byte(pat, p)
        if pc == ESC then
            p = p + 1
            if match_class(c, byte(pat, p)) then return sig end
            p = p + 1
        elseif byte(pat, p + 1) == MINUS and p + 2 < ec then
            if pc <= c and c <= byte(pat, p + 2) then return sig end
            p = p + 3
        else
            if pc == c then return sig end
            p = p + 1
        end
    end
    return not sig
end

-- Index just past the single-character class starting at p.
local function classend(pat, plen, p)
    local c = byte(pat, p)
    p = p + 1
    if c == ESC then
        if p > plen then fail("malformed pattern (ends with '%')") end
        return p + 1
    elseif c == LBRACKET then
        if byte(pat, p) == CARET then p = p + 1 end
        repeat
            if p > plen then fail("malformed pattern (missing ']')") end
            local cc = byte(pat, p)
            p = p + 1
            if cc == ESC and p <= plen then p = p + 1 end
        until byte(pat, p) == RBRACKET
        return p + 1
    end
    return p
end

-- The Lua matcher's own instructions are counted by the hook, but much of its time
-- goes to C calls (string.byte) that count as one instruction each: every CHARGE_EVERY
-- character tests charge CHARGE_EXTRA more (set by `bounded`; measured in
-- bench/hostile.py against a plain loop).
local CHARGE_EVERY, CHARGE_EXTRA = 32, 0
local charge_extra = function(_) end

local function singlematch(ms, s, p, ep)
    local tests = ms.tests + 1
    if tests == CHARGE_EVERY then
        tests = 0
        charge_extra(CHARGE_EXTRA)
    end
    ms.tests = tests
    if s > ms.n then return false end
    local c = byte(ms.src, s)
    local pc = byte(ms.pat, p)
    if pc == DOT then return true
    elseif pc == ESC then return match_class(c, byte(ms.pat, p + 1))
    elseif pc == LBRACKET then return matchbracketclass(ms.pat, c, p, ep - 1)
    end
    return pc == c
end

local match

local function max_expand(ms, s, p, ep)
    local i = 0
    while singlematch(ms, s + i, p, ep) do i = i + 1 end
    while i >= 0 do
        local res = match(ms, s + i, ep + 1)
        if res then return res end
        i = i - 1
    end
    return nil
end

local function min_expand(ms, s, p, ep)
    while true do
        local res = match(ms, s, ep + 1)
        if res then
            return res
        elseif singlematch(ms, s, p, ep) then
            s = s + 1
        else
            return nil
        end
    end
end

local function start_capture(ms, s, p, what)
    local level = ms.level + 1
    if level > MAXCAPTURES then fail("too many captures") end
    ms.cinit[level] = s
    ms.clen[level] = what
    ms.level = level
    local res = match(ms, s, p)
    if res == nil then ms.level = ms.level - 1 end
    return res
end

local function end_capture(ms, s, p)
    local l = ms.level
    while l >= 1 and ms.clen[l] ~= CAP_UNFINISHED do l = l - 1 end
    if l < 1 then fail("invalid pattern capture") end
    ms.clen[l] = s - ms.cinit[l]
    local res = match(ms, s, p)
    if res == nil then ms.clen[l] = CAP_UNFINISHED end
    return res
end

local function match_capture(ms, s, digit)
    local l = digit - DIGIT_0
    if l < 1 or l > ms.level or ms.clen[l] == CAP_UNFINISHED then
        fail(format("invalid capture index %%%d", l))
    end
    local len = ms.clen[l]
    if len >= 0 and ms.n - s + 1 >= len then
        local init = ms.cinit[l]
        if sub(ms.src, init, init + len - 1) == sub(ms.src, s, s + len - 1) then
            return s + len
        end
    end
    return nil
end

-- p: index of the first argument of %b.
local function matchbalance(ms, s, p)
    if p >= ms.plen then fail("malformed pattern (missing arguments to '%b')") end
    local b = byte(ms.pat, p)
    local src, n = ms.src, ms.n
    if (byte(src, s) or 0) ~= b then return nil end  -- the byte past the end reads as '\0', as in C
    local e = byte(ms.pat, p + 1)
    local cont = 1
    s = s + 1
    while s <= n do
        local c = byte(src, s)
        if c == e then
            cont = cont - 1
            if cont == 0 then return s + 1 end
        elseif c == b then
            cont = cont + 1
        end
        s = s + 1
    end
    return nil
end

-- Where a match of pattern index p at subject index s ends (exclusive), or nil.
match = function(ms, s, p)
    local depth = ms.matchdepth
    if depth == 0 then fail("pattern too complex") end
    ms.matchdepth = depth - 1
    local pat, plen = ms.pat, ms.plen
    while p <= plen do
        local pc = byte(pat, p)
        local next_pc = byte(pat, p + 1)
        if pc == LPAREN then
            if next_pc == RPAREN then
                s = start_capture(ms, s, p + 2, CAP_POSITION)
            else
                s = start_capture(ms, s, p + 1, CAP_UNFINISHED)
            end
            break
        elseif pc == RPAREN then
            s = end_capture(ms, s, p + 1)
            break
        elseif pc == DOLLAR and p == plen then
            if s ~= ms.n + 1 then s = nil end
            break
        elseif pc == ESC and next_pc == LETTER_B then
            s = matchbalance(ms, s, p + 2)
            if s == nil then break end
            p = p + 4
        elseif pc == ESC and next_pc == LETTER_F then
            p = p + 2
            if byte(pat, p) ~= LBRACKET then fail("missing '[' after '%f' in pattern") end
            local ep = classend(pat, plen, p)
            local previous = s == 1 and 0 or byte(ms.src, s - 1)
            local current = byte(ms.src, s) or 0
            if not matchbracketclass(pat, previous, p, ep - 1) and matchbracketclass(pat, current, p, ep - 1) then
                p = ep
            else
                s = nil
                break
            end
        elseif pc == ESC and next_pc and next_pc >= DIGIT_0 and next_pc <= DIGIT_9 then
            s = match_capture(ms, s, next_pc)
            if s == nil then break end
            p = p + 2
        else
            local ep = classend(pat, plen, p)
            local q = byte(pat, ep)
            if not singlematch(ms, s, p, ep) then
                if q == STAR or q == QUESTION or q == MINUS then
                    p = ep + 1
                else
                    s = nil
                    break
                end
            elseif q == QUESTION then
                local res = match(ms, s + 1, ep + 1)
                if res ~= nil then
                    s = res
                    break
                end
                p = ep + 1
            elseif q == PLUS then
                s = max_expand(ms, s + 1, p, ep)
                break
            elseif q == STAR then
                s = max_expand(ms, s, p, ep)
                break
            elseif q == MINUS then
                s = min_expand(ms, s, p, ep)
                break
            else
                s = s + 1
                p = ep
            end
        end
    end
    ms.matchdepth = ms.matchdepth + 1
    return s
end

local function new_state(s, p)
    return { src = s, n = #s, pat = p, plen = #p, level = 0, cinit = {}, clen = {}, matchdepth = MAXCCALLS, tests = 0 }
end

local function restart(ms)
    ms.level = 0
    ms.matchdepth = MAXCCALLS
end

-- Capture i (1-based) of a match from s to e (exclusive); the whole match when the
-- pattern has no captures and i == 1.
local function get_onecapture(ms, i, s, e)
    if i > ms.level then
        if i ~= 1 then fail(format("invalid capture index %%%d", i)) end
        return sub(ms.src, s, e - 1)
    end
    local l = ms.clen[i]
    if l == CAP_UNFINISHED then fail("unfinished capture") end
    if l == CAP_POSITION then return ms.cinit[i] end
    return sub(ms.src, ms.cinit[i], ms.cinit[i] + l - 1)
end

local function push_captures(ms, s, e)
    local n = (ms.level == 0 and s) and 1 or ms.level
    if n == 1 then return get_onecapture(ms, 1, s, e) end
    local out = {}
    for i = 1, n do out[i] = get_onecapture(ms, i, s, e) end
    return unpack(out, 1, n)
end

local function posrelat(pos, len)  -- lstrlib's posrelatI
    if pos > 0 then return pos
    elseif pos == 0 then return 1
    elseif pos < -len then return 1
    end
    return len + pos + 1
end

local function escape(p)
    return (cgsub(p, "[^%w]", "%%%0"))
end

-- string.find (is_find) and string.match; arguments already checked.
local function find_aux(is_find, s, p, init, plain)
    local ls = #s
    init = posrelat(init or 1, ls)
    if init > ls + 1 then return nil end
    if is_find and (plain or not cfind(p, "[%^%$%*%+%?%.%(%[%%%-]")) then
        p = escape(p)  -- a literal search, as lmemfind's, but interruptible
    end
    local anchor = byte(p, 1) == CARET
    local pstart = anchor and 2 or 1
    local ms = new_state(s, p)
    local s1 = init
    repeat
        restart(ms)
        local e = match(ms, s1, pstart)
        if e then
            if is_find then
                if ms.level == 0 then return s1, e - 1 end
                return s1, e - 1, push_captures(ms, nil, nil)
            end
            return push_captures(ms, s1, e)
        end
        s1 = s1 + 1
    until s1 > ls + 1 or anchor
    return nil
end

local function gmatch(s, p, init)
    local ls = #s
    local src = posrelat(init or 1, ls)
    if src > ls + 1 then src = ls + 2 end
    local ms = new_state(s, p)
    local lastmatch = nil
    return function()
        while src <= ls + 1 do
            restart(ms)
            local e = match(ms, src, 1)
            if e ~= nil and e ~= lastmatch then
                local start = src
                src, lastmatch = e, e
                return push_captures(ms, start, e)
            end
            src = src + 1
        end
    end
end

local function add_s(ms, out, s, e, news)
    local i = 1
    while true do
        local j = cfind(news, "%", i, true)
        if j == nil then break end
        out[#out + 1] = sub(news, i, j - 1)
        local c = byte(news, j + 1)
        if c == ESC then
            out[#out + 1] = "%"
        elseif c == DIGIT_0 then
            out[#out + 1] = sub(ms.src, s, e - 1)
        elseif c and c >= DIGIT_1 and c <= DIGIT_9 then
            out[#out + 1] = tostring(get_onecapture(ms, c - DIGIT_0, s, e))
        else
            fail("invalid use of '%' in replacement string")
        end
        i = j + 2
    end
    out[#out + 1] = sub(news, i)
end

-- Appends the replacement of one match; true when it changed the text.
local function add_value(ms, out, s, e, repl, kind)
    local value
    if kind == "function" then
        value = repl(push_captures(ms, s, e))
    elseif kind == "table" then
        value = repl[get_onecapture(ms, 1, s, e)]
    else
        add_s(ms, out, s, e, repl)
        return true
    end
    if not value then
        out[#out + 1] = sub(ms.src, s, e - 1)
        return false
    end
    local vt = type(value)
    if vt ~= "string" and vt ~= "number" then
        fail(format("invalid replacement value (a %s)", vt))
    end
    out[#out + 1] = tostring(value)
    return true
end

-- string.gsub; arguments already checked (repl: string, table or function).
local function gsub(s, p, repl, max_s)
    local ls = #s
    local kind = type(repl)
    max_s = max_s or ls + 1
    local anchor = byte(p, 1) == CARET
    local pstart = anchor and 2 or 1
    local ms = new_state(s, p)
    local src, lastmatch, n, changed = 1, nil, 0, false
    local out, copied = {}, 1  -- text before `src` not yet in `out` starts at `copied`
    while n < max_s do
        restart(ms)
        local e = match(ms, src, pstart)
        if e ~= nil and e ~= lastmatch then
            n = n + 1
            out[#out + 1] = sub(s, copied, src - 1)
            changed = add_value(ms, out, src, e, repl, kind) or changed
            src, lastmatch, copied = e, e, e
        elseif src <= ls then
            src = src + 1
        else
            break
        end
        if anchor then break end
    end
    if not changed then return s, n end
    out[#out + 1] = sub(s, copied)
    return concat(out), n
end

-- Runs a Lua-matcher call, turning its pattern errors into ordinary errors raised at
-- the caller of the library function (as luaL_error does); other errors (a gsub
-- replacement function's, the instruction budget's) pass through unchanged.
local function reraise(ok, ...)
    if ok then return ... end
    local err = ...
    if getmetatable(err) == PatternError then error(err.message, 2) end
    error(err, 0)
end

local lua = {
    find = function(s, p, init, plain) return reraise(pcall(find_aux, true, s, p, init, plain)) end,
    match = function(s, p, init) return reraise(pcall(find_aux, false, s, p, init)) end,
    gmatch = function(s, p, init)
        local iterate = gmatch(s, p, init)
        return function() return reraise(pcall(iterate)) end
    end,
    gsub = function(s, p, repl, max_s) return reraise(pcall(gsub, s, p, repl, max_s)) end,
}

-- ====================================================================== bounds

-- What the C matcher's work depends on, per pattern: nil when the pattern is one the
-- C matcher could raise an error on (malformed, a bad capture, too deep); such
-- patterns always take the Lua path, whose errors name the caller's line.
--   anchored: find/match/gsub try one start only
--   items: pattern items (each costs a step per attempt)
--   classes: the single-char classes under *, +, - (each tries at most the number of
--            subject characters it matches, plus one)
--   dots: '.' under *, +, - (each tries up to the subject's length, plus one)
--   optionals: items under '?' (each doubles the work)
--   linear: %b and back-references (each scans up to the subject's length)
--   captures: how many captures the pattern makes
local function analyse(p, anchor_allowed)
    local plen = #p
    local i = 1
    local info = { anchored = false, items = 1, classes = {}, dots = 0, optionals = 0, linear = 0, captures = 0 }
    if anchor_allowed and byte(p, 1) == CARET then
        info.anchored = true
        i = 2
    end
    local open, closed = {}, {}
    local ok, err = pcall(function()
        while i <= plen do
            local c, next_c = byte(p, i), byte(p, i + 1)
            info.items = info.items + 1
            if c == LPAREN then
                info.captures = info.captures + 1
                if info.captures > MAXCAPTURES then fail("too many captures") end
                if next_c == RPAREN then
                    closed[info.captures] = true
                    i = i + 2
                else
                    open[#open + 1] = info.captures
                    i = i + 1
                end
            elseif c == RPAREN then
                if #open == 0 then fail("invalid pattern capture") end
                closed[open[#open]] = true
                open[#open] = nil
                i = i + 1
            elseif c == DOLLAR and i == plen then
                i = i + 1
            elseif c == ESC and next_c == LETTER_B then
                if i + 3 > plen then fail("missing arguments to %b") end
                info.linear = info.linear + 1
                i = i + 4
            elseif c == ESC and next_c == LETTER_F then
                if byte(p, i + 2) ~= LBRACKET then fail("missing '['") end
                i = classend(p, plen, i + 2)
            elseif c == ESC and next_c and next_c >= DIGIT_0 and next_c <= DIGIT_9 then
                if not closed[next_c - DIGIT_0] then fail("invalid capture index") end
                info.linear = info.linear + 1
                i = i + 2
            else
                local ep = classend(p, plen, i)
                local q = byte(p, ep)
                if q == STAR or q == PLUS or q == MINUS then
                    if c == DOT then
                        info.dots = info.dots + 1
                    else
                        local class = sub(p, i, ep - 1)
                        -- standing alone, a punctuation char could mean something else ('$', '^')
                        if ep == i + 1 and not cfind(class, "^%w") then class = "%" .. class end
                        info.classes[#info.classes + 1] = class
                    end
                    i = ep + 1
                elseif q == QUESTION then
                    info.optionals = info.optionals + 1
                    i = ep + 1
                else
                    i = ep
                end
            end
        end
        if #open > 0 then fail("unfinished capture") end
    end)
    -- Recursion depth is at most one per item; far from MAXCCALLS, C cannot say "too complex".
    if not ok or info.items > MAXCCALLS - 50 then return nil end
    info.plen = plen
    return info
end

-- Analyses by pattern, for find/match/gsub and for gmatch (where '^' is a plain char).
-- Bounded: cleared when full, so hostile code cycling patterns costs only re-analysis.
local CACHE_LIMIT = 512
local analysed = { [true] = {}, [false] = {} }
local analysed_count = 0
local NOT_SAFE = {}
local SPECIALS = "[%^%$%*%+%?%.%(%[%%%-]"

-- The analysis of p (nil: not safe for C), and whether p has no special characters
-- (string.find then searches it literally).
local function analysis(p, anchor_allowed)
    local cache = analysed[anchor_allowed]
    local info = cache[p]
    if info == nil then
        info = analyse(p, anchor_allowed) or NOT_SAFE
        if info ~= NOT_SAFE then info.nospecials = not cfind(p, SPECIALS) end
        if analysed_count >= CACHE_LIMIT then
            analysed = { [true] = {}, [false] = {} }
            analysed_count = 0
            cache = analysed[anchor_allowed]
        end
        cache[p] = info
        analysed_count = analysed_count + 1
    end
    if info == NOT_SAFE then return nil, false end  -- a pattern without specials is always safe
    return info, info.nospecials
end

-- ====================================================================== the functions user code sees

-- `charge(cost)` adds to the running thread's instruction count (failing when over
-- budget); `remaining()` is what is left (math.huge when unlimited); `typename(v)` as
-- luaL_typeerror names values. STEPS_PER_INSTRUCTION: matcher steps one VM instruction's
-- worth of budget pays for (measured in bench/hostile.py).
local function bounded(charge, remaining, typename, STEPS_PER_INSTRUCTION, BYTES_PER_INSTRUCTION, TEST_COST,
                       text_of)
    charge_extra, CHARGE_EXTRA = charge, CHARGE_EVERY * TEST_COST

    -- luaL_argerror's message, raised at the caller of the library function; `depth`:
    -- frames between argerror's caller and the library function (0: called by it).
    local function argerror(arg, message, depth)
        depth = depth or 0
        local info = getinfo(2 + depth, "n")
        local name = info and info.name or "?"
        if info and info.namewhat == "method" then
            arg = arg - 1
            if arg == 0 then error(format("calling '%s' on bad self (%s)", name, message), 3 + depth) end
        end
        error(format("bad argument #%d to '%s' (%s)", arg, name, message), 3 + depth)
    end

    -- `text_of(v)`: the text of an object the string functions take as a string (an
    -- error object), else nil.
    local function checkstring(v, arg)
        local t = type(v)
        if t == "string" then return v end
        if t == "number" then return tostring(v) end
        local text = text_of(v)
        if text ~= nil then return text end
        argerror(arg, "string expected, got " .. typename(v), 1)
    end

    local function optinteger(v, arg)
        if v == nil then return nil end
        local t = type(v)
        if t == "number" then
            local i = tointeger(v)
            if i == nil then argerror(arg, "number has no integer representation", 1) end
            return i
        elseif t == "string" then
            local n = tonumber(v)
            if n ~= nil then
                local i = tointeger(n)
                if i == nil then argerror(arg, "number has no integer representation", 1) end
                return i
            end
        end
        argerror(arg, "number expected, got " .. typename(v), 1)
    end

    -- The longest run of characters `class` matches in s (one linear C pass, plus a
    -- little Lua per run). Remembered for the last subject, as a loop of finds over one
    -- text asks again and again.
    local run_subject, run_lengths = nil, {}
    local function longest_run(s, class)
        if s ~= run_subject then run_subject, run_lengths = s, {} end
        local longest = run_lengths[class]
        if longest == nil then
            charge(#s // BYTES_PER_INSTRUCTION)
            longest = 0
            for first, after in cgmatch(s, "()" .. class .. "+()") do
                if after - first > longest then longest = after - first end
            end
            run_lengths[class] = longest
        end
        return longest
    end

    -- Steps the C matcher may take for `info` on subject `s` from one start: each
    -- backtracking item tries at most (its longest run + 1) lengths, each '?' two ways,
    -- each %b or back-reference scans up to the subject. `cap`: the caller's limit on
    -- starts x steps; past it the result no longer matters.
    local function steps_per_start(info, s, starts, cap)
        local n = #s
        local per_start = info.items + info.linear * n
        if info.optionals > 0 then per_start = per_start * 2 ^ info.optionals end
        if info.dots > 0 then per_start = per_start * (n + 1) ^ info.dots end
        local classes = info.classes
        -- Runs are measured only when the cheap bound is not already small (each costs a pass).
        if #classes == 0 or starts * per_start * (n + 1) ^ #classes <= 4096 then
            return per_start * (n + 1) ^ #classes
        end
        for k = 1, #classes do
            if starts * per_start > cap then return per_start end
            per_start = per_start * (longest_run(s, classes[k]) + 1)
        end
        return per_start
    end

    -- The C matcher stops at the first start that matches: charge the starts it tried.
    local function charge_find(per_start, first, starts, a, ...)
        local tried = a ~= nil and a - first + 1 or starts
        charge((tried * per_start) // STEPS_PER_INSTRUCTION + 1)
        return a, ...
    end

    -- string.match's results from string.find's: the captures, or the whole match.
    local function charge_match(s, per_start, first, starts, a, b, ...)
        local tried = a ~= nil and a - first + 1 or starts
        charge((tried * per_start) // STEPS_PER_INSTRUCTION + 1)
        if a == nil then return nil end
        if select("#", ...) == 0 then return sub(s, a, b) end
        return ...
    end

    -- The C path for find and match: per-start steps when the worst case (no start
    -- matching) fits in the remaining budget, else nil. The worst case is charged only
    -- when nothing matches; a match charges the starts before it.
    local function c_path(s, info, init)
        local ls = #s
        local first = init == nil and 1 or posrelat(init, ls)
        local starts = info.anchored and 1 or ls - first + 2
        local cap = remaining() * STEPS_PER_INSTRUCTION
        local per_start = steps_per_start(info, s, starts, cap)
        if starts * per_start > cap then return nil end
        return per_start, starts
    end

    -- The common argument types cost one test each; anything else goes through the
    -- checks that convert it or raise lstrlib's error.
    local function find(s, p, init, plain)
        if type(s) ~= "string" then s = checkstring(s, 1) end
        if type(p) ~= "string" then p = checkstring(p, 2) end
        if init ~= nil and math_type(init) ~= "integer" then init = optinteger(init, 3) end
        local left = remaining()
        if left == huge then return cfind(s, p, init, plain) end
        local ls = #s
        local first = init == nil and 1 or posrelat(init, ls)
        if first > ls + 1 then return nil end
        local info, nospecials = analysis(p, true)
        if plain or nospecials then
            -- lmemfind: memchr and memcmp, at most pattern-length bytes per start
            local bytes = (ls - first + 2) * #p
            if bytes <= 256 then return cfind(s, p, init, plain) end  -- no more than this wrapper's own cost
            if bytes / BYTES_PER_INSTRUCTION <= left then
                charge(bytes // BYTES_PER_INSTRUCTION + 1)
                return cfind(s, p, init, plain)
            end
            return lua.find(s, p, init, plain)
        end
        if info == nil then return lua.find(s, p, init) end
        local per_start, starts = c_path(s, info, init)
        if per_start == nil then return lua.find(s, p, init) end
        return charge_find(per_start, first, starts, cfind(s, p, init))
    end

    local function match(s, p, init)
        if type(s) ~= "string" then s = checkstring(s, 1) end
        if type(p) ~= "string" then p = checkstring(p, 2) end
        if init ~= nil and math_type(init) ~= "integer" then init = optinteger(init, 3) end
        if remaining() == huge then return cmatch(s, p, init) end
        local ls = #s
        local first = init == nil and 1 or posrelat(init, ls)
        if first > ls + 1 then return nil end
        local info = analysis(p, true)
        if info == nil then return lua.match(s, p, init) end
        local per_start, starts = c_path(s, info, init)
        if per_start == nil then return lua.match(s, p, init) end
        return charge_match(s, per_start, first, starts, cfind(s, p, init))
    end

    -- All starts, for gmatch (all its iterations together) and gsub: the steps, or nil
    -- when they do not fit in the remaining budget.
    local function c_steps_all(info, s, starts)
        local cap = remaining() * STEPS_PER_INSTRUCTION
        local steps = starts * steps_per_start(info, s, starts, cap)
        if steps > cap then return nil end
        return steps
    end

    local function gmatch(s, p, init)
        if type(s) ~= "string" then s = checkstring(s, 1) end
        if type(p) ~= "string" then p = checkstring(p, 2) end
        if init ~= nil and math_type(init) ~= "integer" then init = optinteger(init, 3) end
        if remaining() == huge then return cgmatch(s, p, init) end
        local info = analysis(p, false)
        if info ~= nil then
            local ls = #s
            local steps = c_steps_all(info, s, ls - posrelat(init or 1, ls) + 2)
            if steps ~= nil then
                charge(steps // STEPS_PER_INSTRUCTION + 1)  -- all iterations, charged up front
                return cgmatch(s, p, init)
            end
        end
        return lua.gmatch(s, p, init)
    end

    -- A replacement string's escapes the C code could fail on at run time.
    local function safe_replacement(repl, info)
        for d in cgmatch(repl, "%%(.?)") do
            if d ~= "%" and not (cfind(d, "^%d$") and (d == "0" or tonumber(d) <= (info.captures == 0 and 1 or info.captures))) then
                return false
            end
        end
        return true
    end

    local function gsub(s, p, repl, max_s)
        if type(s) ~= "string" then s = checkstring(s, 1) end
        if type(p) ~= "string" then p = checkstring(p, 2) end
        local kind = type(repl)
        if kind == "number" or kind == "userdata" and text_of(repl) ~= nil then
            repl = kind == "number" and tostring(repl) or text_of(repl)
            kind = "string"
        elseif kind ~= "string" and kind ~= "table" and kind ~= "function" then
            argerror(3, "string/function/table expected, got " .. typename(repl))
        end
        if max_s ~= nil and math_type(max_s) ~= "integer" then max_s = optinteger(max_s, 4) end
        if remaining() == huge then return cgsub(s, p, repl, max_s) end
        local info = analysis(p, true)
        if info ~= nil and (kind ~= "string" or safe_replacement(repl, info)) then
            local steps = c_steps_all(info, s, info.anchored and 1 or #s + 1)
            if steps ~= nil then
                charge(steps // STEPS_PER_INSTRUCTION + 1)
                local result, count = cgsub(s, p, repl, max_s)
                -- What the replacements added: copying, paid per byte afterwards.
                charge(#result // BYTES_PER_INSTRUCTION)
                return result, count
            end
        end
        return lua.gsub(s, p, repl, max_s)
    end

    return { find = find, match = match, gmatch = gmatch, gsub = gsub,
             checkstring = checkstring, optinteger = optinteger, argerror = argerror }
end

return { lua = lua, bounded = bounded, analyse = analyse }
