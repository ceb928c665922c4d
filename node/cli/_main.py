"""``main``: parse the line, run the command, end the process."""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from ._parsing import parse_args

_HANDLERS: dict[str, tuple[str, str]] = {
    "run": ("_node_commands", "cmd_run"), "check": ("_node_commands", "cmd_check"),
    "config": ("_node_commands", "cmd_config"), "test": ("_test_command", "cmd_test"),
    "call": ("_cluster_commands", "cmd_call"), "send": ("_cluster_commands", "cmd_send"),
    "spawn": ("_cluster_commands", "cmd_spawn"), "workflow show": ("_cluster_commands", "cmd_workflow_show"),
    "workflow update": ("_cluster_commands", "cmd_workflow_update"),
    "workflow query": ("_cluster_commands", "cmd_workflow_query"),
    "ps": ("_listings", "cmd_ps"), "nodes": ("_listings", "cmd_nodes"), "top": ("_top", "cmd_top"), "dlq": ("_dlq", "cmd_dlq"),
}
"""Each command's module and function. Only the chosen command's module is imported: the
node's (``run``, ``test``) pulls in Temporal's SDK and the Lua runtime, about 0.6 s of CPU
that ``moonwire --version`` or ``moonwire call`` need not pay."""


def main(argv: list[str] | None = None) -> NoReturn:
    # A crash in native code (lupa, Temporal's core) prints every thread's Python stack
    # instead of dying silently with SIGSEGV.
    faulthandler.enable()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    module, function = _HANDLERS[args.command]
    handler: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(f".{module}", __package__), function)
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
