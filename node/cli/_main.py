"""``main``: parse the line, run the command, end the process."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from ._cluster_commands import cmd_call, cmd_send, cmd_spawn, cmd_workflow_query, cmd_workflow_show, cmd_workflow_update
from ._dlq import cmd_dlq
from ._listings import cmd_nodes, cmd_ps
from ._node_commands import cmd_check, cmd_config, cmd_run
from ._parsing import parse_args
from ._test_command import cmd_test
from ._top import cmd_top

_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "test": cmd_test, "check": cmd_check, "config": cmd_config, "call": cmd_call, "send": cmd_send,
    "spawn": cmd_spawn, "ps": cmd_ps, "nodes": cmd_nodes, "workflow show": cmd_workflow_show,
    "top": cmd_top, "dlq": cmd_dlq,
    "workflow update": cmd_workflow_update, "workflow query": cmd_workflow_query,
}


def main(argv: list[str] | None = None) -> NoReturn:
    # A crash in native code (lupa, Temporal's core) prints every thread's Python stack
    # instead of dying silently with SIGSEGV.
    faulthandler.enable()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    _exit(_HANDLERS[args.command](args))


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
