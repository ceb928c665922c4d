"""Typed Lua (wippy-modules §11): the pass that strips annotations keeping every line,
the 5.4 meaning of loop-variable assignments under Lua 5.5, and runtime type values."""

from __future__ import annotations

import textwrap

import pytest

from moonwire.lua import Kind, LuaCode, LuaState, MoonwireError, syntax_error
from moonwire.lua._typed import TypedSyntaxError, strip
from support import run_lua


@pytest.fixture(scope="module")
def state() -> LuaState:
    return LuaState()


async def value_of(source: str, state: LuaState, name: str) -> object:
    outcome = await run_lua(source, state=state, name=name)
    assert outcome.error is None, outcome.error
    return outcome.value


# ------------------------------------------------------------------ the corpus

# (typed chunk that returns a function, what the function returns). Every construct of
# §11 and the awkward neighbours of each; each runs in a real state.
CORPUS: list[tuple[str, object]] = [
    # parameters, returns, methods, local and anonymous functions
    ("""local function f(a: string, b: {x: number}?, ...: any): (string, error?)
          return a .. select("#", ...) end
        return function() return f("n", nil, 1, 2) end""", "n2"),
    ("""local M = {}
        function M:m(a: number): number return a * 2 end
        function M.s(a: number, b: number): number, string return a + b, "ok" end
        return function() return {M:m(4), M.s(1, 2)} end""", [8, 3, "ok"]),
    ("""local h = function(x: number): number return x + 1 end
        local g = function(): () return end
        return function() return {h(1), g() == nil} end""", [2, True]),
    ("""local function none(): () end
        return function() return select("#", none()) end""", 0),
    # generics
    ("""function id<T>(x: T): T return x end
        local function first<T: {any}>(xs: T): any return xs[1] end
        local pick = function<K, V>(m: {[K]: V}, k: K): V? return m[k] end
        return function() return {id(5), first({7}), pick({a = 1}, "a")} end""", [5, 7, 1]),
    # typed locals, typed for variables
    ("""return function()
          local x: number = 1
          local a: string, b: {[string]: any[]} = "s", {k = {1}}
          local n: integer
          local total: number = 0
          for i: integer = 1, 3 do total = total + i end
          for k: string, v: number in pairs({p = 4}) do total = total + v end
          return {x, a, b.k[1], n == nil, total}
        end""", [1, "s", 1, True, 10]),
    # casts and non-nil assertions bind tighter than binary operators
    ("""return function()
          local y = 2
          local a = y :: number + 1
          local b = y as integer * 3
          local c = (y :: any) .. "x"
          local t = {v = 5}
          local d = t!.v + t.v!
          local e = -y :: number
          return {a, b, c, d, e}
        end""", [3, 6, "2x", 10, -2]),
    # type declarations at any position, multi-line, export, interfaces
    ("""type Point = {x: number, y: number}
        type Box<T> = {value: T}
        export type Pair<A, B> = {
          first: A,
          second: B,
        }
        interface Named
          function name(self: Named): string
          label: string?
        end
        interface Shown: Named
          function show(self): string
        end
        return function()
          type Local = number | string
          return {type(Point), tostring(Pair), Named:kind(), tostring(Local)}
        end""", ["type", "Pair", "record", "Local"]),
    # every piece of the type grammar
    ("""type A = {[string]: any[]}
        type B = (a: number, b?: string) -> string
        type C = fun(a: number, ...: any): (string, error?)
        type D = "red" | "green" | 42 | -1 | 1.5 | true | false | nil
        type E = Box<Box<number>>
        type Box<T> = {value: T}
        type F = typeof(print)
        type G = keyof(E)
        type H = E["value"]
        type I = A extends B ? C : D
        type J = readonly {x: number, readonly y?: string}
        type K = {age: number @min(0) @max(120), name: string @min_len(1) @pattern("^%a")}
        type L = A & B | C
        type M = {end: number, function: string, type: string, as: boolean}
        type N = (...number) -> ()
        type O = () -> (number, string)
        type P = interface {a: number}
        type Q = {string}
        type R = time.Time?
        type S = {f: () -> (number, string), g: B, h: {[string]: {number}}}
        local function is_str(x: any): asserts x is string end
        local function truthy(x: any): asserts x end
        return function()
          local literals = {}
          for v in D:variants() do literals[#literals + 1] = tostring(v) end
          return {table.concat(literals, " "), E:kind(), N:kind(), Q:kind(), J:kind(), R:kind(), M["end"]:kind(),
                  F:kind(), G:kind(), H:kind(), I:kind(), K.age:kind(), L:kind(), tostring(S.f), tostring(S.g), tostring(S.h),
                  tostring(O:ret()), tostring(B:ret()), tostring(R:inner())}
        end""",
     ['"red" "green" 42 -1 1.5 true false nil', "instantiated", "function", "array", "record", "optional", "number",
      "any", "any", "any", "any", "number", "union", "() -> (number, string)", "B", "{[string]: {number}}",
      "(number, string)", "string", "time.Time"]),
    # awkward neighbours
    ("""local obj = {n = "o"}
        function obj:name() return self.n end
        return function()
          local s: string = obj:name()
          local t = {type = 1, as = 2, is = 3}
          local type_name = type(s)
          local r = {}
          for i = 1, 2 do
            goto continue
            r[#r + 1] = "skipped"
            ::continue::
          end
          local v = s :: string
          ::done::
          return {s, t.type, t.as, t.is, type_name, v, #r, "a|b:c", [[x :: y as z]], 1 < 2, 3 > 2}
        end""", ["o", 1, 2, 3, "string", "o", 0, "a|b:c", "x :: y as z", True, True]),
    ("""local type = "shadowed"
        return function() return type end""", "shadowed"),
    ("""local t = {}
        t.type = "field"
        return function() type(t) return t.type end""", "field"),
    ("""return function()
          local x = 1 < 2 and 3 > 2
          local y = 5 >> 1
          local z = ((8 :: integer) >> 1) | 1
          local w = 0x1p4 + 0xA.8p0 + 1e1 // 1
          return {x, y, z, w}
        end""", [True, 2, 5, 36.5]),
    ("""return function()
          local s = "-- not a comment: type X = 1" --[==[ a long comment with : and :: ]==]
          local l = [==[ ]] :: as ! ]==]
          return {s, l}
        end""", ["-- not a comment: type X = 1", " ]] :: as ! "]),
    # Lua 5.5: `global` stays an ordinary name
    ("""return function()
          local global = 3
          local t = {global = 4}
          return global + t.global
        end""", 7),
]


