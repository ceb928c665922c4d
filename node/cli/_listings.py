"""Commands that list what a running cluster holds: ``ps`` (processes and running
workflows) and ``nodes`` (membership as each node sees it)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from typing import Any

from nats.aio.client import Client as NatsClient

from moonwire.broker import Subjects
from moonwire.lua import MoonwireError, Outcome

from ..processes import Survey, survey
from ._common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, talk
from ._watch import Frame, watching


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


def table(rows: list[list[str]]) -> None:
    """Print ``rows`` (the first a heading) in columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def age(seconds: float) -> str:
    """A duration as an operator reads it: ``250ms``, ``12.5s``, ``40m``, ``3.2h``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def cmd_ps(args: argparse.Namespace) -> int:
    return _listing(args, "moonwire ps", functools.partial(_ps, args))


def cmd_nodes(args: argparse.Namespace) -> int:
    return _listing(args, "moonwire nodes", functools.partial(_nodes, args))


def _listing(args: argparse.Namespace, title: str, frame: Frame) -> int:
    """Print ``frame`` once, or (``--watch``) again and again until Ctrl-C."""
    if args.redraw is None:
        return talk(args, frame)
    if args.redraw <= 0:
        print("error: --watch takes a number of seconds > 0", file=sys.stderr)
        return EXIT_USAGE
    return talk(args, lambda nc, subjects: watching(nc, subjects, frame, interval=args.redraw, title=title))


async def _ps(args: argparse.Namespace, nc: NatsClient, subjects: Subjects) -> int:
    nodes = await survey(nc, subjects, "ps", {"limit": args.limit}, node=args.target_node)
    # Workflows belong to no node: listed when the whole cluster is, once per worker.
    workers = sorted({w for a in nodes.answers.values() for w in a.get("workers", ())}
                     if args.target_node is None else ())
    answers: list[Outcome] = []
    if workers:
        # Imported here: the workflows room imports temporalio (~0.2 s of CPU), which a
        # cluster without workflow workers never needs.
        from ..workflows import running_workflows
        answers = await asyncio.gather(*(running_workflows(nc, subjects, w, args.limit) for w in workers))
    workflows: dict[str, Outcome] = dict(zip(workers, answers))
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
            rows.append([p["pid"], p["entry"], p["host"], p["state"], str(p["inbox"]), age(p["uptime"])])
        if answer.get("processes", 0) > len(answer.get("list", [])):
            rows.append([f"({answer['processes'] - len(answer['list'])} more on {node})", "", "", "", "", ""])
    for worker, outcome in workflows.items():
        if not outcome.ok:
            continue
        for w in outcome.value["list"]:
            rows.append([w["pid"], w["type"], worker, "workflow", "-", age(w["uptime"])])
        if outcome.value["workflows"] > len(outcome.value["list"]):
            rows.append([f"({outcome.value['workflows'] - len(outcome.value['list'])} more on {worker})",
                         "", "", "", "", ""])
    table(rows)
    return _print_missing(nodes, failed)


def _hosts(answer: dict[str, Any]) -> str:
    """A node's hosts, each with ``(processes/max_processes)`` when it has a limit."""
    counts = answer.get("host_processes", {})

    def one(host: str) -> str:
        count = counts.get(host) or {}
        limit = count.get("max_processes")
        return f"{host}({count['processes'] + count.get('starting', 0)}/{limit})" if limit else host

    return ",".join(one(host) for host in answer["hosts"]) or "-"


async def _nodes(args: argparse.Namespace, nc: NatsClient, subjects: Subjects) -> int:
    result = await survey(nc, subjects, "info")
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
            flap_age = peer.get("last_flap_age")
            flaps[peer["node"]] = (max(count, int(peer.get("flaps", 0))),
                                   flap_age if last is None or (flap_age is not None and flap_age < last) else last)
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
        return "-" if not count else f"{count} (last {age(last)} ago)" if last is not None else str(count)

    def believed_down(node: str) -> str:
        return "; ".join(f"down to {d['by']} for {age(d['since'])}: {d['reason']}" for d in down.get(node, []))

    rows = [["NODE", "INCARNATION", "HOSTS", "PROCESSES", "UPTIME", "HEARTBEAT", "FLAPS", "DROPPED"]]
    for node in sorted(result.answers):
        answer = result.answers[node]
        heartbeat = age(ages[node]) if node in ages else "-"
        if node in down:
            heartbeat = f"{heartbeat} ({believed_down(node)})"
        rows.append([node, answer["incarnation"], _hosts(answer), str(answer["processes"]),
                     age(answer["uptime"]), heartbeat, flapped(node), str(answer.get("dropped_to_down_nodes", 0))])
    for node in result.missing:
        heartbeat = f"{age(ages[node])} (no answer)" if node in ages else "(no answer)"
        rows.append([node, "?", "?", "?", "?", heartbeat, flapped(node), "?"])
    for node in sorted(set(down) - set(result.answers) - set(result.missing)):
        rows.append([node, "?", "?", "?", "?", believed_down(node), flapped(node), "?"])
    table(rows)
    return _print_missing(result)
