"""What the commands share: exit statuses, loading configuration and the project,
talking to a running cluster, and printing results."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.aio.client import Client as NatsClient

from moonwire.broker import BrokerUnavailable, Subjects, connect
from moonwire.lua import Outcome

from ..project import ConfigError, Project, ProjectInvalid, ResolvedConfig, load_config, load_project
from ..servers import recorded_nats_url
from ._logging import setup_logging
from ._parsing import config_flags

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

T = TypeVar("T")

log = logging.getLogger("moonwire")

_LEVELS = ["debug", "info", "warning", "error"]


def log_levels(resolved: ResolvedConfig, verbose: int, *, quiet: bool) -> tuple[str, str]:
    """``(level, loud)``: the level to log at, and the level the configuration and ``-v``
    ask for before ``quiet`` raises it to WARNING.

    ``quiet`` is for a command whose stdout is its answer: the node's INFO lines would
    bury it. ``-v`` or an explicit ``--log-level``/``--set log.level`` undoes it.
    """
    configured = resolved.config.log.level
    if verbose >= 2:
        loud = "debug"
    elif verbose == 1:
        loud = "debug" if configured == "debug" else "info"
    else:
        loud = configured
    explicit = verbose > 0 or resolved.sources.get("log.level", "").startswith("flag ")
    if not quiet or explicit:
        return loud, loud
    return max(loud, "warning", key=_LEVELS.index), loud


def load(args: argparse.Namespace, *, quiet: bool = False) -> tuple[ResolvedConfig, Project] | int:
    """Configuration and project, with logging set up; or an exit status after printing
    every problem."""
    if not args.project.is_dir():
        print(f"error: {args.project} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    try:
        resolved = load_config(args.project, flags=config_flags(args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    level, loud = log_levels(resolved, args.verbose, quiet=quiet)
    # The project's own Lua logs (print, logger) are its output, not the node's: they
    # stay at the level asked for even when the node is quiet.
    setup_logging(level, resolved.config.log.format, lua_level=loud, node=resolved.config.node)
    try:
        project = load_project(args.project)
    except ProjectInvalid as err:
        print_problems(err)
        return EXIT_USAGE
    return resolved, project


def print_problems(err: ProjectInvalid) -> None:
    for problem in err.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{len(err.problems)} problem(s) found; nothing was started.", file=sys.stderr)


def json_args(values: list[str]) -> list[Any]:
    """Command-line arguments as values: each JSON, else the plain string."""
    out = []
    for value in values:
        try:
            out.append(json.loads(value))
        except ValueError:
            out.append(value)
    return out


def print_outcome(outcome: Outcome) -> int:
    """The result as JSON on stdout (an error as ``{"error": ...}``, also named on
    stderr); the exit status."""
    if outcome.ok:
        print(json.dumps(outcome.value, ensure_ascii=False, default=str))
        return EXIT_OK
    assert outcome.error is not None
    print(json.dumps({"error": outcome.error.to_dict()}, ensure_ascii=False, default=str))
    print(f"error: {outcome.error.kind or 'Error'}: {outcome.error.message}", file=sys.stderr)
    return EXIT_FAILURE


def cluster_servers(resolved: ResolvedConfig) -> list[str]:
    """NATS for CLI commands: flag, environment, moonwire.yaml, else the project's embedded server."""
    if resolved.config.nats.url:
        return list(resolved.config.nats.url)
    recorded = recorded_nats_url(resolved.state_dir)
    return [recorded] if recorded else []


def _cluster(args: argparse.Namespace) -> tuple[ResolvedConfig, list[str]] | int:
    """Configuration and NATS servers for a command that talks to a running cluster."""
    try:
        resolved = load_config(args.project, flags=config_flags(args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(log_levels(resolved, args.verbose, quiet=True)[0], resolved.config.log.format)
    servers = cluster_servers(resolved)
    if not servers:
        print("error: no NATS server: pass --nats URL, set MOONWIRE_NATS_URL, or run `moonwire run` in the "
              f"project folder ({resolved.project_dir})", file=sys.stderr)
        return EXIT_FAILURE
    return resolved, servers


class _Denied(Exception):
    """The server refused this identity a subject the command needs."""


def talk(args: argparse.Namespace, work: Callable[[NatsClient, Subjects], Awaitable[T]]) -> T | int:
    """Connect to the cluster, run ``work``, disconnect: its result, or an exit status.

    A publish the server refuses to this identity (its NATS permissions) ends the
    command at once with that refusal, rather than after the request's timeout."""
    cluster = _cluster(args)
    if isinstance(cluster, int):
        return cluster
    resolved, servers = cluster

    async def talk() -> T:
        denied: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_denied(message: str) -> None:
            if not denied.done():
                denied.set_result(message)

        nc = await connect(resolved.config.connect_options(servers), on_denied=on_denied)
        try:
            working = asyncio.ensure_future(work(nc, Subjects(resolved.config.prefix)))
            await asyncio.wait({working, denied}, return_when=asyncio.FIRST_COMPLETED)
            if denied.done():  # the server's -ERR comes before the answer to anything sent after it
                working.cancel()
                await asyncio.wait({working})
                raise _Denied(denied.result())
            return working.result()
        finally:
            await nc.close()

    try:
        return asyncio.run(talk())
    except BrokerUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except _Denied as err:
        print(f"error: PermissionDenied: {err} (the NATS server does not allow this identity to do that)",
              file=sys.stderr)
        return EXIT_FAILURE


def stop_on_signals(first: Callable[[], None]) -> None:
    """On the running loop: the first SIGINT/SIGTERM calls ``first`` (an orderly stop),
    a second exits the process at once with status 130."""
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("%s received; shutting down (send it again to force an immediate exit)",
                     signal.Signals(signum).name)
            first()
        else:
            log.warning("second signal: exiting now")
            logging.shutdown()
            os._exit(EXIT_INTERRUPTED)  # embedded servers follow through the parent-death signal

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