@pytest.mark.parametrize("index", range(len(CORPUS)))
async def test_corpus(index: int, state: LuaState) -> None:
    source, expected = CORPUS[index]
    assert await value_of(source, state, f"corpus:c{index}") == expected


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_corpus_keeps_every_line_and_column(index: int) -> None:
    source = textwrap.dedent(CORPUS[index][0]).encode()
    stripped = strip(source, "c").source
    assert len(stripped) == len(source)
    # Every byte is the user's own or a space; line breaks are all where they were.
    assert all(s == o or s == 32 for s, o in zip(stripped, source))
    assert [i for i, c in enumerate(stripped) if c == 10] == [i for i, c in enumerate(source) if c == 10]


# Fragments whose stripped form must compile: each construct next to what it could be
# mistaken for.
FRAGMENTS = [
    "local r = (obj :: Foo):bar()",
    "x = y :: {a: number}",
    "if x :: boolean then end",
    "return x :: T, y",
    "type B = Box<(number) -> string>",
    "local f = function(...: number): ...number return ... end",
    "local x: number? = nil",
    "type Fn = (string) -> ()",
    "type U = | 'a' | 'b'",
    'type Status =\n  | "a"\n  | "b"\nlocal z = 1',
    "local a <const>: number = 5",
    "local t = {x = y :: number, [k as string] = 1, z!}",
    "local v = t[i :: integer]!",
    "while x as boolean do end",
    "repeat local q: number = 1 until q :: number > 0",
    "local function f(self: Foo, cb: (err: error?, v: any) -> ()): () end",
    "type G = {f: fun(x: number): string, n: number}",
    "type H = {[string]: (number) -> string}",
    "local n = not x :: boolean",
    "interface Reader\n  read: (self: Reader, n: integer) -> string?\n  function close(self): ()\nend",
    "type Q = {string, number}",
    "goto x; ::x:: local y = z :: T ::w::",
    "local x = a and b :: number or c as string",
    "type T = Array<string>[]",
    "type Gen<T extends {any}> = T",
    "local fn: (x: number) -> (number, string) = nil",
    "return function<T>(x: T): T return x end",
    "local t = {function(a: number): number return a end}",
    'local s = f"str" :: string',
    "type W = {readonly x: number; y: number,}",
    "local m: Map<string, Box<number>>= {}",
]


