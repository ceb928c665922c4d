"""The ``registry`` and ``env`` modules (wippy-modules §6, §7) over a real project, loaded
by the project loader and handed to a state (or run by a node's runtime)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from moonwire.lua import Kind, LuaState, Registry, Replay
from moonwire.node import ProjectInvalid, load_project
from moonwire.node.project import ProjectEntries
from support import LocalRuntime, process_project, run_lua, write_project

INDEX = """
namespace: app
entries:
  - name: api
    kind: function.lua
    meta: {type: handler, tags: [web, api], count: 3, enabled: true, description: the public API}
    source: file://fn.lua
    method: main
  - name: worker
    kind: function.lua
    meta: {type: job, tags: [batch], enabled: false, description: nightly batch}
    source: file://fn.lua
    method: main
  - name: settings
    kind: config.blob
    meta: {type: config}
    data: {answer: 42, list: [1, 2]}
  - name: loose
    kind: config.thing
    a: 1
    b: x
  - name: mem
    kind: env.storage.memory
  - name: static
    kind: env.storage.static
    values: {GREETING: hello, PORT: 8080}
  - name: os
    kind: env.storage.os
  - name: router
    kind: env.storage.router
    storages: [mem, static]
  - name: greeting
    kind: env.variable
    storage: static
    variable: GREETING
  - name: counter
    kind: env.variable
    storage: mem
    default: "0"
  - name: locked
    kind: env.variable
    storage: mem
    variable: LOCKED
    readonly: true
  - name: mode
    kind: env.variable
    storage: router
    variable: MODE
    default: dev
  - name: home
    kind: env.variable
    storage: os
    variable: MW_TEST_HOME
  - name: empty
    kind: env.variable
    storage: os
    variable: MW_TEST_EMPTY
"""
OTHER = """
namespace: other
entries:
  - name: token
    kind: env.variable
    storage: app:mem
