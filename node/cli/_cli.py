"""The ``moonwire`` command."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from nats.aio.client import Client as NatsClient

from moonwire.broker import BrokerUnavailable, Pid, Subjects, connect
from moonwire.lua import SECOND, Message, MoonwireError, Outcome, SpawnRequest, parse_duration

from ..project import ConfigError, ResolvedConfig, load_config
from ..servers import EmbeddedServerError, recorded_nats_url
from ..functions import call_function
from ..processes import encode as encode_message
from ._logging import setup_logging
from .._node import Node
from ..project import Project, ProjectInvalid, load_project
from ..processes import Survey, spawn_from_outside, survey
from ..workflows import TemporalUnavailable, running_workflows, workflow_status

log = logging.getLogger("moonwire")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# flag -> configuration key
_CONFIG_FLAGS = {
    "node": "node",
    "nats": "nats.url",
    "prefix": "prefix",
    "state_dir": "state_dir",
    "shutdown_timeout": "shutdown_timeout",
    "log_level": "log.level",
    "log_format": "log.format",
}


def _config_options(parser: argparse.ArgumentParser, *, node: bool = True) -> None:
    group = parser.add_argument_group("node configuration (overrides moonwire.yaml and MOONWIRE_* variables)")
    if node:
        group.add_argument("--node", help="node name (one subject token); default: derived from the host name")
        group.add_argument("--shutdown-timeout", metavar="DURATION", help="bound on a graceful stop, e.g. 30s")
    group.add_argument("--nats", metavar="URL", help="NATS server URL(s), comma-separated; default: embedded server")
    group.add_argument("--prefix", help="subject prefix (default mw)")
    group.add_argument("--state-dir", help="state folder, relative to the project (default .moonwire)")
    group.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    group.add_argument("--log-format", choices=["console", "json"])
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="set any configuration key, e.g. --set heartbeat.interval=1s")


def _cluster_options(parser: argparse.ArgumentParser, target_node: str | None = None) -> None:
    """Options of a command that talks to a running cluster (it is not a node itself):
    ``--node`` here names a target node."""
    if target_node is not None:
        parser.add_argument("--node", dest="target_node", metavar="NODE", help=target_node)
    parser.add_argument("--project", type=Path, default=Path("."),
                        help="project whose embedded NATS server to use when no URL is configured (default: .)")
    _config_options(parser, node=False)


def _flags(args: argparse.Namespace) -> dict[str, tuple[Any, str]]:
    flags: dict[str, tuple[Any, str]] = {}
    for attr, key in _CONFIG_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            flags[key] = (value, "--" + attr.replace("_", "-"))
    for item in getattr(args, "set", []):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError([f"--set {item}: expected KEY=VALUE"])
        flags[key.strip()] = (value, f"--set {key.strip()}")
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moonwire", description="Run Lua functions, processes and workflows on a NATS-connected fleet.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a node for a project until SIGINT/SIGTERM")
    run.add_argument("project", nargs="?", default=".", type=Path, help="project folder (default: .)")
    run.add_argument("-x", dest="execute", nargs="+", metavar=("ENTRY", "ARG"),
                     help="run ENTRY to completion with the ARGs (each JSON, or a plain string), print its result "
                          "as JSON and exit (non-zero on an error result)")
    _config_options(run)

    call = commands.add_parser("call", help="call a function on the running cluster and print its result as JSON")
    call.add_argument("function", metavar="ns:name")
    call.add_argument("args", nargs="*", help="arguments, each JSON (or a plain string)")
    call.add_argument("--timeout", default="30s", metavar="DURATION")
    _cluster_options(call)

    send = commands.add_parser("send", help="send a message to a process (from outside: msg:from() is empty)")
    send.add_argument("pid", metavar="PID", help="the process, e.g. '{n1@app:host|mx1f2k-3}'")
    send.add_argument("topic")
    send.add_argument("payloads", nargs="*", metavar="PAYLOAD", help="payloads, each JSON (or a plain string)")
    _cluster_options(send)

    spawn = commands.add_parser("spawn", help="spawn a process on a node that runs its host and print its PID")
    spawn.add_argument("entry", metavar="ns:entry")
    spawn.add_argument("args", nargs="*", metavar="ARG", help="arguments, each JSON (or a plain string)")
    spawn.add_argument("--host", required=True, help="the process host, e.g. app:workers")
    _cluster_options(spawn, target_node="spawn on this node (default: any node that runs the host)")

    ps = commands.add_parser("ps", help="list the processes of every node (or of one) and the running workflows")
    ps.add_argument("--limit", type=int, default=1000,
                    help="at most this many processes per node and workflows per worker (default 1000)")
    ps.add_argument("--json", action="store_true", help="print the answers as JSON")
    _cluster_options(ps, target_node="only this node")

    show = commands.add_parser("workflow", help="inspect workflows").add_subparsers(
        dest="workflow_command", required=True, metavar="COMMAND").add_parser(
        "show", help="print a workflow's status, and its result or error once it has closed")
    show.add_argument("pid", metavar="PID", help="the workflow, e.g. '{@app:worker|app:order-1}'")
    show.add_argument("--json", action="store_true", help="print the answer as JSON")
    _cluster_options(show)

    nodes = commands.add_parser("nodes", help="list the live nodes, their hosts and heartbeat age, how often each "
                                "flapped (declared down, then heard again), sends dropped towards nodes believed down")
    nodes.add_argument("--json", action="store_true", help="print the answers as JSON")
    _cluster_options(nodes)

    check = commands.add_parser("check", help="validate a project and list every problem")
    check.add_argument("project", nargs="?", default=".", type=Path)

    config = commands.add_parser("config", help="print the effective node configuration and where each value came from")
    config.add_argument("project", nargs="?", default=".", type=Path)
    _config_options(config)
    return parser


def main(argv: list[str] | None = None) -> NoReturn:
    # A crash in native code (lupa, Temporal's core) prints every thread's Python stack
    # instead of dying silently with SIGSEGV.
    faulthandler.enable()
    args = build_parser().parse_args(argv)
    handler = {"run": cmd_run, "check": cmd_check, "config": cmd_config, "call": cmd_call,
               "send": cmd_send, "spawn": cmd_spawn, "ps": cmd_ps, "nodes": cmd_nodes,
               "workflow": cmd_workflow}[args.command]
    _exit(handler(args))


def _exit(code: int) -> NoReturn:
    """End the process without interpreter teardown, once a command has stopped what it
    started, in order.

    Temporal's core (Rust) keeps threads that take the GIL to release Python objects as
    they wind down. One doing so while the interpreter finalizes aborts the process
    ("PyGILState_Release: thread state ... must be current", runtime state: finalizing)
    after a clean shutdown: 6 exits in 240 for four workflow nodes at once, with and
    without core log forwarding. Nothing is left for teardown to do but that.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`moonwire ps | head`) has nothing to flush to
            pass
    os._exit(code)


