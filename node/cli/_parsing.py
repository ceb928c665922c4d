"""The command line's grammar: every command, its options, and where they may stand.

Options may come before, between or after positionals, and the global options also
before a command's name: ``moonwire --nats URL spawn app:x ARG --host app:h``.

argparse cannot do this with subparsers. A subparser parses with ``parse_known_args``,
which fills the positionals from the first run of them and leaves the rest
unrecognized (``spawn app:x --host h ARG``: ``ARG``); ``parse_intermixed_args`` fixes
that but refuses a parser that has subparsers. So parsing runs in stages: a
:class:`CommandGroup` (``moonwire``, ``moonwire workflow``) knows only the global options
and its commands' names, and hands the rest of the line to the named command, whose own
parser reads it intermixed. Every parser carries the global options, and values land in
one namespace, where a default never overwrites what an earlier stage read.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moonwire import __version__

# configuration flag (namespace attribute) -> configuration key
_CONFIG_FLAGS = {
    "node": "node",
    "nats": "nats.url",
    "creds": "nats.creds_file",
    "prefix": "prefix",
    "state_dir": "state_dir",
    "shutdown_timeout": "shutdown_timeout",
    "log_level": "log.level",
    "log_format": "log.format",
    "metrics": "metrics.listen",
    "watch": "watch",
    "loop": "loop",
}


def global_options(parser: argparse.ArgumentParser) -> None:
    """Options every command accepts, before or after its name."""
    group = parser.add_argument_group("global options (before or after the command's name; the configuration "
                                      "flags override moonwire.yaml and MOONWIRE_* variables)")
    group.add_argument("--version", action="version", version=f"moonwire {__version__}")
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="show INFO logs where they are hidden by default (-x, cluster commands); -vv: DEBUG")
    group.add_argument("--project", type=Path, metavar="DIR",
                       help="project folder, for its moonwire.yaml and its embedded NATS server (default: .)")
    group.add_argument("--nats", metavar="URL", help="NATS server URL(s), comma-separated; default: embedded server")
    group.add_argument("--creds", metavar="FILE", help="NATS credentials file (.creds: JWT and nkey seed); other "
                       "credentials: --set nats.nkeys_seed=FILE, nats.user/nats.password, nats.tls.* (docs/deploy.md)")
    group.add_argument("--prefix", help="subject prefix (default mw)")
    group.add_argument("--state-dir", metavar="DIR", help="state folder, relative to the project (default .moonwire)")
    group.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    group.add_argument("--log-format", choices=["console", "json"])
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="set any configuration key, e.g. --set heartbeat.interval=1s")


def _node_options(parser: argparse.ArgumentParser) -> None:
    """Options of a command that configures a node of its own (``--node`` names it)."""
    group = parser.add_argument_group("node options")
    group.add_argument("--node", help="node name (one subject token); default: derived from the host name")
    group.add_argument("--shutdown-timeout", metavar="DURATION", help="bound on a graceful stop, e.g. 30s")
    group.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics "
                       "(and /healthz); default: off")
    group.add_argument("--loop", choices=["auto", "asyncio", "uvloop"],
                       help="event loop (default auto: uvloop when installed on Linux, else asyncio)")


def _project_argument(parser: argparse.ArgumentParser) -> None:
    # The positional of `run`, `test`, `check` and `config`, kept apart from --project so that
    # giving both differently is an error, not a silent choice.
    parser.add_argument("project_arg", nargs="?", metavar="DIR", help="project folder (default: .)")


class CommandGroup:
    """``PROG [global options] COMMAND ...``: reads the options in front of the command's
    name, then hands the rest of the line to that command."""

    def __init__(self, prog: str, description: str) -> None:
        self.prog = prog
        self.commands: dict[str, argparse.ArgumentParser | CommandGroup] = {}
        self._listing: list[str] = []
        self.parser = argparse.ArgumentParser(prog=prog, usage="%(prog)s [-h] [global options] COMMAND ...",
                                              description=description,
                                              formatter_class=argparse.RawDescriptionHelpFormatter)
        self.parser.add_argument("subcommand", metavar="COMMAND",
                                 help="one of the commands below; `COMMAND -h` for its options")
        rest = self.parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        rest.required = False  # else a bare `moonwire` also complains about it
        global_options(self.parser)

    def command(self, name: str, help: str) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=f"{self.prog} {name}", description=help)
        global_options(parser)
        self._add(name, help, parser)
        return parser

    def group(self, name: str, help: str) -> CommandGroup:
        group = CommandGroup(f"{self.prog} {name}", help)
        self._add(name, help, group)
        return group

    def _add(self, name: str, help: str, target: argparse.ArgumentParser | CommandGroup) -> None:
        self.commands[name] = target
        self._listing.append(f"  {name:<10}{help}")
        self.parser.epilog = "commands:\n" + "\n".join(self._listing)

    def parse(self, argv: Sequence[str], namespace: argparse.Namespace, path: str = "") -> argparse.Namespace:
        """Parse ``argv`` into ``namespace``; ``namespace.command`` becomes the command's
        full name (``"workflow show"``)."""
        namespace, unknown = self.parser.parse_known_args(argv, namespace)
        name: str = vars(namespace).pop("subcommand")
        rest: list[str] = vars(namespace).pop("rest")
        target = self.commands.get(name)
        if target is None:
            hint = f"; {unknown[-1]} is not a global option: put it after the command's name" if unknown else ""
            self.parser.error(f"unknown command {name!r} (choose from {', '.join(self.commands)}){hint}")
        path = f"{path} {name}".strip()
        # Options before the name that this stage does not know are the command's own
        # (`moonwire --json ps`): they go to it, still ahead of what followed the name.
        if isinstance(target, CommandGroup):
            return target.parse([*unknown, *rest], namespace, path)
        namespace = target.parse_intermixed_args([*unknown, *rest], namespace)
        namespace.command = path
        _settle_project(target, namespace)
        return namespace


def _settle_project(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    positional = vars(args).pop("project_arg", None)
    if positional is not None and args.project is not None and hasattr(args, "run_command"):
        # `run --project DIR NAME ARG...`: the folder is given, so the first word is the command.
        args.command_args = [args.run_command, *args.command_args] if args.run_command is not None else []
        args.run_command, positional = positional, None
    if positional is not None:
        positional = Path(positional)
        if args.project is not None and args.project != positional:
            parser.error(f"two projects given: {positional} and --project {args.project}")
        args.project = positional
    if args.project is None:
        args.project = Path(".")


def build_parser() -> CommandGroup:
    top = CommandGroup("moonwire", "Run Lua functions, processes and workflows on a NATS-connected fleet.")

    run = top.command("run", "run a node for a project until SIGINT/SIGTERM, run one entry with -x, or run one of "
                      "the project's commands (meta.command)")
    _project_argument(run)
    # `run DIR NAME ARG...`: a command (node/cli/_commands_run.py). DIR comes first when NAME is given.
    run.add_argument("run_command", nargs="?", metavar="COMMAND",
                     help="run the process entry whose meta.command.name is COMMAND on the terminal host, with each "
                          "ARG as a string argument, print its result as -x does and exit with the status it "
                          "returns; an ARG starting with '-' goes after --")
    run.add_argument("command_args", nargs="*", metavar="ARG", help=argparse.SUPPRESS)
    run.add_argument("--list", dest="list_commands", action="store_true", help="list the project's commands and exit")
    run.add_argument("-x", dest="execute", nargs="+", metavar=("ENTRY", "ARG"),
                     help="run ENTRY to completion with the ARGs (each JSON, or a plain string), print only its "
                          "result as JSON on stdout and exit (1 on an error result; a process's integer result is "
                          "the exit status); the node's INFO logs are hidden unless -v. Put DIR before -x, or use "
                          "--project: after it DIR is an ARG")
    run.add_argument("--watch", action="store_true", default=None,
                     help="reload changed Lua files and entries without restarting the node (running processes "
                          "keep their code until they upgrade); a change that does not load is refused and logged")
    _node_options(run)

    call = top.command("call", "call a function on the running cluster and print its result as JSON")
    call.add_argument("function", metavar="ns:name")
    call.add_argument("args", nargs="*", metavar="ARG", help="arguments, each JSON (or a plain string)")
    call.add_argument("--timeout", default="30s", metavar="DURATION")

    send = top.command("send", "send a message to a process (from outside: msg:from() is empty)")
    send.add_argument("pid", metavar="PID|NAME", help="the process, e.g. '{n1@app:host|mx1f2k-3}', or a cluster "
                                                     "name (dead-lettered when nobody holds it)")
    send.add_argument("topic")
    send.add_argument("payloads", nargs="*", metavar="PAYLOAD", help="payloads, each JSON (or a plain string)")

    spawn = top.command("spawn", "spawn a process on a node that runs its host and print its PID")
    spawn.add_argument("entry", metavar="ns:entry")
    spawn.add_argument("args", nargs="*", metavar="ARG", help="arguments, each JSON (or a plain string)")
    spawn.add_argument("--host", required=True, help="the process host, e.g. app:workers")
    spawn.add_argument("--node", dest="target_node", metavar="NODE",
                       help="spawn on this node (default: any node that runs the host)")
    spawn.add_argument("--name", help="register the process under this name before it runs (taken: no process)")
    spawn.add_argument("--scope", default="local", choices=["local", "eventual", "consistent", "strong"],
                       help="the name's registry scope: local (its node's, the default) or cluster-wide")

    ps = top.command("ps", "list the processes of every node (or of one) and the running workflows")
    ps.add_argument("--limit", type=int, default=1000,
                    help="at most this many processes per node and workflows per worker (default 1000)")
    ps.add_argument("--json", action="store_true", help="print the answers as JSON")
    ps.add_argument("--node", dest="target_node", metavar="NODE", help="only this node")
    # dest: `run --watch` is a configuration flag (`watch`), this one is not.
    ps.add_argument("--watch", dest="redraw", nargs="?", const=2.0, type=float, metavar="SECONDS",
                    help="redraw every SECONDS (default 2) until Ctrl-C")

    workflow = top.group("workflow", "inspect workflows, send them updates and queries")
    show = workflow.command("show", "print a workflow's status, and its result or error once it has closed")
    show.add_argument("pid", metavar="PID", help="the workflow, e.g. '{@app:worker|app:order-1}'")
    show.add_argument("--json", action="store_true", help="print the answer as JSON")
    update = workflow.command("update", "send a Temporal update to a workflow, wait for its answer and print it "
                              "as JSON (the workflow gets a message from {update|<id>})")
    update.add_argument("pid", metavar="PID", help="the workflow, e.g. '{@app:worker|app:order-1}'")
    update.add_argument("name", metavar="NAME", help="the update's name (the message's topic)")
    update.add_argument("args", nargs="*", metavar="ARG", help="arguments, each JSON (or a plain string)")
    update.add_argument("--timeout", default="30s", metavar="DURATION",
                        help="wait at most this long for the answer (default 30s; the update stays with the workflow)")
    query = workflow.command("query", "query a workflow (pid: its workflow id; state) and print the answer as JSON")
    query.add_argument("pid", metavar="PID", help="the workflow, e.g. '{@app:worker|app:order-1}'")
    query.add_argument("name", metavar="NAME")

    nodes = top.command("nodes", "list the live nodes, their hosts and heartbeat age, how often each flapped "
                        "(declared down, then heard again), sends dropped towards nodes believed down")
    nodes.add_argument("--json", action="store_true", help="print the answers as JSON")
    nodes.add_argument("--watch", dest="redraw", nargs="?", const=2.0, type=float, metavar="SECONDS",
                       help="redraw every SECONDS (default 2) until Ctrl-C")
    operator_commands(top)

    test = top.command("test", "run the project's tests (entries with meta.type: test) on a node of its own, "
                       "one at a time by id; exit 0 only when all pass (5: no tests)")
    _project_argument(test)
    test.add_argument("-k", dest="keyword", action="append", default=[], metavar="PATTERN",
                      help="only tests whose id contains PATTERN (repeatable: any of them)")
    test.add_argument("--timeout", default="60s", metavar="DURATION",
                      help="bound on each test unless its meta.timeout says otherwise (default 60s)")
    _node_options(test)

    check = top.command("check", "validate a project and list every problem")
    _project_argument(check)
    check.add_argument("--strict", action="store_true",
                       help="treat warnings (an unknown key or kind) as errors: exit non-zero when there are any")

    config = top.command("config", "print the effective node configuration and where each value came from")
    _project_argument(config)
    _node_options(config)
    return top


def operator_commands(top: CommandGroup) -> None:
    """``top`` and ``dlq`` (docs/operations.md)."""
    view = top.command("top", "a refreshing view of the cluster: nodes, processes per host, message rates, "
                       "mailbox depth, dead letters (until Ctrl-C)")
    view.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="between samples (default 1)")
    view.add_argument("--count", type=int, default=0, metavar="N", help="stop after N frames")
    view.add_argument("--once", action="store_true", help="print one frame (rates from two samples) and exit")
    view.add_argument("--limit", type=int, default=10000, help="processes asked of each node a sample (default 10000)")
    dlq = top.command("dlq", "list the dead letters kept, oldest first; `dlq replay ID...` or `--all` publishes "
                      "them again where they failed; `dlq purge` deletes them")
    dlq.add_argument("action", nargs="?", default="list", choices=["list", "replay", "purge"])
    dlq.add_argument("ids", nargs="*", type=int, metavar="ID", help="letters to replay, by the ID the list shows")
    dlq.add_argument("--all", action="store_true", help="replay every letter kept (of --node)")
    dlq.add_argument("--node", dest="target_node", metavar="NODE", help="only the letters this node dead-lettered")
    dlq.add_argument("--limit", type=int, default=100, help="list at most this many (default 100)")
    dlq.add_argument("--rate", type=float, default=1000.0, help="replay at most this many a second (0: no bound)")
    dlq.add_argument("--json", action="store_true", help="list as JSON lines")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line as a namespace: ``command`` names the command (``"workflow show"``),
    ``project`` is a path, the rest are the command's options and positionals.

    Exits with status 2 and a usage message on a malformed line, and with 0 after
    ``--help`` or ``--version``.
    """
    return build_parser().parse(argv, argparse.Namespace())


def config_flags(args: argparse.Namespace) -> dict[str, tuple[Any, str]]:
    """The configuration set on the command line: key -> (value, the flag, for sources)."""
    flags: dict[str, tuple[Any, str]] = {}
    for attr, key in _CONFIG_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            flags[key] = (value, "--" + attr.replace("_", "-"))
    for item in getattr(args, "set", []):
        key, sep, value = item.partition("=")
        if not sep:
            # Imported here: parsing the line (``--version``, ``--help``) needs no project code.
            from ..project import ConfigError
            raise ConfigError([f"--set {item}: expected KEY=VALUE"])
        flags[key.strip()] = (value, f"--set {key.strip()}")
    return flags
