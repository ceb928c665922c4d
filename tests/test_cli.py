"""The command line people type: options anywhere on the line, global options before or
after the command's name, ``--version``, and ``run -x`` whose stdout is only the result.

Most cases run the real ``moonwire`` binary against a NATS URL nobody listens on: the
command got past parsing, and read the URL where it stood, when it says it cannot
connect there (a parsing failure exits 2 with a usage message instead).
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from moonwire.node.cli._parsing import parse_args
from support import run_cli, write_project

NOBODY = "nats://127.0.0.1:1"
"""A NATS URL that refuses connections at once."""


def assert_reached_nats(code: int, err: str) -> None:
    assert "usage:" not in err and "unrecognized arguments" not in err, err
    assert (code, f"cannot connect to NATS at {NOBODY}" in err) == (1, True), err


# ------------------------------------------------------------ options after positionals

async def test_spawn_options_before_between_and_after_positionals(tmp_path: Path) -> None:
    for argv in (["spawn", "app:x", "--host", "app:h", "ARG", "--nats", NOBODY],
                 ["spawn", "--nats", NOBODY, "app:x", "ARG", "--host", "app:h"]):
        code, _, err = await run_cli(*argv, cwd=tmp_path)
        assert_reached_nats(code, err)


async def test_workflow_show_takes_options_around_both_names(tmp_path: Path) -> None:
    pid = "{@app:worker|app:order-1}"
    for argv in (["workflow", "--nats", NOBODY, "show", pid],
                 ["workflow", "show", "--json", pid, "--nats", NOBODY]):
        code, _, err = await run_cli(*argv, cwd=tmp_path)
        assert_reached_nats(code, err)


async def test_call_and_send_arguments_after_options(tmp_path: Path) -> None:
    for argv in (["call", "app:add", "1", "--timeout", "5s", "2", "--nats", NOBODY],
                 ["send", "{n1@app:host|x-1}", "--nats", NOBODY, "topic", "payload"]):
        code, _, err = await run_cli(*argv, cwd=tmp_path)
        assert_reached_nats(code, err)


def test_parse_puts_each_word_where_it_belongs() -> None:
    args = parse_args(["spawn", "app:x", "--host", "app:h", "ARG", "--node", "n2", "2"])
    assert (args.command, args.entry, args.args, args.host, args.target_node) == ("spawn", "app:x", ["ARG", "2"],
                                                                                  "app:h", "n2")
    args = parse_args(["--json", "workflow", "--nats", "A", "show", "P"])
    assert (args.command, args.pid, args.json, args.nats) == ("workflow show", "P", True, "A")
    args = parse_args(["run", "-x", "app:main", "20", "-5", "--node", "px", "--project", "p", "-v"])
    assert (args.command, args.execute, args.node, args.project, args.verbose) == ("run", ["app:main", "20", "-5"],
                                                                                   "px", Path("p"), 1)
    args = parse_args(["-v", "--set", "a=1", "run", "p", "-v", "--set", "b=2"])
    assert (args.project, args.verbose, args.set, args.execute) == (Path("p"), 2, ["a=1", "b=2"], None)


# ------------------------------------------------------------ global options

async def test_global_options_before_and_after_the_command(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", {"moonwire.yaml": "prefix: fromfile\n"})
    for argv in (["--nats", "nats://a:1", "--project", str(project), "config", "--prefix", "t7"],
                 ["config", "--prefix", "t7", "--nats", "nats://a:1", "--project", str(project)]):
        code, out, err = await run_cli(*argv, cwd=tmp_path)
        assert code == 0, err
        rows = {line.split()[0]: line for line in out.splitlines()}
        assert "nats://a:1" in rows["nats.url"] and "(flag --nats)" in rows["nats.url"]
        assert "t7" in rows["prefix"]  # moonwire.yaml was read: --project found it, and the flag beat it
    code, out, err = await run_cli("--set", "prefix=t8", "config", "--project", str(project), "--set", "node=n8",
                                   cwd=tmp_path)
    assert code == 0, err
    assert "(flag --set prefix)" in out and "(flag --set node)" in out


async def test_cluster_commands_take_the_global_options_first(tmp_path: Path) -> None:
    for argv in (["--nats", NOBODY, "ps", "--json"], ["--json", "--nats", NOBODY, "nodes"],
                 ["-v", "--nats", NOBODY, "spawn", "app:x", "--host", "app:h"]):
        code, _, err = await run_cli(*argv, cwd=tmp_path)
        assert_reached_nats(code, err)


async def test_two_projects_are_refused(tmp_path: Path) -> None:
    code, _, err = await run_cli("check", str(tmp_path), "--project", str(tmp_path / "other"))
    assert code == 2 and "two projects given" in err, err


async def test_an_option_before_the_command_that_is_not_global_is_named(tmp_path: Path) -> None:
    code, _, err = await run_cli("--node", "n1", "ps", cwd=tmp_path)
    assert code == 2 and "--node is not a global option" in err, err


# ------------------------------------------------------------ --version

@pytest.mark.parametrize("argv", [["--version"], ["ps", "--version"]])
async def test_version(argv: list[str]) -> None:
    code, out, err = await run_cli(*argv)
    assert (code, out.strip()) == (0, f"moonwire {metadata.version('moonwire')}"), err


# ------------------------------------------------------------ run -x output

RUN_X_PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: main, kind: process.lua, source: file://main.lua, method: main}
    """,
    "main.lua": "return { main = function(a, b) print('adding') return { sum = a + b } end }",
}


def info_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if " INFO " in line]


async def test_run_x_prints_only_the_result_and_no_node_logs(tmp_path: Path, nats_server) -> None:
    project = write_project(tmp_path / "p", RUN_X_PROJECT)
    # Global options first, the project after the entry's arguments through --project.
    code, out, err = await run_cli("--nats", nats_server.address, "run", "-x", "app:main", "20", "22",
                                   "--project", str(project), "--node", "rx1")
    assert code == 0, err
    assert json.loads(out) == {"sum": 42} and out.count("\n") == 1
    # The project's own print stays visible (on stderr): it is the program's output, not the node's.
    assert [line.split(": ", 1)[1] for line in info_lines(err)] == ["[app:main] adding"], err


async def test_run_x_with_v_shows_the_node_logs(tmp_path: Path, nats_server) -> None:
    project = write_project(tmp_path / "p", RUN_X_PROJECT)
    code, out, err = await run_cli("run", str(project), "-x", "app:main", "1", "2", "--node", "rx2",
                                   "--nats", nats_server.address, "-v")
    assert code == 0, err
    assert json.loads(out) == {"sum": 3}
    assert any("moonwire.node" in line and "rx2" in line for line in info_lines(err)), err


def test_test_takes_its_options_around_the_folder() -> None:
    args = parse_args(["test", "-k", "adds", "proj", "--timeout", "5s", "-k", "subs", "--nats", NOBODY])
    assert (args.command, args.project, args.keyword, args.timeout) == ("test", Path("proj"), ["adds", "subs"], "5s")
    assert parse_args(["test"]).project == Path(".") and parse_args(["test"]).timeout == "60s"
    assert parse_args(["check", "--strict", "proj"]).strict is True