def _load(args: argparse.Namespace) -> tuple[ResolvedConfig, Project] | int:
    """Configuration and project, or an exit status after printing every problem."""
    if not args.project.is_dir():
        print(f"error: {args.project} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    try:
        resolved = load_config(args.project, flags=_flags(args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(resolved.config.log.level, resolved.config.log.format)
    try:
        project = load_project(args.project)
    except ProjectInvalid as err:
        _print_problems(err)
        return EXIT_USAGE
    return resolved, project


def _print_problems(err: ProjectInvalid) -> None:
    for problem in err.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{len(err.problems)} problem(s) found; nothing was started.", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    if not args.project.is_dir():
        print(f"error: {args.project} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    setup_logging("error")  # warnings are printed below, once
    try:
        project = load_project(args.project)
    except ProjectInvalid as err:
        for warning in err.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        _print_problems(err)
        return EXIT_FAILURE
    for warning in project.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    kinds: dict[str, int] = {}
    for entry in project.entries.values():
        kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "no entries"
    print(f"ok: {len(project.entries)} entries ({summary})")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    try:
        resolved = load_config(args.project, flags=_flags(args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    rows = resolved.describe()
    width = max(len(key) for key, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    for key, value, source in rows:
        print(f"{key:<{width}}  {value:<{value_width}}  ({source})")
    return EXIT_OK


def _json_args(values: list[str]) -> list[Any]:
    out = []
    for value in values:
        try:
            out.append(json.loads(value))
        except ValueError:
            out.append(value)
    return out


def _print_outcome(outcome: Outcome) -> int:
    if outcome.ok:
        print(json.dumps(outcome.value, ensure_ascii=False, default=str))
        return EXIT_OK
    assert outcome.error is not None
    print(json.dumps({"error": outcome.error.to_dict()}, ensure_ascii=False, default=str))
    print(f"error: {outcome.error.kind or 'Error'}: {outcome.error.message}", file=sys.stderr)
    return EXIT_FAILURE


def cmd_run(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    node = Node(*loaded)
    try:
        if args.execute:
            entry, *entry_args = args.execute
            return _print_outcome(asyncio.run(_execute(node, entry, _json_args(entry_args))))
        asyncio.run(_serve(node))
    except (BrokerUnavailable, EmbeddedServerError, TemporalUnavailable) as err:
        log.error("%s", err)
        return EXIT_FAILURE
    except MoonwireError as err:  # e.g. a worker option the SDK has no equivalent for
        log.error("%s", err.message)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


async def _execute(node: Node, entry: str, args: list[Any]) -> Outcome:
    async with node.running():
        return await node.execute(entry, args)


def cluster_servers(resolved: ResolvedConfig) -> list[str]:
    """NATS for CLI commands: flag, environment, moonwire.yaml, else the project's embedded server."""
    if resolved.config.nats.url:
        return list(resolved.config.nats.url)
    recorded = recorded_nats_url(resolved.state_dir)
    return [recorded] if recorded else []


def _cluster(args: argparse.Namespace) -> tuple[ResolvedConfig, list[str]] | int:
    """Configuration and NATS servers for a command that talks to a running cluster."""
    try:
        resolved = load_config(args.project, flags=_flags(args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging("warning", resolved.config.log.format)
    servers = cluster_servers(resolved)
    if not servers:
        print("error: no NATS server: pass --nats URL, set MOONWIRE_NATS_URL, or run `moonwire run` in the "
              f"project folder ({resolved.project_dir})", file=sys.stderr)
        return EXIT_FAILURE
    return resolved, servers


T = TypeVar("T")


def _talk(args: argparse.Namespace, work: Callable[[NatsClient, Subjects], Awaitable[T]]) -> T | int:
    """Connect to the cluster, run ``work``, disconnect: its result, or an exit status."""
    cluster = _cluster(args)
    if isinstance(cluster, int):
        return cluster
    resolved, servers = cluster

    async def talk() -> T:
        nc = await connect(resolved.config.connect_options(servers))
        try:
            return await work(nc, Subjects(resolved.config.prefix))
        finally:
            await nc.close()

    try:
        return asyncio.run(talk())
    except BrokerUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_call(args: argparse.Namespace) -> int:
    try:
        timeout = parse_duration(args.timeout) / SECOND
    except ValueError as err:
        print(f"error: --timeout: {err}", file=sys.stderr)
        return EXIT_USAGE
    outcome = _talk(args, lambda nc, subjects: call_function(nc, subjects, args.function, _json_args(args.args),
                                                             {}, timeout))
    return outcome if isinstance(outcome, int) else _print_outcome(outcome)


def cmd_send(args: argparse.Namespace) -> int:
    pid = Pid.parse(args.pid)
    if pid is None:
        print(f"error: {args.pid!r} is not a PID (expected {{node@host|uid}})", file=sys.stderr)
        return EXIT_USAGE
    if not args.topic or args.topic.startswith("@"):
        print("error: the topic must be non-empty and must not start with @", file=sys.stderr)
        return EXIT_USAGE
    body, headers = encode_message(Message(args.topic, _json_args(args.payloads)))

    async def send(nc: NatsClient, subjects: Subjects) -> int:
        subject = subjects.workflow(pid.host, pid.uid) if pid.is_workflow else subjects.inbox(pid.node, pid.uid)
        await nc.publish(subject, body, headers=headers)
        await nc.flush()
        return EXIT_OK

    return _talk(args, send)


def cmd_spawn(args: argparse.Namespace) -> int:
    request = SpawnRequest(args.entry, args.host, _json_args(args.args))
    outcome = _talk(args, lambda nc, subjects: spawn_from_outside(nc, subjects, request, args.target_node))
    if isinstance(outcome, int):
        return outcome
    if not outcome.ok:
        return _print_outcome(outcome)
    print(outcome.value)
    return EXIT_OK


def _print_missing(result: Survey, workers: dict[str, MoonwireError] | None = None) -> int:
    """Name the nodes that did not answer (and the workers whose workflows could not be
    listed); the exit status."""
    if not result.answers:
        print("error: no node answered within a second", file=sys.stderr)
        return EXIT_FAILURE
    for worker, error in (workers or {}).items():
        print(f"error: workflows of worker {worker} not listed: {error.message}", file=sys.stderr)
    if result.missing:
        print(f"error: no answer from node(s): {', '.join(result.missing)}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_FAILURE if workers else EXIT_OK


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _age(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@dataclass
class _Listing:
    """What ``moonwire ps`` gathers: the nodes' processes and the workers' running workflows."""

    nodes: Survey
    workflows: dict[str, Outcome]


def cmd_ps(args: argparse.Namespace) -> int:
    async def gather(nc: NatsClient, subjects: Subjects) -> _Listing:
        nodes = await survey(nc, subjects, "ps", {"limit": args.limit}, node=args.target_node)
        # Workflows belong to no node: listed when the whole cluster is, once per worker.
        workers = sorted({w for a in nodes.answers.values() for w in a.get("workers", ())}
                         if args.target_node is None else ())
        answers = await asyncio.gather(*(running_workflows(nc, subjects, w, args.limit) for w in workers))
        return _Listing(nodes, dict(zip(workers, answers)))

    result = _talk(args, gather)
    if isinstance(result, int):
        return result
    nodes, workflows = result.nodes, result.workflows
    failed = {w: o.error for w, o in workflows.items() if o.error is not None}
    if args.json:
        print(json.dumps({"nodes": nodes.answers, "missing": nodes.missing,
                          "workflows": {w: o.value for w, o in workflows.items() if o.ok},
                          "workflow_errors": {w: e.to_dict() for w, e in failed.items()}},
                         default=str))
        return _print_missing(nodes, failed)
    rows = [["PID", "ENTRY", "HOST", "STATE", "INBOX", "UPTIME"]]
    for node in sorted(nodes.answers):
        answer = nodes.answers[node]
        for p in answer.get("list", []):
            rows.append([p["pid"], p["entry"], p["host"], p["state"], str(p["inbox"]), _age(p["uptime"])])
        if answer.get("processes", 0) > len(answer.get("list", [])):
            rows.append([f"({answer['processes'] - len(answer['list'])} more on {node})", "", "", "", "", ""])
    for worker, outcome in workflows.items():
        if not outcome.ok:
            continue
        for w in outcome.value["list"]:
            rows.append([w["pid"], w["type"], worker, "workflow", "-", _age(w["uptime"])])
        if outcome.value["workflows"] > len(outcome.value["list"]):
            rows.append([f"({outcome.value['workflows'] - len(outcome.value['list'])} more on {worker})",
                         "", "", "", "", ""])
    _table(rows)
    return _print_missing(nodes, failed)


def cmd_workflow(args: argparse.Namespace) -> int:
    pid = Pid.parse(args.pid)
    if pid is None or not pid.is_workflow:
        print(f"error: {args.pid!r} is not a workflow PID (expected {{@worker|workflow id}})", file=sys.stderr)
        return EXIT_USAGE
    outcome = _talk(args, lambda nc, subjects: workflow_status(nc, subjects, pid))
    if isinstance(outcome, int):
        return outcome
    if args.json or not outcome.ok:
        return _print_outcome(outcome)
    for key, value in outcome.value.items():
        shown = value.to_dict() if isinstance(value, MoonwireError) else value
        print(f"{key + ':':<16}{json.dumps(shown, ensure_ascii=False) if not isinstance(shown, str) else shown}")
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    result = _talk(args, lambda nc, subjects: survey(nc, subjects, "info"))
    if isinstance(result, int):
        return result
    # What the answering nodes say of each node: its freshest heartbeat age, its flaps
    # (the most any one peer counted; when the latest was), and who believes it down.
    ages: dict[str, float] = {}
    flaps: dict[str, tuple[int, float | None]] = {}
    down: dict[str, list[dict[str, Any]]] = {}
    for observer, answer in result.answers.items():
        for peer in answer.get("peers", []):
            ages[peer["node"]] = min(ages.get(peer["node"], float("inf")), float(peer["age"]))
        for peer in [*answer.get("peers", []), *answer.get("down", [])]:
            count, last = flaps.get(peer["node"], (0, None))
            age = peer.get("last_flap_age")
            flaps[peer["node"]] = (max(count, int(peer.get("flaps", 0))),
                                   age if last is None or (age is not None and age < last) else last)
        for peer in answer.get("down", []):
            down.setdefault(peer["node"], []).append({"by": observer, "since": peer["since"],
                                                      "reason": peer["reason"]})
    if args.json:
        for node, answer in result.answers.items():
            answer["heartbeat_age"] = ages.get(node)
            answer["flaps"], answer["last_flap_age"] = flaps.get(node, (0, None))
            answer["believed_down_by"] = down.get(node, [])
        believed_down = {node: {"believed_down_by": by, "flaps": flaps.get(node, (0, None))[0]}
                         for node, by in down.items() if node not in result.answers}
        print(json.dumps({"nodes": result.answers, "missing": result.missing, "down": believed_down}, default=str))
        return _print_missing(result)

    def flapped(node: str) -> str:
        count, last = flaps.get(node, (0, None))
        return "-" if not count else f"{count} (last {_age(last)} ago)" if last is not None else str(count)

    def believed_down(node: str) -> str:
        return "; ".join(f"down to {d['by']} for {_age(d['since'])}: {d['reason']}" for d in down.get(node, []))

    rows = [["NODE", "INCARNATION", "HOSTS", "PROCESSES", "UPTIME", "HEARTBEAT", "FLAPS", "DROPPED"]]
    for node in sorted(result.answers):
        answer = result.answers[node]
        heartbeat = _age(ages[node]) if node in ages else "-"
        if node in down:
            heartbeat = f"{heartbeat} ({believed_down(node)})"
        rows.append([node, answer["incarnation"], ",".join(answer["hosts"]) or "-", str(answer["processes"]),
                     _age(answer["uptime"]), heartbeat, flapped(node), str(answer.get("dropped_to_down_nodes", 0))])
    for node in result.missing:
        heartbeat = f"{_age(ages[node])} (no answer)" if node in ages else "(no answer)"
        rows.append([node, "?", "?", "?", "?", heartbeat, flapped(node), "?"])
    for node in sorted(set(down) - set(result.answers) - set(result.missing)):
        rows.append([node, "?", "?", "?", "?", believed_down(node), flapped(node), "?"])
    _table(rows)
    return _print_missing(result)


async def _serve(node: Node) -> None:
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("%s received; shutting down (send it again to force an immediate exit)",
                     signal.Signals(signum).name)
            node.request_stop()
        else:
            log.warning("second signal: exiting now")
            logging.shutdown()
            os._exit(EXIT_INTERRUPTED)  # embedded servers follow through the parent-death signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    await node.serve()
