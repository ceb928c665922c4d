"""Commands (``meta.command``, wippy-modules §12.3): ``moonwire run DIR NAME ARG...`` runs
the process entry named NAME on the terminal host with each ARG as a string, prints its
result and exits with the status it returns; ``run DIR --list`` lists them; ``-x`` exits
with a process's integer too. The real ``moonwire`` command, a real node each run."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from moonwire.lua import MoonwireError, Outcome
from moonwire.node.cli._commands_run import cmd_list, exit_status, usage_problem
from moonwire.node.cli._parsing import parse_args
from support import run_cli, write_project

PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - name: greet
            kind: process.lua
            source: file://greet.lua
            meta:
              command: {name: greet, short: Say hello and exit 7, main: true}
          - name: echo
            kind: process.lua
            source: file://args.lua
            meta: {command: {name: echo}}
          - name: fail
            kind: process.lua
            source: file://fail.lua
            meta: {command: {name: fail, short: Always fails}}
          - name: forever
            kind: process.lua
            source: file://forever.lua
            modules: [time]
            meta: {command: {name: forever}}
          - name: waiter
            kind: process.lua
            source: file://waiter.lua
            meta: {command: {name: waiter}}
          - {name: code, kind: process.lua, source: file://echo.lua}
          - {name: add, kind: function.lua, source: file://add.lua}
    """,
    "greet.lua": """
        return function(a, b, ...)
          print("hello " .. a .. " " .. b, type(a), type(b), select("#", ...))
          return 7
        end""",
    "echo.lua": "return function(...) return ... end",
    "args.lua": "return function(...) return { ... } end",
    "fail.lua": "return function() return nil, errors.new({ message = 'no luck', kind = errors.CONFLICT }) end",
    "forever.lua": """
        local time = require("time")
        return function()
          print("forever started")
          while true do time.sleep("1h") end
        end""",
    "waiter.lua": """
        return function()
          local events = process.events()
          print("waiter started")
          while true do
            local ev = events:receive()
            if ev.kind == process.event.CANCEL then print("waiter cancelled: " .. ev.reason) return end
          end
        end""",
    "add.lua": "return function(a, b) return a + b end",
}


def run(project: Path, nats_server, node: str, *args: str):
    return run_cli("run", str(project), "--node", node, "--nats", nats_server.address, *args)


async def test_a_command_gets_its_args_as_strings_and_exits_with_its_integer(tmp_path: Path, nats_server) -> None:
    project = write_project(tmp_path / "p", PROJECT)
    code, out, err = await run(project, nats_server, "cmd1", "greet", "a", "b")
    assert code == 7, err
    assert json.loads(out) == 7
    assert "[app:greet] hello a b\tstring\tstring\t0" in err  # its print; no node INFO lines
    assert not [line for line in err.splitlines() if " INFO " in line and "moonwire.lua" not in line], err
    # --project instead of DIR: the first word is the command; options anywhere; '--'
    # passes words that look like options; "20" stays a string (-x would read a number).
    code, out, err = await run_cli("run", "--project", str(project), "echo", "20", "--node", "cmd1",
                                   "--nats", nats_server.address, "--", "-x", "--list")
    assert code == 0, err
    assert json.loads(out) == ["20", "-x", "--list"]


