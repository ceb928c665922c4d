"""Commands that act on a running cluster from outside it: ``call`` a function, ``send``
a message, ``spawn`` a process or workflow, ``workflow show|update|query``."""

from __future__ import annotations

import argparse
import json
import sys

from nats.aio.client import Client as NatsClient

from moonwire.broker import Pid, Subjects
from moonwire.lua import SECOND, Message, MoonwireError, SpawnRequest, parse_duration

from ..cluster import name_problem
from ..functions import call_function
from ..processes import encode as encode_message
from ..processes import spawn_from_outside
# ..workflows is imported inside the workflow commands: it imports temporalio (~0.2 s of
# CPU), which call, send and spawn do not need.
from ._common import EXIT_OK, EXIT_USAGE, json_args, print_outcome, talk


def cmd_call(args: argparse.Namespace) -> int:
    try:
        timeout = parse_duration(args.timeout) / SECOND
    except ValueError as err:
        print(f"error: --timeout: {err}", file=sys.stderr)
        return EXIT_USAGE
    outcome = talk(args, lambda nc, subjects: call_function(nc, subjects, args.function, json_args(args.args),
                                                            {}, timeout))
    return outcome if isinstance(outcome, int) else print_outcome(outcome)


def cmd_send(args: argparse.Namespace) -> int:
    pid = Pid.parse(args.pid)
    if pid is None and (problem := name_problem(args.pid)) is not None:
        print(f"error: {args.pid!r} is neither a PID ({{node@host|uid}}) nor a cluster name: {problem}",
              file=sys.stderr)
        return EXIT_USAGE
    if not args.topic or args.topic.startswith("@"):
        print("error: the topic must be non-empty and must not start with @", file=sys.stderr)
        return EXIT_USAGE
    body, headers = encode_message(Message(args.topic, json_args(args.payloads)))

    async def send(nc: NatsClient, subjects: Subjects) -> int:
        if pid is None:  # a cluster name: one node of the cluster hands it to the holder
            subject = subjects.named(args.pid)
        elif pid.is_workflow:
            subject = subjects.workflow(pid.host, pid.uid)
        else:
            subject = subjects.inbox(pid.node, pid.uid)
        await nc.publish(subject, body, headers=headers)
        await nc.flush()
        return EXIT_OK

    return talk(args, send)


def cmd_spawn(args: argparse.Namespace) -> int:
    request = SpawnRequest(args.entry, args.host, json_args(args.args), name=args.name, scope=args.scope)
    outcome = talk(args, lambda nc, subjects: spawn_from_outside(nc, subjects, request, args.target_node))
    if isinstance(outcome, int):
        return outcome
    if not outcome.ok:
        return print_outcome(outcome)
    print(outcome.value)
    return EXIT_OK


def _workflow_pid(text: str) -> Pid | None:
    pid = Pid.parse(text)
    if pid is None or not pid.is_workflow:
        print(f"error: {text!r} is not a workflow PID (expected {{@worker|workflow id}})", file=sys.stderr)
        return None
    return pid


def cmd_workflow_update(args: argparse.Namespace) -> int:
    pid = _workflow_pid(args.pid)
    if pid is None:
        return EXIT_USAGE
    if not args.name or args.name.startswith("@"):
        print("error: the update's name must be non-empty and must not start with @", file=sys.stderr)
        return EXIT_USAGE
    try:
        timeout = parse_duration(args.timeout) / SECOND
    except ValueError as err:
        print(f"error: --timeout: {err}", file=sys.stderr)
        return EXIT_USAGE
    from ..workflows import workflow_update
    outcome = talk(args, lambda nc, subjects: workflow_update(nc, subjects, pid, args.name, json_args(args.args),
                                                              timeout))
    return outcome if isinstance(outcome, int) else print_outcome(outcome)


def cmd_workflow_query(args: argparse.Namespace) -> int:
    pid = _workflow_pid(args.pid)
    if pid is None:
        return EXIT_USAGE
    from ..workflows import workflow_query
    outcome = talk(args, lambda nc, subjects: workflow_query(nc, subjects, pid, args.name))
    return outcome if isinstance(outcome, int) else print_outcome(outcome)


def cmd_workflow_show(args: argparse.Namespace) -> int:
    pid = _workflow_pid(args.pid)
    if pid is None:
        return EXIT_USAGE
    from ..workflows import workflow_status
    outcome = talk(args, lambda nc, subjects: workflow_status(nc, subjects, pid))
    if isinstance(outcome, int):
        return outcome
    if args.json or not outcome.ok:
        return print_outcome(outcome)
    for key, value in outcome.value.items():
        shown = value.to_dict() if isinstance(value, MoonwireError) else value
        print(f"{key + ':':<16}{json.dumps(shown, ensure_ascii=False) if not isinstance(shown, str) else shown}")
    return EXIT_OK