@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_fragment_strips_to_lua_that_compiles(fragment: str) -> None:
    source = fragment.encode()
    stripped = strip(source, "f").source
    assert len(stripped) == len(source) and all(s == o or s == 32 for s, o in zip(stripped, source))
    assert syntax_error(source, "f") is None


def test_stripping_blanks_exactly_the_annotations() -> None:
    assert strip(b"local s: string = obj:name()", "c").source == b"local s         = obj:name()"
    assert strip(b"function f<T>(x: T): T return x end", "c").source == b"function f   (x   )    return x end"
    assert strip(b"local v = a :: T + b as U", "c").source == b"local v = a      + b     "
    assert strip(b"type X = {\n  a: number,\n}\nlocal y = 1", "c").source == \
        b"          \n            \n \nlocal y = 1"


def test_plain_lua_passes_through_unchanged() -> None:
    source = b"local t = {type = 1}\nfor i = 1, 3 do local j = i end\nreturn type(t)\n"
    result = strip(source, "c")
    assert result.source is source and not result.changed and result.declarations == ()


# ------------------------------------------------------------------ positions

TYPED_FILE = """\
type Point = {
  x: number,
  y: number,
}
local function f(p: Point): number
  local d: number = p.x :: number
  error("boom at six")
end
return function() return f({x = 1, y = 2}) end
"""


async def test_runtime_error_reports_the_users_line(state: LuaState) -> None:
    outcome = await run_lua(TYPED_FILE, state=state, name="pos:runtime")
    assert outcome.error is not None and "pos:runtime.lua:7: boom at six" in outcome.error.message


def test_lua_syntax_error_in_a_typed_file_reports_the_users_line() -> None:
    source = TYPED_FILE.replace('error("boom at six")', "local = 1").encode()
    with pytest.raises(MoonwireError) as caught:
        LuaState().load(LuaCode(id="pos:syntax", source=source, chunkname="pos/syntax.lua"))
    assert caught.value.kind == Kind.INVALID
    assert caught.value.message.startswith("syntax error in pos:syntax: pos/syntax.lua:7:")


@pytest.mark.parametrize(("source", "message", "column"), [
    ("local x = 1\nlocal y: = 2", "app/f.lua:2: type expected near '='", 10),
    ("function f(a: number, b: ): number end", "app/f.lua:1: type expected near ')'", 26),
    ("type P = {\n  x: number,\n  y: ,\n}", "app/f.lua:3: type expected near ','", 6),
    ("local v = x as\n", "app/f.lua:2: type expected near <eof>", 1),
    ("type Box<T = {value: T}", "app/f.lua:1: '>' expected near <eof>", 24),
    ("interface I\n  function m(self\nend", "app/f.lua:3: ')' expected (to close '(' at line 2) near 'end'", 1),
    ("local s = 'open", "app/f.lua:1: unfinished string near ''open'", 11),
])
def test_malformed_typed_code_names_chunk_line_and_token(source: str, message: str, column: int) -> None:
    with pytest.raises(TypedSyntaxError) as caught:
        strip(source.encode(), "app/f.lua")
    assert str(caught.value) == message
    assert caught.value.column == column


