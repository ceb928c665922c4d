"""Commands that read a project here: ``run`` (a node, or one entry with ``-x``),
``check`` and ``config``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from moonwire.broker import BrokerUnavailable
from moonwire.lua import MoonwireError, Outcome, syntax_error

from .._node import Node, NodeFailed
from ..project import ConfigError, LuaEntry, ProjectInvalid, load_config, load_project
from ..servers import EmbeddedServerError
from ..workflows import TemporalUnavailable
from ._common import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, json_args, load, print_outcome,
                      print_problems)
from ._logging import setup_logging
from ._otel import install_spans
from ._parsing import config_flags

log = logging.getLogger("moonwire")


def cmd_run(args: argparse.Namespace) -> int:
    # With -x, stdout is the answer and the node only the means: its INFO lines stay away.
    loaded = load(args, quiet=bool(args.execute))
    if isinstance(loaded, int):
        return loaded
    node = Node(*loaded)
    spans = install_spans(node.name)  # OpenTelemetry, when OTEL_TRACES_EXPORTER asks (_otel.py)
    try:
        if args.execute:
            entry, *entry_args = args.execute
            return print_outcome(asyncio.run(_execute(node, entry, json_args(entry_args))))
        asyncio.run(_serve(node))
    except (BrokerUnavailable, EmbeddedServerError, TemporalUnavailable, NodeFailed) as err:
        log.error("%s", err)
        return EXIT_FAILURE
    except MoonwireError as err:  # e.g. a worker option the SDK has no equivalent for
        log.error("%s", err.message)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if spans is not None:
            spans.shutdown()  # exports what is still buffered
    return EXIT_OK


async def _execute(node: Node, entry: str, args: list[Any]) -> Outcome:
    async with node.running():
        return await node.execute(entry, args)


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
        print_problems(err)
        return EXIT_FAILURE
    for warning in project.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    # The Lua sources compile (typed Lua included), as the node would compile them.
    broken = 0
    for entry in sorted(project.entries.values(), key=lambda e: e.id):
        if isinstance(entry, LuaEntry):
            chunkname = str(entry.source.relative_to(project.root))
            problem = syntax_error(entry.source.read_bytes(), chunkname)
            if problem is not None:
                print(f"error: {entry.id}: syntax error: {problem}", file=sys.stderr)
                broken += 1
    if broken:
        print(f"{broken} problem(s) found.", file=sys.stderr)
        return EXIT_FAILURE
    if args.strict and project.warnings:
        print(f"{len(project.warnings)} warning(s) found; --strict makes them errors.", file=sys.stderr)
        return EXIT_FAILURE
    kinds: dict[str, int] = {}
    for entry in project.entries.values():
        kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "no entries"
    print(f"ok: {len(project.entries)} entries ({summary})")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    try:
        resolved = load_config(args.project, flags=config_flags(args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    rows = resolved.describe()
    width = max(len(key) for key, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    for key, value, source in rows:
        print(f"{key:<{width}}  {value:<{value_width}}  ({source})")
    return EXIT_OK
