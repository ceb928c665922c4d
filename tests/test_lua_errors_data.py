"""Error objects, `payload` and `json` as Wippy has them (wippy-modules §2, §3, §4;
issue 17 items 3, 5, 6)."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from moonwire.lua import Kind, LuaState
from moonwire.lua._values import to_python
from support import LocalRuntime, process_project, run_lua


async def value_of(source: str, *args: object, **kwargs: object) -> object:
    outcome = await run_lua(source, *args, **kwargs)
    assert outcome.error is None, outcome.error
    return outcome.value


# ------------------------------------------------------------------ error objects


async def test_error_kinds_are_camel_case_constants() -> None:
    kinds = await value_of("""
        return function()
          return {errors.NOT_FOUND, errors.ALREADY_EXISTS, errors.INVALID, errors.PERMISSION_DENIED,
                  errors.UNAVAILABLE, errors.INTERNAL, errors.CANCELED, errors.CONFLICT, errors.TIMEOUT,
                  errors.RATE_LIMITED, errors.UNKNOWN}
        end""")
    assert kinds == [k.value for k in (Kind.NOT_FOUND, Kind.ALREADY_EXISTS, Kind.INVALID, Kind.PERMISSION_DENIED,
                                       Kind.UNAVAILABLE, Kind.INTERNAL, Kind.CANCELED, Kind.CONFLICT, Kind.TIMEOUT,
                                       Kind.RATE_LIMITED, Kind.UNKNOWN)]


async def test_error_objects_are_userdata_with_five_methods_only() -> None:
    assert await value_of("""
        return function()
          local e = errors.new("boom")
          local methods = {}
          for _, name in ipairs({"kind", "message", "retryable", "details", "stack", "find", "upper", "text"}) do
            methods[#methods + 1] = type(e[name])
          end
          return {type(e), getmetatable(e), methods, (pcall(function() for _ in pairs(e) do end end)), (pcall(function() e.x = 1 end)),
                  (pcall(e.kind, {})), e == e, e == errors.new("boom"), require("errors") == errors}
        end""") == ["userdata", False, ["function"] * 5 + ["nil"] * 3, False, False, False, True, False, True]


async def test_error_text_through_tostring_and_concat_both_ways() -> None:
    assert await value_of("""
        return function()
          local e = errors.new({message = "gone", kind = errors.NOT_FOUND})
          local ok, bad = pcall(function() return e .. {} end)
          return {tostring(e), e .. "!", "x: " .. e, e .. e, 1 .. e, e .. 2, ok, bad:match("concatenate a table")}
        end""") == ["gone", "gone!", "x: gone", "gonegone", "1gone", "gone2", False, "concatenate a table"]


# Each call runs once with an error object (text "Not Found: a/b.txt") and once with
# that text as a string: the results must be the same.
STRING_CALLS = [
    "string.find(E, 'Found')", "string.find(E, 'a/b', 1, true)", "string.find('xx Not Found: a/b.txt', E, 1, true)",
    "string.match(E, '(%a+)%.txt')", "string.gsub(E, '%a+', 'w')", "string.gsub('<x>', 'x', E)",
    "string.len(E)", "string.upper(E)", "string.lower(E)", "string.reverse(E)", "string.sub(E, 5, 9)",
    "string.byte(E, 1, 3)", "string.rep(E, 2, '|')", "string.rep('-', 2, E)", "string.format('%s!', E)",
    "string.format(E)", "string.pack('z', E)", "string.unpack('c3', E)", "string.format('%q', '' .. E)",
    "(function() local t = {} for w in string.gmatch(E, '%a+') do t[#t + 1] = w end return table.concat(t, ',') end)()",
]


@pytest.mark.parametrize("call", STRING_CALLS)
async def test_every_string_function_takes_an_error_as_its_text(call: str) -> None:
    with_error, with_string = await value_of(f"""
        return function()
          local function run(E) return table.pack({call}) end
          local e = errors.wrap(errors.new("a/b.txt"), "Not Found")
          return {{run(e), run("Not Found: a/b.txt")}}
        end""")
    assert with_error == with_string and with_error["n"] >= 1


async def test_string_functions_without_a_budget_take_errors_too() -> None:
    from moonwire.lua import Limits
    assert await value_of("""
        return function()
          local e = errors.new("abc")
          return {string.find(e, "b"), string.upper(e), string.rep(e, 2), string.len(e)}
        end""", limits=Limits(instructions=None)) == [2, "ABC", "abcabc", 3]


async def test_string_functions_still_refuse_other_userdata_and_tables() -> None:
    assert await value_of("""
        return function()
          local out = {}
          for _, f in ipairs({string.upper, string.len, string.find, string.rep}) do
            local ok, err = pcall(f, payload.new(1), "x")
            out[#out + 1] = err:match("expected, got %a+%)")
          end
          local _, err = pcall(string.upper, {})
          out[#out + 1] = err:match("bad argument #1 to 'upper' %(string expected, got table%)") ~= nil
          return out
        end""") == ["expected, got payload)"] * 4 + [True]


async def test_wrap_keeps_kind_retryable_details_and_message_and_nests() -> None:
    assert await value_of("""
        return function()
          local e = errors.new({message = "gone", kind = errors.NOT_FOUND, retryable = true, details = {id = 7}})
          local a = errors.wrap(e, "a")
          local b = errors.wrap(a, "b")
          local s = errors.wrap("plain", "ctx")
          local c = errors.wrap(e, errors.new("from an error"))
          return {
            a:kind(), a:retryable(), a:details().id, a:message(), tostring(a), tostring(b), b:message(),
            b:kind(), errors.is(b, errors.NOT_FOUND), s:message(), tostring(s), s:kind(), s:retryable() == nil,
            tostring(c), (pcall(errors.wrap, nil, "x")), (pcall(errors.wrap, e, {})),
          }
        end""") == ["NotFound", True, 7, "gone", "a: gone", "b: a: gone", "gone", "NotFound", True, "plain",
                    "ctx: plain", "", True, "from an error: gone", False, False]


async def test_errors_new_forms_and_details() -> None:
    assert await value_of("""
        return function()
          local two = errors.new("A", "B")
          local ok42, err42 = pcall(errors.new, 42)
          local oknil, errnil = pcall(errors.new, nil)
          local d = errors.new({message = "m", details = {items = {1, 2}, name = "n", n = 1.5, [3] = "x",
                                                          nested = {k = {1, v = true}}}}):details()
          local copy1 = errors.new({message = "m", details = {a = 1}})
          copy1:details().a = 2
          return {
            two:message(), two:kind(), ok42, err42:match("expected string or table") ~= nil, oknil,
            errnil:match("expected string or table") ~= nil,
            errors.new({message = "m", details = {}}):details() == nil,
            errors.new({message = "m", details = {1, 2}}):details() == nil,
            errors.new({message = "m"}):details() == nil,
            next(d.items) == nil, d.name, d.n, d[3] == nil, d.nested.k.v, d.nested.k[1] == nil,
            copy1:details().a, math.type(errors.new({message = "m", details = {i = 3}}):details().i),
            (pcall(errors.new, {kind = "Invalid"})),
            errors.new({message = "m", kind = 5, retryable = "yes"}):kind(),
            errors.new({message = "m", retryable = "yes"}):retryable() == nil,
            errors.new({message = "m", retryable = false}):retryable(),
          }
        end""") == ["A", "", False, True, False, True, True, True, True, True, "n", 1.5, True, True, True, 1,
                    "integer", False, "", True, False]


async def test_errors_is_and_call_stack_and_stack() -> None:
    value = await value_of("""
        local function inner() local e = errors.new({message = "deep", kind = errors.INVALID}) return e end
        return function()
          local e = inner()
          local w = errors.wrap(e, "outer")
          local cs = errors.call_stack(e)
          return {
            errors.is(e, errors.INVALID), errors.is(e, "NotFound"), errors.is("Invalid", errors.INVALID),
            errors.is(errors.new("x"), errors.UNKNOWN), (pcall(errors.is, e, {})),
            errors.call_stack("not an error") == nil, type(cs.thread) ~= "nil", cs.frames[1].level,
            cs.frames[1].source, cs.frames[1].name, cs.frames[1].line, cs.frames[1].type, w:stack(),
          }
        end""")
    assert value[:12] == [True, False, False, True, False, True, True, 1, "test:fn.lua", "inner", 2, "lua"]
    stack = value[12].splitlines()
    assert stack[0] == "outer" and stack[1].startswith("  test:fn.lua:5") and "deep" in stack
    assert "  test:fn.lua:2 (inner)" in stack


async def test_errors_cross_to_python_with_their_text_kind_and_details() -> None:
    returned = await run_lua("""
        return function()
          local e = errors.new({message = "later", kind = errors.UNAVAILABLE, retryable = true,
                                details = {attempt = 2}})
          return nil, errors.wrap(e, "calling the backend")
        end""")
    assert returned.error is not None
    assert (returned.error.message, returned.error.kind, returned.error.retryable, returned.error.details) == (
        "calling the backend: later", "Unavailable", True, {"attempt": 2})
    raised = await run_lua("return function() error(errors.new({message = 'bad', kind = errors.INVALID})) end")
    assert raised.error is not None and (raised.error.message, raised.error.kind) == ("bad", "Invalid")
    nested = await value_of("return function() return {list = {errors.new('inner')}} end")
    assert nested["list"][0].message == "inner"
    same = await value_of("""
        return function()
          local e = errors.new("x")
          local ok, got = pcall(error, e)
          return rawequal(got, e)
        end""")
    assert same is True


async def test_raised_string_and_returned_string_errors() -> None:
    raised = await run_lua("return function() error('kaput', 0) end")
    assert raised.error is not None and raised.error.message == "kaput"
    returned = await run_lua("return function() return nil, 'plain' end")
    assert returned.error is not None and returned.error.message == "plain"


async def test_opaque_userdata_crosses_to_python_as_its_text_functions_do_not() -> None:
    state = LuaState()
    make = state.runtime.execute(
        "local core = ... return function() return core.new_object(core.object_type('thing', {}, "
        "{__tostring = function() return 'a thing' end}), {}) end", state.core)
    thing = make()
    assert to_python(state, thing) == "a thing"
    assert to_python(state, state.table_from({b"t": thing})) == {"t": "a thing"}
    assert to_python(state, thing, "json") is None
    refused = await run_lua("return function() return {f = print} end", state=state)
    assert refused.error is not None and "cannot pass a Lua function" in refused.error.message


# ------------------------------------------------------------------ payload


async def test_payload_formats_and_methods() -> None:
    assert await value_of("""
        return function()
          local f = payload.format
          local p = payload.new({a = 1})
          local e = payload.new(errors.new("bad"))
          local data, derr = e:data()
          local t, terr = e:transcode(f.JSON)
          local same, serr = p:transcode(f.LUA)
          local u, uerr = p:transcode("x/unknown")
          return {
            f.JSON, f.YAML, f.STRING, f.BYTES, f.MSGPACK, f.LUA, f.GOLANG, f.ERROR,
            type(p), p:get_format(), p:data().a, p:unmarshal().a, tostring(p), e:get_format(),
            data == nil, derr:kind(), t == nil, terr:kind(), same:data() == p:data(), serr == nil,
            u == nil, uerr:kind(), payload.new():get_format(), (pcall(p.transcode, p)),
            (pcall(p.data, {})), (pcall(function() f.JSON = "x" end)),
          }
        end""") == ["json/plain", "yaml/plain", "text/plain", "application/octet-stream", "application/msgpack",
                    "lua/any", "golang/any", "golang/error", "userdata", "lua/any", 1, 1, "payload{format=lua/any}",
                    "golang/error", True, "Internal", True, "Internal", True, True, True, "Internal", "lua/any",
                    False, False, False]


async def test_payload_transcodes_really_convert() -> None:
    value = await value_of("""
        return function()
          local f = payload.format
          local p = payload.new({name = "moon", n = 3, list = {1, 2.5, true}})
          local j = p:transcode(f.JSON)
          local m = p:transcode(f.MSGPACK)
          local y = p:transcode(f.YAML)
          local text = function(v) return payload.new(v):transcode(f.STRING):data() end
          local m_back = m:data()
          return {
            j:get_format(), j:data().name, m:get_format(), y:get_format(),
            m_back.name, m_back.list[2], math.type(m_back.n), y:data().list[3], j:transcode(f.LUA):data().n,
            j:transcode(f.YAML):data().name, m:transcode(f.JSON):data().n, y:transcode(f.MSGPACK):data().name,
            text(1.5), text(42), text(true), text(nil), text("raw"), text({a = 1, b = "x"}), text({1, 2}), text(1e21),
            payload.new("a\0b"):transcode(f.BYTES):data(), payload.new("x"):transcode(f.JSON):data(),
            j:transcode(f.STRING):data(),
          }
        end""")
    assert value[:4] == ["json/plain", "moon", "application/msgpack", "yaml/plain"]
    assert value[4:12] == ["moon", 2.5, "integer", True, 3, "moon", 3, "moon"]
    assert value[12:20] == ["1.5", "42", "true", "", "raw", "map[a:1 b:x]", "[1 2]", "1e+21"]
    assert value[20:22] == ["a\x00b", "x"]
    assert value[22] == "map[list:[1 2.5 true] n:3 name:moon]"  # JSON -> LUA -> STRING, as Wippy's graph


async def test_payload_bytes_are_json_text_msgpack_and_yaml() -> None:
    from moonwire.lua import _data_host
    state = LuaState()
    value = state.runtime.execute("return {name = 'moon', n = 3, f = 2.0, list = {1, 2.5, '<b>'}}")
    as_json = _data_host.transcode(state, value, "lua/any", "json/plain")
    assert isinstance(as_json, bytes) and b'"list":[1,2.5,"\\u003cb\\u003e"]' in as_json and b'"f":2' in as_json
    as_msgpack = _data_host.transcode(state, value, "lua/any", "application/msgpack")
    assert msgpack.unpackb(as_msgpack) == {"name": "moon", "n": 3, "f": 2.0, "list": [1, 2.5, "<b>"]}
    as_yaml = _data_host.transcode(state, value, "lua/any", "yaml/plain")
    assert b"name: moon" in as_yaml
    assert _data_host.ROUTES[("lua/any", "application/msgpack")] == ["lua/any", "golang/any", "application/msgpack"]
    assert ("golang/error", "lua/any") not in _data_host.ROUTES


async def test_payload_transcode_failures_are_internal() -> None:
    from moonwire.lua import _data_host
    state = LuaState()
    fail = state.runtime.execute("""
        local transcode = ...
        return function(raw, fmt)
          local ok, err = transcode(raw, fmt, "lua/any")
          return ok, err
        end""", _data_host.DataFunctions(state).transcode)
    ok, err = fail(b"{nope", b"json/plain")
    assert ok is False and b"line 1 column 2" in err
    ok, err = fail(b"\xc1", b"application/msgpack")
    assert ok is False
    ok, err = fail(b"a: [", b"yaml/plain")
    assert ok is False
    assert await value_of("""
        return function()
          local p, err = payload.new(print):transcode(payload.format.MSGPACK)
          return {p == nil, err:kind(), tostring(err):match("^payload: ") ~= nil}
        end""") == [True, "Internal", True]


async def test_payloads_from_messages_are_lua_any_and_payloads_cross_as_their_data(tmp_path: Path) -> None:
    async with LocalRuntime(tmp_path, process_project({"driver": """
        return { main = function()
          local me = process.pid()
          process.send(me, "t", {n = 1})
          process.send(me, "t", (payload.new({n = 2}):transcode(payload.format.JSON)))
          local inbox = process.inbox()
          local one, two = inbox:receive():payload(), inbox:receive():payload()
          return {one:get_format(), one:data().n, two:get_format(), two:data().n}
        end }"""})) as runtime:
        outcome = await runtime.execute("app:driver", [])
    assert outcome.error is None, outcome.error
    assert outcome.value == ["lua/any", 1, "lua/any", 2]


# ------------------------------------------------------------------ json


async def test_json_encode_rules() -> None:
    assert await value_of("""
        local json = require("json")
        return function()
          local _, mixed = json.encode({1, 2, x = 3})
          local _, sparse = json.encode({[1] = 1, [3] = 3})
          local t = {} t.self = t
          local _, cycle = json.encode(t)
          return {json.encode({}), json.encode({1, "two", true}), json.encode(0/0), json.encode(nil),
                  json.encode(3.0), json.encode({2.0, 2.5, 1e21, -0.0}), json.encode("<a&b>\\u{2028}"),
                  json.encode({[true] = 1}), json.encode({[0.5] = 1}), json.encode({[0] = "z"}),
                  json.encode("bad \\xff byte"), json.encode({e = errors.wrap(errors.new("m"), "c")}),
                  json.encode({f = print}), json.encode({payload.new(1)}),
                  mixed:kind(), sparse:kind(), cycle:kind(), select("#", json.encode(1))}
        end""") == ["[]", '[1,"two",true]', "null", "null", "3", "[2,2.5,1e+21,0]",
                    '"\\u003ca\\u0026b\\u003e\\u2028"', '{"true":1}', '{"0.5":1}', '{"0":"z"}',
                    '"bad \ufffd byte"', '{"e":"c: m"}', '{"f":null}', "[null]", "Internal", "Internal", "Internal", 2]


async def test_json_decode_kinds_and_values() -> None:
    value = await value_of("""
        local json = require("json")
        return function()
          local function fail(s) local v, err = json.decode(s) return {v == nil, err:kind(), err:message()} end
          local back = json.decode('{"a":[1,2,{"b":null}],"s":"\\\\u00e9"}')
          return {
            fail(12), fail(""), fail("{nope"), fail("  \\n "), fail('{"a": 1,\\n "b": }'),
            select("#", json.decode("null")), json.decode("null") == nil, json.decode("1 2"),
            math.type(json.decode("5")), math.type(json.decode("5.0")), math.type(json.decode("99999999999999999999")),
            back.a[2], back.s, tostring(select(2, json.decode(""))),
          }
        end""")
    assert value[0] == [True, "Invalid", "string expected, got number"]
    assert value[1][:2] == [True, "Invalid"]
    assert value[2][:2] == [True, "Internal"] and "line 1 column 2 (char 1)" in value[2][2]
    assert value[3][:2] == [True, "Internal"] and "line 2 column 2" in value[3][2]
    assert value[4][:2] == [True, "Internal"] and "line 2 column 7" in value[4][2]
    assert value[5:] == [2, True, 1, "integer", "float", "float", 2, "é", "json.decode: empty input"]


async def test_json_decode_refuses_deep_nesting_before_decoding() -> None:
    outcome = await run_lua("""
        local json = require("json")
        return function()
          local value, err = json.decode(string.rep("[", 100000))
          return {value == nil, tostring(err), err:kind()}
        end""")
    assert outcome.error is None, outcome.error
    assert outcome.value[0] is True and "nested deeper than" in outcome.value[1], outcome.value
    assert outcome.value[2] == "Internal"


SCHEMA = """{type = "object", required = {"name", "age"},
             properties = {name = {type = "string"}, age = {type = "integer", minimum = 0},
                           tags = {type = "array", items = {type = "string"}}}}"""


async def test_json_validate_valid_invalid_and_bad_schema() -> None:
    value = await value_of(f"""
        local json = require("json")
        return function()
          local schema = {SCHEMA}
          local function check(ok, err) return {{ok, err and err:kind() or false, err and err:message() or false}} end
          return {{
            check(json.validate(schema, {{name = "a", age = 3, tags = {{"x"}}}})),
            select("#", json.validate(schema, {{name = "a", age = 3}})),
            check(json.validate(schema, {{name = "a", age = -1}})),
            check(json.validate(schema, {{name = "a", age = 1, tags = {{"x", 5}}}})),
            check(json.validate({{type = "nonsense"}}, 1)),
            check(json.validate(nil, 1)), check(json.validate(schema, nil)), check(json.validate(5, 1)),
            check(json.validate('{{"type": "integer"}}', 3)), check(json.validate('{{"type": "integer"}}', 3.5)),
            check(json.validate_string('{{"type": "integer"}}', "3")),
            check(json.validate_string(schema, '{{"name": "a", "age": "old"}}')),
            check(json.validate_string(schema, 12)),
            check(json.validate_string(schema, "{{nope")),
            check(json.validate({{["$ref"] = "http://127.0.0.1:9/schema.json"}}, 1)),
            check(json.validate({{type = "integer"}}, 3.0)),
          }}
        end""")
    assert value[0] == [True, False, False] and value[1] == 1
    assert value[2][:2] == [False, "Invalid"] and "$.age" in value[2][2] and "minimum" in value[2][2]
    assert value[3][:2] == [False, "Invalid"] and "$.tags[1]" in value[3][2]
    assert value[4][:2] == [False, "Invalid"] and "invalid schema" in value[4][2]
    assert value[5] == [False, "Invalid", "schema is required"]
    assert value[6] == [False, "Invalid", "data is required"]
    assert value[7][:2] == [False, "Invalid"]
    assert value[8] == [True, False, False] and value[9][:2] == [False, "Invalid"]
    assert value[10] == [True, False, False]
    assert value[11][:2] == [False, "Invalid"] and "$.age" in value[11][2]
    assert value[12][:2] == [False, "Invalid"] and value[13][:2] == [False, "Invalid"]
    assert value[14][:2] == [False, "Invalid"] and "127.0.0.1" in value[14][2]  # refused, never fetched
    assert value[15] == [True, False, False]  # 3.0 is written 3: an integer, as Wippy


async def test_json_schema_cache_is_bounded() -> None:
    from moonwire.lua import _data_host
    await value_of("""
        local json = require("json")
        return function()
          for i = 1, 150 do assert(json.validate({type = "integer", minimum = i}, 1000)) end
          return true
        end""")
    assert len(_data_host._schemas) == 100


async def test_json_schema_patterns_match_in_linear_time() -> None:
    # (a+)+$ against 'aaa...!' backtracks for ages in Python's re; RE2 answers at once.
    value = await value_of("""
        local json = require("json")
        return function()
          local ok, err = json.validate({type = "string", pattern = "(a+)+$"}, string.rep("a", 64) .. "!")
          local okp, errp = json.validate({patternProperties = {["(x+)+y"] = {type = "integer"}}, additionalProperties = false},
                                          {[string.rep("x", 64)] = 1})
          local bad, berr = json.validate({type = "string", pattern = "(?=a)"}, "a")
          return {ok, err:kind(), okp, errp:kind(), bad, berr:message():match("RE2") ~= nil,
                  (json.validate({pattern = "^[a-z]+$"}, "abc"))}
        end""")
    assert value == [False, "Invalid", False, "Invalid", False, True, True]


async def test_json_validate_stops_at_the_budget_however_refs_multiply_the_work() -> None:
    # Each level of `anyOf` two `$ref`s to the next doubles the work (depth 16 held the
    # loop for 3.8 s); validation is counted in keyword checks and charged.
    outcome = await run_lua("""
        return function(depth)
          local defs = {}
          for i = 1, depth do
            local nxt = "#/$defs/d" .. (i + 1)
            defs["d" .. i] = {anyOf = {{["$ref"] = nxt}, {["$ref"] = nxt}}}
          end
          defs["d" .. (depth + 1)] = {type = "string"}
          local shallow = json.validate({["$defs"] = {d = {type = "number"}}, ["$ref"] = "#/$defs/d"}, 1)
          assert(shallow == true, "a plain $ref still validates")
          return json.validate({["$defs"] = defs, ["$ref"] = "#/$defs/d1"}, 1)
        end""", 24, modules=("json",))
    assert outcome.error is not None and "instruction budget exceeded" in outcome.error.message, outcome