def test_malformed_typed_code_is_a_syntax_error_of_the_entry() -> None:
    with pytest.raises(MoonwireError) as caught:
        LuaState().load(LuaCode(id="app:f", source=b"local x = 1\nlocal y: = 2\n", chunkname="app/f.lua"))
    assert caught.value.kind == Kind.INVALID
    assert caught.value.message == "syntax error in app:f: app/f.lua:2: type expected near '='"


def test_syntax_error_without_a_state_for_moonwire_check() -> None:
    assert syntax_error(TYPED_FILE.encode(), "app/t.lua") is None
    assert syntax_error(b"local x = 1\nlocal y: = 2\n", "app/t.lua") == "app/t.lua:2: type expected near '='"
    assert syntax_error(TYPED_FILE.replace('error("boom at six")', "local = 1").encode(), "app/t.lua") == \
        "app/t.lua:7: <name> expected near '='"
    assert syntax_error(b"for i = 1, 2 do i = 3 end", "app/t.lua") is None


# ------------------------------------------------------------------ Lua 5.5 loop variables

async def test_assigning_a_loop_variable_has_its_lua_54_meaning(state: LuaState) -> None:
    assert await value_of("""
        return function()
          local seen = {}
          for i = 1, 3 do
            i = i * 10
            seen[#seen + 1] = i
          end
          for k, v in ipairs({"a", "b"}) do
            if k == 1 then k, v = 100, v .. "!" end
            seen[#seen + 1] = k .. v
          end
          local bump
          for j = 1, 2 do
            bump = function() j = j + 5; return j end
          end
          seen[#seen + 1] = bump()
          return seen
        end""", state, "loops:assign") == [10, 20, 30, "100a!", "2b", 7]


def test_loop_copy_goes_on_the_do_line() -> None:
    source = b"for i = 1, 3 do\n  i = i + 1\nend\nfor k, v in pairs(t) do print(k) end\n"
    stripped = strip(source, "c").source
    assert stripped == b"for i = 1, 3 do local i = i;\n  i = i + 1\nend\nfor k, v in pairs(t) do print(k) end\n"


# ------------------------------------------------------------------ runtime types (§11.2-11.4)

async def test_calling_a_type_validates_and_never_converts(state: LuaState) -> None:
    assert await value_of("""
        local function raised(f, ...)
          local ok, err = pcall(f, ...)
          if ok then return "passed" end
          return (tostring(err):gsub("^[^:]*:%d+: ", ""))
        end
        return function()
          return {
            string("s"), number(1.5), integer(3.0), boolean(false), any(nil) == nil, unknown(4),
            raised(string, 42), raised(number, "5"), raised(integer, 3.5), raised(boolean, nil),
            raised(never, 1), raised(string), raised(number, 1, 2), raised(integer, "x"),
            math.type(integer(3.0)), string.format("%d", 5), string.upper("a"), ("b"):upper(),
          }
        end""", state, "types:call") == [
        "s", 1.5, 3.0, False, True, 4,
        "expected string, got number", "expected number, got string", "expected integer, got number",
        "expected boolean, got nil", "expected never, got number", "type string expects at least 1 argument",
        "type number expects 1 argument, got 2", "expected integer, got string",
        "float", "5", "A", "B"]


async def test_is_returns_the_value_or_a_message_with_its_path(state: LuaState) -> None:
    assert await value_of("""
        type Item = {id: integer, tags: {string}?}
        type Order = {id: integer, items: {Item}, meta: {[string]: number}, note: string?}
        type Color = "red" | "green"
        return function()
          local good = {id = 1, items = {{id = 2}, {id = 3, tags = {"a"}}}, meta = {w = 1}, extra = true}
          local v, err = Order:is(good)
          local _, e1 = Order:is({id = 1, items = {{id = 2}, {id = "x"}}, meta = {}})
          local _, e2 = Order.is({id = 1, items = {{id = 2, tags = {"a", 5}}}, meta = {}})
          local _, e3 = Order:is({id = 1, items = {}, meta = {w = "heavy"}})
          local _, e4 = Order:is("order")
          local _, e5 = Color:is("blue")
          local _, e6 = number:is("1")
          return {v == good, err == nil, e1, e2, e3, e4, e5, e6, Color:is("red"), string:is("s"), string.is(1) == nil}
        end""", state, "types:is") == [
        True, True, "items[2].id: expected integer, got string", "items[1].tags[2]: expected string, got number",
        "meta[w]: expected number, got string", "expected Order, got string", "expected Color, got string",
        "expected number, got string", "red", "s", True]