async def test_list_and_unknown_command(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", PROJECT)
    code, out, err = await run_cli("run", str(project), "--list")
    assert code == 0, err
    rows = [line.split(None, 3) for line in out.splitlines()]
    assert rows == [["COMMAND", "ENTRY", "MAIN", "DESCRIPTION"], ["echo", "app:echo", "-"],
                    ["fail", "app:fail", "-", "Always fails"], ["forever", "app:forever", "-"],
                    ["greet", "app:greet", "yes", "Say hello and exit 7"], ["waiter", "app:waiter", "-"]]
    # Nothing runs for an unknown command, and no server is asked for (none is given).
    code, out, err = await run_cli("run", str(project), "nope", "x")
    assert (code, out) == (2, ""), err
    assert "error: no command 'nope' in" in err and "its commands: echo, fail, forever, greet, waiter" in err


def test_words_in_the_wrong_place_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = write_project(tmp_path / "p", PROJECT)
    assert usage_problem(parse_args(["run", str(project), "greet", "-x", "app:code"])) == 2
    assert "run takes one of -x, a command or --list, not -x and a command" in capsys.readouterr().err
    assert usage_problem(parse_args(["run", str(tmp_path / "greet"), "--list"])) == 2
    assert "greet is not a folder (give the project folder first" in capsys.readouterr().err
    empty = write_project(tmp_path / "empty", {"_index.yaml": "namespace: e\nentries: []\n"})
    assert cmd_list(parse_args(["run", str(empty), "--list"])) == 0
    assert capsys.readouterr().out.startswith("no commands in")


async def test_a_command_that_errors_exits_non_zero_with_the_error(tmp_path: Path, nats_server) -> None:
    project = write_project(tmp_path / "p", PROJECT)
    code, out, err = await run(project, nats_server, "cmd2", "fail")
    assert code == 1
    assert json.loads(out)["error"] == {"message": "no luck", "kind": "Conflict"}
    assert "error: Conflict: no luck" in err


async def test_run_x_exits_with_a_process_integer_but_not_a_function_result(tmp_path: Path, nats_server) -> None:
    project = write_project(tmp_path / "p", PROJECT)
    code, out, err = await run(project, nats_server, "cmd3", "-x", "app:code", "42")
    assert (code, json.loads(out)) == (42, 42), err
    code, out, err = await run(project, nats_server, "cmd3", "-x", "app:add", "20", "22")
    assert (code, json.loads(out)) == (0, 42), err  # a function's result is data


async def test_a_signal_stops_a_command_as_it_stops_a_node(tmp_path: Path, nats_server, spawn_node) -> None:
    project = write_project(tmp_path / "p", PROJECT)
    # The first signal: the node stops in order, and the command's process gets CANCEL.
    node = await spawn_node(project, "cmd4", nats_url=nats_server.address, ready=r"waiter started",
                            args=("waiter",))
    node.process.send_signal(signal.SIGTERM)
    assert await node.wait() == 130, node.output
    assert "waiter cancelled: " in node.output
    # A second signal ends a command that ignores CANCEL at once, not after the grace period.
    node = await spawn_node(project, "cmd5", nats_url=nats_server.address, ready=r"forever started",
                            args=("forever", "--shutdown-timeout", "600s", "-v"))
    node.process.send_signal(signal.SIGINT)
    await node.wait_for_line(r"SIGINT received; shutting down")  # two at once would be one signal
    node.process.send_signal(signal.SIGINT)
    assert await node.wait() == 130, node.output


@pytest.mark.parametrize(("value", "status"), [
    (None, 0), (0, 0), (7, 7), (255, 255), (7.0, 7), (True, 0), (False, 1), ("text", 0), ({"a": 1}, 0),
    (256, 1), (-1, 1), (2.5, 1), (float("nan"), 1), (float("inf"), 1),
])
def test_exit_status_of_a_process_result(value: object, status: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(Outcome(value=value), process=True, entry="app:code") == status
    said = capsys.readouterr().err
    assert ("app:code returned" in said and "which is no exit status" in said) == (
        isinstance(value, int | float) and not isinstance(value, bool) and status == 1)
    assert exit_status(Outcome(value=value), process=False) == 0
    assert exit_status(Outcome(error=MoonwireError("x")), process=True) == 1


# ------------------------------------------------------------ load errors

async def test_duplicate_and_unusable_command_names_are_reported_where_they_stand(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", {
        "_index.yaml": """
            namespace: app
            entries:
              - {name: one, kind: process.lua, source: file://p.lua, meta: {command: {name: go}}}
              - {name: two, kind: process.lua, source: file://p.lua, meta: {command: {name: go}}}
              - {name: dash, kind: process.lua, source: file://p.lua, meta: {command: {name: --help}}}
              - {name: unnamed, kind: process.lua, source: file://p.lua, meta: {command: {short: no name}}}
              - {name: fn, kind: function.lua, source: file://p.lua, meta: {command: {name: fn}}}
        """,
        "p.lua": "return function() end",
    })
    code, _, err = await run_cli("check", str(project))
    assert code == 1, err
    assert "error: _index.yaml:4 app:two meta.command.name: duplicate command name 'go'; app:one " \
           "(_index.yaml:3) has it already" in err
    assert "error: _index.yaml:5 app:dash meta.command.name: command name '--help' starts with '-'" in err
    assert "warning: _index.yaml:6 app:unnamed meta.command.name: meta.command needs a name" in err
    assert "warning: _index.yaml:7 app:fn meta.command: meta.command is read on process.lua entries only" in err
    code, _, err = await run_cli("run", str(project), "--list")
    assert code == 2 and "duplicate command name 'go'" in err and "nothing was started" in err
