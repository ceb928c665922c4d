"""Commands that read a project here: ``run`` (a node; or one entry with ``-x``, or a
command, to completion: ``_commands_run.py``), ``check`` and ``config``."""

from __future__ import annotations

import argparse
import logging
import sys

from moonwire.broker import BrokerUnavailable
from moonwire.lua import MoonwireError, syntax_error

from .._loop import LoopUnavailable, run_on
from .._node import Node, NodeFailed
from ..project import ConfigError, LuaEntry, ProjectInvalid, load_config, load_project
from ..servers import EmbeddedServerError
from ..telemetry import MetricsUnavailable
from ..workflows import TemporalUnavailable
from ._commands_run import cmd_list, run_to_completion, target, usage_problem
from ._common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, load, print_problems, stop_on_signals
from ._logging import setup_logging
from ._otel import install_spans
from ._parsing import config_flags

log = logging.getLogger("moonwire")


def cmd_run(args: argparse.Namespace) -> int:
    if (problem := usage_problem(args)) is not None:
        return problem
    if args.list_commands:
        return cmd_list(args)
    # With -x or a command, stdout is the answer and the node only the means: its INFO lines stay away.
    loaded = load(args, quiet=bool(args.execute or args.run_command))
    if isinstance(loaded, int):
        return loaded
    what = target(args, loaded[1])
    if isinstance(what, int):
        return what
    node = Node(*loaded)
    spans = install_spans(node.name)  # OpenTelemetry, when OTEL_TRACES_EXPORTER asks (_otel.py)
    try:
        if what is not None:
            return run_to_completion(node, what)
        run_on(node.config.loop, _serve(node))
    except (BrokerUnavailable, EmbeddedServerError, TemporalUnavailable, NodeFailed, MetricsUnavailable,
            LoopUnavailable) as err:
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


async def _serve(node: Node) -> None:
    stop_on_signals(node.request_stop)
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
