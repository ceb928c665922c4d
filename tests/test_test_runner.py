"""``moonwire test``: a project's ``meta.type: test`` entries run on a node of its own
(embedded NATS, as ``moonwire run``), one at a time by id, one line each, a summary, and
pytest's exit statuses.

Each case runs the real ``moonwire`` binary on a project written to a temporary folder;
one project holds every kind of outcome, so most cases share its node's start.
"""

from __future__ import annotations

from pathlib import Path

from support import run_cli, write_project

PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: helpers, kind: library.lua, source: file://helpers.lua}
          - name: adds
            kind: function.lua
            source: file://adds.lua
            method: run
            imports: {h: helpers}
            meta: {type: test}
          - {name: quiet, kind: function.lua, source: file://quiet.lua, meta: {type: test}}
          - {name: says_no, kind: function.lua, source: file://says_no.lua, meta: {type: test}}
          - {name: plain_false, kind: function.lua, source: file://plain_false.lua, meta: {type: test}}
          - {name: nil_err, kind: function.lua, source: file://nil_err.lua, meta: {type: test}}
          - {name: raises, kind: function.lua, source: file://raises.lua, meta: {type: test}}
          - {name: cases, kind: function.lua, source: file://cases.lua, meta: {type: test}}
          - name: hangs
            kind: function.lua
            source: file://hangs.lua
            modules: [time]
            meta: {type: test, timeout: 300ms}
          - {name: proc_ok, kind: process.lua, source: file://proc_ok.lua, method: main, meta: {type: test}}
          - {name: proc_hangs, kind: process.lua, source: file://proc_hangs.lua, method: main, meta: {type: test}}
          - {name: helper_fn, kind: function.lua, source: file://quiet.lua, meta: {type: fixture}}
    """,
    "helpers.lua": "return {double = function(x) return 2 * x end}\n",
    # Gets Wippy's argument table: ref_id is the test's own id.
    "adds.lua": 'local h = require("h")\nreturn {run = function(args) return h.double(2) == 4 and args.ref_id == "app:adds" end}\n',
    "quiet.lua": "return function() end\n",  # returns nothing: passes, as in Wippy
    "says_no.lua": 'return function() return false, "two is not three" end\n',
    "plain_false.lua": "return function() return false end\n",
    "nil_err.lua": 'return function() return nil, errors.new({message = "no such row", kind = errors.NOT_FOUND}) end\n',
    "raises.lua": 'return function() error("boom") end\n',
    # The result table of wippy.test's run_cases when a case failed.
    "cases.lua": """
        return function()
            return {status = "error", total_tests = 2, failed_tests = 1, passed_tests = 1,
                    test_suites = {math = {name = "math", status = "error",
                                           tests = {{name = "adds", status = "pass"},
                                                    {name = "subtracts", status = "fail", error = "expected 1, got 2"}}}}}
        end
    """,
    "hangs.lua": 'local time = require("time")\nreturn function() time.sleep("1h") end\n',
    "proc_ok.lua": "return {main = function(args) return args.ref_id == 'app:proc_ok' end}\n",
    "proc_hangs.lua": "return {main = function() process.inbox():receive() end}\n",  # never a message, and ignores CANCEL
}


async def test_every_outcome_in_id_order_with_summary_and_exit_1(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", PROJECT)
    code, out, err = await run_cli("test", str(project), "--timeout", "500ms")
    lines = out.splitlines()
    assert lines[0].startswith("PASS app:adds (") and lines[0].endswith(" ms)"), out
    assert lines[1:] == [
        "FAIL app:cases: 1 of 2 cases failed; first: math > subtracts: expected 1, got 2",
        "ERROR app:hangs: timed out after 0.3 s",  # its meta.timeout, not --timeout
        "FAIL app:nil_err: NotFound: no such row",
        "FAIL app:plain_false: returned false",
        "ERROR app:proc_hangs: timed out after 0.5 s",
        lines[6],
        lines[7],
        "ERROR app:raises: raises.lua:1: boom",
        "FAIL app:says_no: two is not three",
        "3 passed, 4 failed, 3 errors",
    ], out + err
    assert lines[6].startswith("PASS app:proc_ok (") and lines[7].startswith("PASS app:quiet (")
    assert "helper_fn" not in out  # meta.type other than test: not a test
    assert code == 1, err  # both hangs were cut (the lines above say so), or this would not return


async def test_k_selects_by_substring_of_the_id_and_all_passing_exits_0(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", PROJECT)
    code, out, err = await run_cli("test", str(project), "-k", "adds", "-k", "proc_ok")
    lines = out.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["PASS app:adds", "PASS app:proc_ok", "2 passed, 0 failed"], out
    assert code == 0, err


async def test_no_tests_found_exits_5_without_starting_a_node(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", PROJECT)
    code, out, _ = await run_cli("test", str(project), "-k", "nothing_has_this")
    assert (code, out.strip()) == (5, "no tests found matching -k nothing_has_this (entries with meta.type: test)")
    assert not (project / ".moonwire").exists()  # no embedded server was started
    empty = write_project(tmp_path / "empty", {"_index.yaml": "namespace: app\nentries:\n  - {name: h, kind: process.host}\n"})
    code, out, _ = await run_cli("test", str(empty))
    assert (code, out.strip()) == (5, "no tests found (entries with meta.type: test)")


async def test_an_invalid_project_or_timeout_is_a_usage_error(tmp_path: Path) -> None:
    bad = write_project(tmp_path / "bad", {"_index.yaml": "namespace: app\nentries:\n  - {name: t, kind: function.lua}\n"})
    code, out, err = await run_cli("test", str(bad))
    assert code == 2 and out == ""
    assert "error: _index.yaml:3 app:t source: missing source" in err
    project = write_project(tmp_path / "p", PROJECT)
    code, _, err = await run_cli("test", str(project), "--timeout", "soon")
    assert code == 2 and "error: --timeout soon:" in err