async def test_reflection(state: LuaState) -> None:
    assert await value_of("""
        type Point = {x: number, y: number?}
        type Shape = Point | {r: number}
        type Fn = (a: number, b: string) -> boolean
        type Box<T: {any}> = {value: T}
        return function()
          local fields = {}
          for name, t in Point:fields() do fields[#fields + 1] = name .. "=" .. tostring(t) end
          local variants, params, tparams = 0, {}, {}
          for _ in Shape:variants() do variants = variants + 1 end
          for p in Fn:params() do params[#params + 1] = p:kind() end
          for name, constraint in Box:tparams() do tparams[#tparams + 1] = name .. ":" .. tostring(constraint) end
          local arr, map, opt = {number}, nil, nil
          return {
            Point:kind(), Point:name(), Point.x:kind(), Point.y:kind(), Point.y:inner():name(), table.concat(fields, ","),
            Shape:kind(), variants, Fn:kind(), table.concat(params, ","), Fn:ret():kind(),
            Box:kind(), table.concat(tparams, ","), Box(string):kind(), tostring(Box(string)),
            Box(string) == Box(string), number:kind(), number:name(), string.kind(), tostring(integer),
            type(number), type(string), Point:elem() == nil,
          }
        end""", state, "types:reflect") == [
        "record", "Point", "number", "optional", "number", "x=number,y=number?",
        "union", 2, "function", "number,string", "boolean",
        "generic", "T:{any}", "instantiated", "Box<string>",
        True, "number", "number", "string", "integer",
        "type", "table", True]


async def test_declared_types_resolve_forward_and_recursive_references(state: LuaState) -> None:
    assert await value_of("""
        type Tree = {value: number, children: {Tree}?, owner: Owner?}
        type Owner = {name: string}
        type Alias = Tree
        return function()
          local ok = Tree:is({value = 1, children = {{value = 2, owner = {name = "o"}}}}) ~= nil
          local _, err = Alias:is({value = 1, children = {{value = 2, children = {{value = "deep"}}}}})
          local _, err2 = Tree:is({value = 1, owner = {name = 3}})
          return {ok, err, err2, tostring(Alias), Alias:kind()}
        end""", state, "types:recursive") == [
        True, "children[1].children[1].value: expected number, got string", "owner.name: expected string, got number",
        "Alias", "record"]


async def test_declared_types_are_globals_only_where_the_name_is_free(state: LuaState) -> None:
    assert await value_of("""
        type errors = {x: number}
        type Point = {x: number}
        local Point_seen = Point
        return function()
          Point = "mine"  -- an instance's global, its own to change
          return {type(errors), type(Point_seen), Point}
        end""", state, "types:globals") == ["table", "type", "mine"]


async def test_type_values_cannot_be_changed_and_are_shared(state: LuaState) -> None:
    assert await value_of("""
        type Point = {x: number}
        return function()
          local results = {}
          for _, attempt in ipairs({
            function() Point.x = nil end,
            function() rawset(Point, "is", print) end,
            function() setmetatable(Point, {}) end,
            function() number.kind = nil end,
            function() rawset(number, "extra", 1) end,
            function() string.is = nil end,
          }) do
            results[#results + 1] = (pcall(attempt))
          end
          results[#results + 1] = getmetatable(Point) == false and getmetatable(number) == false
          results[#results + 1] = Point:is({x = 1}) ~= nil and number:kind() == "number"
          return results
        end""", state, "types:immutable") == [False, False, False, False, False, False, True, True]
    # another entry in the same state sees the built-in types untouched
    assert await value_of("return function() return {number(2), number:kind()} end", state, "types:after") == \
        [2, "number"]