"""
ALL_IDS = {"app:api", "app:worker", "app:settings", "app:loose", "app:mem", "app:static", "app:os", "app:router",
           "app:greeting", "app:counter", "app:locked", "app:mode", "app:home", "app:empty", "other:token"}
ENVIRON = {"MW_TEST_HOME": "/home/moon", "MW_TEST_EMPTY": ""}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    root = write_project(tmp_path, {"_index.yaml": INDEX, "other/_index.yaml": OTHER, "fn.lua": "return {main=function() end}"})
    return Registry(ProjectEntries(load_project(root)), environ=ENVIRON)


async def lua(registry: Registry, source: str, name: str = "app:fn") -> object:
    outcome = await run_lua(source, modules=("registry", "env"), state=LuaState(registry=registry), name=name)
    assert outcome.error is None, outcome.error
    return outcome.value


# ------------------------------------------------------------------ registry


async def test_registry_get_returns_id_kind_meta_data(registry: Registry) -> None:
    entry, count_type = await lua(registry, """
        return function()
          local e = registry.get("app:api")
          return {e, math.type(e.meta.count)}
        end""")
    assert entry["id"] == "app:api" and entry["kind"] == "function.lua"
    assert entry["meta"] == {"type": "handler", "tags": ["web", "api"], "count": 3, "enabled": True,
                             "description": "the public API"}
    assert entry["data"]["method"] == "main" and entry["data"]["source"].endswith("fn.lua")
    assert count_type == "integer"  # YAML integers stay integers


async def test_registry_data_key_is_taken_verbatim_otherwise_the_other_fields(registry: Registry) -> None:
    settings, loose = await lua(registry, """
        return function() return {registry.get("app:settings").data, registry.get("app:loose").data} end""")
    assert settings == {"answer": 42, "list": [1, 2]}
    assert loose == {"a": 1, "b": "x"}


async def test_registry_get_missing_and_unqualified_are_not_found(registry: Registry) -> None:
    result = await lua(registry, """
        return function()
          local a, e1 = registry.get("app:nope")
          local b, e2 = registry.get("api")
          return {a == nil, e1:kind(), e1:message(), b == nil, e2:kind()}
        end""")
    assert result == [True, Kind.NOT_FOUND.value, "entry not found: app:nope", True, Kind.NOT_FOUND.value]


async def test_registry_get_non_string_raises(registry: Registry) -> None:
    outcome = await run_lua("return function() return registry.get(5) end", modules=("registry",),
                            state=LuaState(registry=registry))
    assert outcome.error is not None and "bad argument #1 to 'get' (string expected, got number)" in outcome.error.message


async def test_registry_entries_are_fresh_copies(registry: Registry) -> None:
    assert await lua(registry, """
        return function()
          local e = registry.get("app:api")
          e.meta.type = "changed"; e.meta.tags[1] = "x"
          local again = registry.get("app:api")
          return again.meta.type == "handler" and again.meta.tags[1] == "web"
        end""") is True


async def ids(registry: Registry, filter_source: str) -> set[str]:
    found = await lua(registry, f"""
        return function()
          local out = {{}}
          for _, e in ipairs(registry.find({filter_source})) do out[#out + 1] = e.id end
          return out
        end""")
    return set(found or [])


@pytest.mark.parametrize(("filter_source", "expected"), [
    ('{[".kind"] = "function.lua"}', {"app:api", "app:worker"}),
    ('{[".kind"] = "function.*"}', {"app:api", "app:worker"}),
    ('{[".kind"] = "*.variable", [".ns"] = "other"}', {"other:token"}),
    ('{[".kind"] = "env.*.memory"}', {"app:mem"}),
    ('{[".id"] = "app:w*"}', {"app:worker"}),
    ('{[".name"] = "*er"}', {"app:worker", "app:router", "app:counter"}),
    ('{[".ns"] = "ap*p", [".name"] = "api"}', {"app:api"}),
    ('{["meta.type"] = "handler"}', {"app:api"}),
    ('{["meta.enabled"] = false}', {"app:worker"}),
    ('{["meta.count"] = 3}', {"app:api"}),
    ('{["meta.tags"] = {"api", "web"}}', {"app:api"}),
    ('{["meta.tags"] = {"api", "batch"}}', set()),
    ('{["~meta.description"] = "^the .*API$"}', {"app:api"}),
    ('{["*meta.description"] = "batch"}', {"app:worker"}),
    ('{["*meta.tags"] = "at"}', {"app:worker"}),
    ('{["^meta.type"] = "hand"}', {"app:api"}),
    ('{["$meta.type"] = "ob"}', {"app:worker"}),
    ('{[".kind"] = "function.lua", ["~meta.description"] = "("}', {"app:api", "app:worker"}),  # bad regex ignored
    # RE2, Go's syntax (linear time): a backreference is not a regex there, so ignored too
    ('{[".kind"] = "function.lua", ["~meta.description"] = "(t)\\\\1"}', {"app:api", "app:worker"}),
    ('{[".kind"] = 5}', ALL_IDS),  # non-string root values are ignored
])
async def test_registry_find_filter_keys(registry: Registry, filter_source: str, expected: set[str]) -> None:
    assert await ids(registry, filter_source) == expected


async def test_registry_find_ignores_other_keys_with_a_warning(registry: Registry,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="moonwire.lua"):
        found = await ids(registry, '{kind = "function.lua", meta = {type = "handler"}}')
    assert found == ALL_IDS  # as Wippy: `kind=` is not `.kind`, so nothing is filtered
    assert "registry.find: key 'kind' ignored" in caplog.text and "key 'meta' ignored" in caplog.text


async def test_registry_find_non_table_raises(registry: Registry) -> None:
    outcome = await run_lua('return function() return registry.find("x") end', modules=("registry",),
                            state=LuaState(registry=registry))
    assert outcome.error is not None and "bad argument #1 to 'find' (table expected, got string)" in outcome.error.message


async def test_registry_parse_id_splits_at_first_colon() -> None:
    outcome = await run_lua("""
        return function() return {registry.parse_id("a:b:c"), registry.parse_id("plain"), registry.parse_id("ns:")} end""",
                            modules=("registry",))
    assert outcome.value == [{"ns": "a", "name": "b:c"}, {"ns": "", "name": "plain"}, {"ns": "ns", "name": ""}]


async def test_registry_without_a_project_is_empty() -> None:
    outcome = await run_lua("""
        return function()
          local e, err = registry.get("app:x")
          return {#registry.find({}), err:kind()}
        end""", modules=("registry",))
    assert outcome.value == [0, Kind.NOT_FOUND.value]


async def test_registry_and_env_are_absent_in_workflows() -> None:
    state = LuaState(replay=Replay(now_ns=lambda: 0, random=random.Random(7)))
    state.add_workflow_module({name: (lambda *a: None) for name in
                               ("info", "history_length", "history_size", "version", "worker")})
    outcome = await run_lua("""
        return function()
          return {registry == nil, env == nil, pcall(require, "registry"), crypto ~= nil, hash ~= nil}
        end""", modules=("registry", "env", "crypto", "hash"), state=state)
    assert outcome.value == [True, True, False, True, True]


# ------------------------------------------------------------------ env


async def test_env_resolution_order(registry: Registry) -> None:
    result = await lua(registry, """
        return function()
          local function kind(v, err) return v or err:kind() end
          return {
            kind(env.get("GREETING")),    -- (1) a public name
            kind(env.get("counter")),     -- (2) <caller's namespace>:key, its default
            kind(env.get("app:greeting")),-- (3) an entry id, though it has a public name
            kind(env.get("app:counter")), -- (1) a variable without variable: is named by its id
            kind(env.get("token")),       -- other:token, not in the caller's namespace
            kind(env.get("other:token")), -- unset, no default
            kind(env.get("NOPE")),
          }
        end""")
    assert result == ["hello", "0", "hello", "0", "NotFound", "NotFound", "NotFound"]


async def test_env_namespace_is_the_calling_entrys(registry: Registry) -> None:
    result = await lua(registry, """
        return function()
          env.set("other:token", "t-1")
          local v, err = env.get("counter")
          return {env.get("token"), v == nil, err and err:kind()}
        end""", name="other:fn")
    assert result == ["t-1", True, "NotFound"]


async def test_env_no_fallback_to_the_os_environment(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_TEST_RAW", "raw")
    assert await lua(registry, 'return function() local v, e = env.get("MW_TEST_RAW") return e:kind() end') == "NotFound"


async def test_env_os_storage_is_read_only_and_empty_is_unset(registry: Registry) -> None:
    result = await lua(registry, """
        return function()
          local ok, err = env.set("MW_TEST_HOME", "x")
          local v, unset = env.get("MW_TEST_EMPTY")
          return {env.get("MW_TEST_HOME"), ok == nil, err:kind(), v == nil, unset:kind()}
        end""")
    assert result == ["/home/moon", True, "PermissionDenied", True, "NotFound"]


async def test_env_set_and_get_memory_and_read_only(registry: Registry) -> None:
    result = await lua(registry, """
        return function()
          local ok = env.set("counter", "7")
          local a, e1 = env.set("LOCKED", "x")     -- read-only variable
          local b, e2 = env.set("GREETING", "x")   -- read-only (static) storage
          local c, e3 = env.set("NOPE", "x")
          return {ok, env.get("counter"), e1:kind(), e2:kind(), e3:kind()}
        end""")
    assert result == [True, "7", "PermissionDenied", "PermissionDenied", "NotFound"]


async def test_env_router_reads_in_order_and_writes_to_the_first(registry: Registry) -> None:
    result = await lua(registry, """
        return function()
          local before = env.get("MODE")   -- in neither storage: the default
          env.set("MODE", "prod")          -- into mem, the first
          return {before, env.get("MODE")}
        end""")
    assert result == ["dev", "prod"]
    assert registry.env.storages["app:mem"].get("MODE") == "prod"


async def test_env_bad_arguments(registry: Registry) -> None:
    result = await lua(registry, """
        return function()
          local v, e = env.get("")
          local ok, raised = pcall(env.set, "counter", 5)
          local ok2, raised2 = pcall(env.get, nil)
          return {e:kind(), ok, raised, ok2, raised2}
        end""")
    assert result[:2] == ["Invalid", False] and "bad argument #2 to 'set' (string expected, got number)" in result[2]
    assert result[3] is False and "bad argument #1 to 'get' (string expected, got nil)" in result[4]


async def test_env_get_all_lists_every_storage_by_raw_name(registry: Registry) -> None:
    values = await lua(registry, """
        return function()
          env.set("counter", "3")
          return env.get_all()
        end""")
    assert values == {"GREETING": "hello", "PORT": "8080", "app:counter": "3", **ENVIRON}


async def test_env_file_storage_reads_and_writes_dotenv(tmp_path: Path) -> None:
    env_file = tmp_path / "conf" / "app.env"
    root = write_project(tmp_path / "project", {"_index.yaml": f"""
        namespace: app
        entries:
          - name: file
            kind: env.storage.file
            file_path: {env_file}
            auto_create: true
            file_mode: "0600"
          - name: db
            kind: env.variable
            storage: file
            variable: DB_URL
          - name: quoted
            kind: env.variable
            storage: file
            variable: QUOTED
        """})
    registry = Registry(ProjectEntries(load_project(root)))
    first = await lua(registry, """
        return function()
          local v, err = env.get("DB_URL")
          env.set("DB_URL", "postgres://db:5432/app")
          return {err:kind(), env.get("DB_URL")}
        end""")
    assert first == ["NotFound", "postgres://db:5432/app"]
    assert env_file.read_text() == "DB_URL=postgres://db:5432/app\n" and env_file.stat().st_mode & 0o777 == 0o600
    env_file.write_text('# comment\nexport DB_URL=other # trailing\nQUOTED="a \\"b\\"\\nc"\n')
    assert await lua(registry, 'return function() return {env.get("DB_URL"), env.get("QUOTED")} end') == \
        ["other", 'a "b"\nc']


def test_env_kinds_are_validated_by_the_loader(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"_index.yaml": """
        namespace: app
        entries:
          - name: var
            kind: env.variable
            storage: missing
            variable: "not valid"
          - name: router
            kind: env.storage.router
            storages: [var]
          - name: file
            kind: env.storage.file
        """})
    with pytest.raises(ProjectInvalid) as caught:
        load_project(root)
    text = str(caught.value)
    assert "app:var storage: references app:missing, which does not exist" in text
    assert "app:var variable:" in text
    assert "app:router storages[0]: references app:var, a env.variable" in text
    assert "app:file file_path" in text


async def test_env_memory_storage_is_shared_by_the_nodes_states(tmp_path: Path) -> None:
    files = process_project({"writer": """
        return {main = function()
          local funcs = require("funcs")
          env.set("SHARED", "from-a-process")
          return funcs.call("app:reader")
        end}"""}, extra_yaml="""
        - name: reader
          kind: function.lua
          source: file://reader.lua
          method: main
          modules: [env]
        - name: mem
          kind: env.storage.memory
        - name: shared
          kind: env.variable
          storage: mem
          variable: SHARED
        """)
    files["_index.yaml"] = files["_index.yaml"].replace("modules: [time, json, funcs, ctx, uuid]", "modules: [funcs, env]")
    files["reader.lua"] = 'return {main = function() return env.get("SHARED") end}'
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:writer", [])  # type: ignore[attr-defined]
    assert outcome.error is None, outcome.error
    assert outcome.value == "from-a-process"
