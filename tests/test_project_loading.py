"""Project loading in Wippy's format, and every loading error ``moonwire check`` reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from moonwire.node import (FunctionEntry, InertEntry, ProcessServiceEntry, ProjectInvalid, TemporalClientEntry, load_project)
from support import LocalRuntime, run_cli, write_project

LUA = "return { main = function() return 1 end }\n"


def problems(root: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ProjectInvalid) as caught:
        load_project(root, environ=environ or {})
    return [str(p) for p in caught.value.problems]


def test_entries_fields_ids_and_bare_references(project_dir: Path) -> None:
    write_project(project_dir, {
        "src/app/_index.yaml": """
            version: "1.0"
            namespace: app.core
            entries:
              - name: host
                kind: process.host
              - name: worker.main
                kind: process.lua
                source: file://worker.lua
                method: main
                meta: {comment: hello}
              - name: svc
                kind: process.service
                process: worker.main
                host: app.core:host
                input: [1, "two"]
                lifecycle:
                  auto_start: true
                  depends_on: [host]
                  requires: [host]
                  restart: {initial_delay: 250ms, max_attempts: 3}
        """,
        "src/app/worker.lua": LUA,
    })
    project = load_project(project_dir, environ={})
    svc = project.entries["app.core:svc"]
    assert isinstance(svc, ProcessServiceEntry)
    assert svc.process == "app.core:worker.main"
    assert svc.host == "app.core:host"
    assert svc.input == [1, "two"]
    assert svc.lifecycle.auto_start is True
    assert svc.lifecycle.dependencies == ["app.core:host"]  # requires and depends_on merged
    assert svc.lifecycle.restart.initial_delay == 0.25
    assert svc.lifecycle.restart.max_attempts == 3
    assert svc.lifecycle.restart.backoff_factor == 2.0  # defaults from wippy-surface §1.8
    assert svc.lifecycle.restart.max_delay == 90.0
    assert svc.lifecycle.stop_timeout == 10.0
    assert svc.lifecycle.stable_threshold == 5.0
    worker = project.entries["app.core:worker.main"]
    assert worker.source == (project_dir / "src/app/worker.lua").resolve()
    assert worker.meta == {"comment": "hello"}
    assert project.locations["app.core:svc"].line == 11


def test_single_entry_file_and_unknown_kind_kept_inert(project_dir: Path) -> None:
    write_project(project_dir, {
        "one.yaml": "namespace: x\nname: route\nkind: http.endpoint\npath: /hello\n",
        "docker-compose.yaml": "services:\n  nats: {image: nats}\n",  # not a definition file
    })
    project = load_project(project_dir, environ={})
    entry = project.entries["x:route"]
    assert isinstance(entry, InertEntry)
    assert entry.model_extra == {"path": "/hello"}
    assert [str(w) for w in project.warnings] == ["one.yaml:3 x:route kind: unknown kind 'http.endpoint'; entry kept, inert"]


def test_env_placeholders_are_filled_in(project_dir: Path) -> None:
    write_project(project_dir, {
        "app.yaml": """
            namespace: app
            entries:
              - name: temporal
                kind: temporal.client
                address: ${env:TEMPORAL_HOST}:7233
        """,
    })
    project = load_project(project_dir, environ={"TEMPORAL_HOST": "temporal.internal"})
    client = project.entries["app:temporal"]
    assert isinstance(client, TemporalClientEntry)
    assert client.address == "temporal.internal:7233"
    assert not client.embedded


def test_function_pool_defaults(project_dir: Path) -> None:
    write_project(project_dir, {
        "app.yaml": """
            namespace: app
            entries:
              - {name: lazy, kind: function.lua, source: file://f.lua, method: main}
              - {name: fixed, kind: function.lua, source: file://f.lua, method: main, pool: {workers: 3}}
        """,
        "f.lua": LUA,
    })
    entries = load_project(project_dir, environ={}).entries
    lazy, fixed = entries["app:lazy"], entries["app:fixed"]
    assert isinstance(lazy, FunctionEntry) and isinstance(fixed, FunctionEntry)
    assert (lazy.pool.effective_type, lazy.pool.max_size) == ("lazy", 16)
    assert (fixed.pool.effective_type, fixed.pool.effective_workers, fixed.pool.effective_buffer) == ("static", 3, 192)


def test_wippy_lock_directories_limit_the_scan(project_dir: Path) -> None:
    write_project(project_dir, {
        "wippy.lock": "directories:\n  src: ./src\n",
        "src/a.yaml": "namespace: a\nentries:\n  - {name: h, kind: process.host}\n",
        "elsewhere/b.yaml": "namespace: b\nentries:\n  - {name: h, kind: process.host}\n",
    })
    assert list(load_project(project_dir, environ={}).entries) == ["a:h"]


def test_invalid_yaml_names_file_and_line(project_dir: Path) -> None:
    write_project(project_dir, {"defs/bad.yaml": "namespace: app\nentries:\n  - name: x\n    kind: [oops\n"})
    [problem] = problems(project_dir)
    assert problem.startswith("defs/bad.yaml:5: invalid YAML:")
    assert "line 4" in problem


def test_duplicate_yaml_key_is_an_error(project_dir: Path) -> None:
    write_project(project_dir, {"a.yaml": "namespace: app\nentries:\n  - name: x\n    kind: process.host\n    kind: process.lua\n"})
    assert problems(project_dir) == ["a.yaml:5: invalid YAML: duplicate key 'kind'"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("{name: x}", "a.yaml:3 app:x kind: missing kind"),
        ("{kind: process.host}", "a.yaml:3 entries[0].name: missing name"),
        ("{name: 'a:b', kind: process.host}", "a.yaml:3 entries[0].name: invalid name 'a:b'"),
        ("{name: x, kind: temporal.worker, client: c}", "a.yaml:3 app:x task_queue: Field required"),
        ("{name: x, kind: process.lua, source: f.lua}", "a.yaml:3 app:x source: expected a file:// path, got 'f.lua'"),
        ("{name: x, kind: process.lua}", "a.yaml:3 app:x source: missing source (file://path/to/code.lua)"),
        ("{name: x, kind: process.lua, source: file://nope.lua}", "a.yaml:3 app:x source: file not found: nope.lua"),
        ("{name: x, kind: process.lua, source: file://../outside.lua}", "a.yaml:3 app:x source: file://../outside.lua leaves the project"),
        ("{name: x, kind: process.lua, source: file:///etc/hostname}", "a.yaml:3 app:x source: file:///etc/hostname leaves the project"),
        ("{name: x, kind: library.lua, source: file://f.lua, method: main}",
         "a.yaml:3 app:x method: a library.lua entry has no method; its chunk's return value is the module"),
        ("{name: x, kind: process.host, lifecycle: {stop_timeout: 10}}",
         "a.yaml:3 app:x lifecycle.stop_timeout: a duration needs a unit, e.g. '10s' or '10ms'"),
        ("{name: x, kind: process.host, lifecycle: {restart: {jitter: 2}}}",
         "a.yaml:3 app:x lifecycle.restart.jitter: Input should be less than or equal to 1"),
        ("{name: x, kind: process.lua, source: 'file://${env:MISSING}.lua'}",
         "a.yaml:3 app:x source: environment variable MISSING is not set"),
        ("{name: x, kind: process.service, process: nope, host: h}",
         "a.yaml:3 app:x process: references app:nope, which does not exist"),
        ("{name: x, kind: process.service, process: h, host: h}",
         "a.yaml:3 app:x process: references app:h, a process.host; expected process.lua"),
        ("{name: x, kind: temporal.client, auth: {type: api_key}}",
         "a.yaml:3 app:x auth: auth.type api_key needs api_key"),
        ("{name: x, kind: function.lua, source: file://f.lua, imports: {h: h}}",
         "a.yaml:3 app:x imports.h: references app:h, a process.host; expected library.lua or function.lua or "
         "process.lua or workflow.lua"),
    ],
)
def test_each_entry_mistake_is_reported(project_dir: Path, entry: str, expected: str) -> None:
    write_project(project_dir, {
        "a.yaml": f"namespace: app\nentries:\n  - {entry}\n  - {{name: h, kind: process.host}}\n",
        "f.lua": LUA,
    })
    assert expected in problems(project_dir)


def test_missing_namespace_and_duplicate_ids(project_dir: Path) -> None:
    write_project(project_dir, {
        "a.yaml": "entries:\n  - {name: h, kind: process.host}\n",
        "b.yaml": "namespace: app\nentries:\n  - {name: h, kind: process.host}\n",
        "c.yaml": "namespace: app\nentries:\n  - {name: h, kind: process.host}\n",
    })
    assert problems(project_dir) == [
        "a.yaml:1 namespace: missing namespace",
        "c.yaml:3 app:h: duplicate entry id; first defined at b.yaml:3",
    ]


def test_import_and_dependency_cycles(project_dir: Path) -> None:
    write_project(project_dir, {
        "a.yaml": """
            namespace: app
            entries:
              - {name: a, kind: library.lua, source: file://f.lua, imports: {b: b}}
              - {name: b, kind: library.lua, source: file://f.lua, imports: {c: app:c}}
              - {name: c, kind: library.lua, source: file://f.lua, imports: {a: a}}
              - {name: h1, kind: process.host, lifecycle: {requires: [h2]}}
              - {name: h2, kind: process.host, lifecycle: {depends_on: [h1]}}
        """,
        "f.lua": LUA,
    })
    assert problems(project_dir) == [
        "a.yaml:3 app:a imports.b: import cycle: app:a -> app:b -> app:c -> app:a",
        "a.yaml:6 app:h1 lifecycle.requires[0]: dependency cycle: app:h1 -> app:h2 -> app:h1",
    ]


async def test_imports_of_every_lua_kind_give_the_chunk_value(project_dir: Path) -> None:
    files = {
        "a.yaml": """
            namespace: app
            entries:
              - {name: lib, kind: library.lua, source: file://lib.lua}
              - {name: fn, kind: function.lua, source: file://fn.lua, method: double}
              - {name: bare, kind: function.lua, source: file://bare.lua}
              - {name: proc, kind: process.lua, source: file://proc.lua, method: main}
              - name: wf
                kind: workflow.lua
                source: file://wf.lua
                method: run
                modules: [workflow]
              - name: user
                kind: function.lua
                source: file://user.lua
                imports: {lib: lib, fn: fn, bare: bare, proc: proc, wf: app:wf}
        """,
        "lib.lua": "return {three = 3}\n",
        "fn.lua": "local n = 0\nreturn {double = function(x) n = n + 1; return 2 * x, n end}\n",
        "bare.lua": "return function(x) return x + 1 end\n",
        "proc.lua": "return {main = function() return 'never run' end, name = 'proc'}\n",
        # A workflow's chunk that only defines functions imports anywhere; its workflow
        # module is required inside run, which an importer does not call.
        "wf.lua": "return {run = function() return require('workflow').info() end, square = function(x) return x * x end}\n",
        "user.lua": """
            local fn, again = require("fn"), require("fn")
            local a, calls_a = fn.double(require("lib").three)
            local _, calls_b = again.double(1)
            return function()
                return {a, calls_b, require("bare")(1), require("proc").name, require("wf").square(4), fn == again}
            end
        """,
    }
    async with LocalRuntime(project_dir, files) as runtime:
        assert runtime.project.entries["app:user"].imports == {  # type: ignore[attr-defined]
            "lib": "app:lib", "fn": "app:fn", "bare": "app:bare", "proc": "app:proc", "wf": "app:wf"}
        outcome = await runtime.execute("app:user", [])  # type: ignore[attr-defined]
    # Once per importing instance: the second require is the same table, with its state.
    assert outcome.error is None
    assert outcome.value == [6, 2, 2, "proc", 16, True]


def test_import_cycle_through_functions_and_processes_is_named(project_dir: Path) -> None:
    write_project(project_dir, {
        "a.yaml": """
            namespace: app
            entries:
              - {name: f, kind: function.lua, source: file://f.lua, method: main, imports: {p: p}}
              - {name: p, kind: process.lua, source: file://f.lua, method: main, imports: {w: w}}
              - {name: w, kind: workflow.lua, source: file://f.lua, method: main, imports: {f: f}}
        """,
        "f.lua": LUA,
    })
    assert problems(project_dir) == ["a.yaml:3 app:f imports.p: import cycle: app:f -> app:p -> app:w -> app:f"]


UNKNOWN_KEYS = """
    namespace: app
    entries:
      - name: h
        kind: process.host
        colour: blue
        lifecycle:
          restart: {jiter: 0.5}
      - name: f
        kind: function.lua
        source: file://f.lua
        method: main
        pool: {workers: 2, flavour: lazy}
      - {name: route, kind: http.endpoint, path: /x}
"""


def test_unknown_keys_of_known_kinds_are_warnings_with_file_and_line(project_dir: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    write_project(project_dir, {"a.yaml": UNKNOWN_KEYS, "f.lua": LUA})
    with caplog.at_level("WARNING", logger="moonwire.project"):
        project = load_project(project_dir, environ={})
    expected = [
        "a.yaml:5 app:h colour: unknown key for kind process.host; ignored",
        "a.yaml:7 app:h lifecycle.restart.jiter: unknown key for kind process.host; ignored",
        "a.yaml:12 app:f pool.flavour: unknown key for kind function.lua; ignored",
        "a.yaml:13 app:route kind: unknown kind 'http.endpoint'; entry kept, inert",
    ]
    assert [str(w) for w in project.warnings] == expected
    assert [r.getMessage() for r in caplog.records] == expected  # logged once, at load
    # The rest of each entry is read as written.
    assert project.entries["app:f"].pool.workers == 2  # type: ignore[attr-defined]
    assert project.entries["app:h"].lifecycle.restart.jitter == 0.1  # type: ignore[attr-defined]


def test_a_bad_value_next_to_an_unknown_key_is_still_an_error(project_dir: Path) -> None:
    write_project(project_dir, {"a.yaml": "namespace: app\nentries:\n  - name: h\n    kind: process.host\n"
                                          "    colour: blue\n    lifecycle: {stop_timeout: 10}\n"})
    with pytest.raises(ProjectInvalid) as caught:
        load_project(project_dir, environ={})
    assert [str(p) for p in caught.value.problems] == [
        "a.yaml:6 app:h lifecycle.stop_timeout: a duration needs a unit, e.g. '10s' or '10ms'"]
    assert [str(w) for w in caught.value.warnings] == ["a.yaml:5 app:h colour: unknown key for kind process.host; ignored"]


async def test_check_prints_warnings_and_strict_makes_them_errors(project_dir: Path) -> None:
    write_project(project_dir, {"a.yaml": UNKNOWN_KEYS, "f.lua": LUA})
    code, out, err = await run_cli("check", str(project_dir))
    assert code == 0
    assert out.strip() == "ok: 3 entries (1 function.lua, 1 http.endpoint, 1 process.host)"
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings[0] == "warning: a.yaml:5 app:h colour: unknown key for kind process.host; ignored"
    assert len(warnings) == 4  # each once: the loader's log line is not printed as well
    code, out, err = await run_cli("check", "--strict", str(project_dir))
    assert code == 1
    assert out == ""
    assert [line for line in err.splitlines() if line.startswith("warning:")] == warnings
    assert "4 warning(s) found; --strict makes them errors." in err


async def test_check_lists_every_problem_and_exits_nonzero(project_dir: Path) -> None:
    write_project(project_dir, {
        "src/_index.yaml": """
            namespace: app
            entries:
              - name: worker
                kind: process.lua
                source: file://missing.lua
              - name: svc
                kind: process.service
                process: worker
                host: no_such_host
                lifecycle:
                  restart: {max_attempts: -1}
              - name: w
                kind: temporal.worker
                client: app:svc
                task_queue: q
        """,
        "src/broken.yaml": "namespace: b\nentries: [\n",
    })
    code, out, err = await run_cli("check", str(project_dir))
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: src/_index.yaml:5 app:worker source: file not found: src/missing.lua",
        "error: src/_index.yaml:9 app:svc host: references app:no_such_host, which does not exist",
        "error: src/_index.yaml:11 app:svc lifecycle.restart.max_attempts: Input should be greater than or equal to 0",
        "error: src/_index.yaml:14 app:w client: references app:svc, a process.service; expected temporal.client",
        "error: src/broken.yaml:3: invalid YAML: while parsing a flow node, expected the node content, but found '<stream end>'",
    ]
    assert "5 problem(s) found" in err


async def test_check_accepts_a_valid_project(project_dir: Path) -> None:
    write_project(project_dir, {
        "a.yaml": "namespace: app\nentries:\n  - {name: h, kind: process.host}\n  - {name: f, kind: function.lua, source: file://f.lua, method: main}\n",
        "f.lua": LUA,
    })
    code, out, _ = await run_cli("check", str(project_dir))
    assert code == 0
    assert out.strip() == "ok: 2 entries (1 function.lua, 1 process.host)"


async def test_run_refuses_an_invalid_project_with_the_same_messages(project_dir: Path) -> None:
    write_project(project_dir, {"a.yaml": "namespace: app\nentries:\n  - {name: s, kind: process.service, process: p, host: h}\n"})
    _, _, check_err = await run_cli("check", str(project_dir))
    code, _, run_err = await run_cli("run", str(project_dir), "--nats", "nats://127.0.0.1:1")
    assert code == 2
    errors = [line for line in run_err.splitlines() if line.startswith("error:")]
    assert errors == [line for line in check_err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "nothing was started" in run_err


async def test_check_compiles_lua_and_names_file_and_line_typed_or_not(project_dir: Path) -> None:
    write_project(project_dir, {
        "a.yaml": """
            namespace: app
            entries:
              - {name: plain, kind: function.lua, source: file://lua/plain.lua, method: main}
              - {name: typed, kind: function.lua, source: file://lua/typed.lua, method: main}
              - {name: fine, kind: function.lua, source: file://lua/fine.lua, method: main}
        """,
        "lua/plain.lua": "local M = {}\nfunction M.main()\n  return 1 +\nend\nreturn M\n",
        "lua/typed.lua": "local M = {}\n\nfunction M.main(a: {x: number): string\n  return 'x'\nend\nreturn M\n",
        "lua/fine.lua": "type P = {x: number}\nlocal M = {}\nfunction M.main(p: P): number return p.x end\nreturn M\n",
    })
    code, out, err = await run_cli("check", str(project_dir))
    assert code == 1 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, err
    assert errors[0].startswith("error: app:plain: syntax error: lua/plain.lua:4:"), errors
    assert errors[1].startswith("error: app:typed: syntax error: lua/typed.lua:3:"), errors