# ------------------------------------------------------------------ speed

def test_the_pass_is_cached_by_source() -> None:
    block = """
type Point{n} = {{x: number, y: number, label: string?}}
local function dist{n}(a: Point{n}, b: Point{n}): number
  local dx: number = a.x - b.x
  local dy: number = (a.y - b.y) :: number
  for i: integer = 1, 3 do
    if i > 2 and dx < dy then dx = dx + i end
  end
  local s = tostring(a.label) .. "x: y" -- a comment : with :: colons
  return math.sqrt(dx * dx + dy * dy) as number
end
"""
    source = "".join(block.format(n=i) for i in range(200)).encode()
    assert source.count(b"\n") >= 2000
    # Every Lua state loading the entry shares one result (speed: bench/typed_lua.py).
    first = strip(source, "big.lua")
    assert strip(source, "big.lua") is first and len(first.declarations) == 200


@pytest.mark.parametrize("opener,closer", [("(", ")"), ("{", "}"), ("A<", ">")])
def test_annotations_nested_past_any_stack_are_a_syntax_error_not_a_crash(opener: str, closer: str) -> None:
    source = f"local x: {opener * 5000}number{closer * 5000} = 1\nreturn function() return x end".encode()
    problem = syntax_error(source, "deep.lua")
    assert problem is not None and problem.startswith("deep.lua:1: chunk has too many syntax levels"), problem


async def test_error_and_userdata_types_know_error_objects_are_userdata(state: LuaState) -> None:
    assert await value_of("""
        type R = {err: error}
        type U = {u: userdata}
        return function()
          local e = errors.new("x")
          return {R:is({err = e}) ~= nil, R:is({err = "text"}) ~= nil, R:is({err = 5}) == nil,
                  U:is({u = e}) ~= nil, U:is({u = {}}) == nil}
        end""", state, "types:error") == [True, True, True, True, True]


async def test_an_instantiation_is_one_value_while_it_is_in_use(state: LuaState) -> None:
    # The cache is weak (a unit instantiating in a loop cannot fill the state's memory),
    # so identity holds for an instance someone still holds.
    assert await value_of("""
        type Box<T> = {value: T}
        return function()
          local held = Box(string)
          for _ = 1, 2000 do local _ = Box(number) end
          return {held == Box(string), Box(number) == Box(number)}
        end""", state, "types:instances") == [True, True]


async def test_a_goto_label_with_spaces_is_a_label_next_to_casts(state: LuaState) -> None:
    assert await value_of("""
        local function f(i: integer): integer return i end
        return function()
          local sum = 0
          for i = 1, 5 do
            local x = f(i) :: integer
            if x % 2 == 0 then goto continue end
            sum = sum + x
            :: continue ::
          end
          return sum
        end""", state, "types:label") == 9


@pytest.mark.parametrize("literal", ['"\\xZZ"', '"\\x"', '"\\999"', "0x", "0x.", "9" * 5000, "9" * 40, "0xFFFFFFFFFFFFFFFFFF"])
def test_a_bad_literal_in_a_type_is_a_syntax_error_or_lua_s_value(literal: str) -> None:
    # Literal types are blanked before Lua's compiler sees them, so the pass converts
    # them itself; a bad escape or number raised ValueError (or OverflowError into Lua)
    # out of LuaState.load instead of the entry's syntax error.
    source = f"local a = 1\ntype T = {literal}\nreturn function() return tostring(T) end\n".encode()
    problem = syntax_error(source, "lit.lua")
    try:
        LuaState().load(LuaCode(id="lit:f", source=source, chunkname="lit.lua"))
    except MoonwireError as err:
        assert problem is not None and err.message == f"syntax error in lit:f: {problem}"
        assert problem.startswith("lit.lua:2: "), problem
    else:
        assert problem is None
