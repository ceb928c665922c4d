"""``meta.command``: process entries that ``moonwire run DIR <name> [ARG...]`` runs
(Wippy's ``wippy run <name>``; wippy-modules §12.3).

A ``process.lua`` entry is a command when its ``meta.command.name`` is a non-empty text;
``short`` describes it in ``moonwire run DIR --list``, ``main`` (a boolean) is listed and
otherwise unused (in Wippy it picks a pack's default command; moonwire has no packs).
Wippy reads ``meta.command`` on ``process.*`` kinds only and skips one without a usable
name silently; here such a ``meta.command`` is a warning, and two entries claiming one
name are an error (Wippy would run whichever its registry lists first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from ._checks import Finding
from ._entries import Entry, ProcessEntry


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    entry: str
    short: str = ""
    main: bool = False


def _command(entry: Entry) -> tuple[Command | None, list[Finding]]:
    """The command ``entry`` declares (None: none), and what is wrong with its declaration."""
    if "command" not in entry.meta:
        return None, []
    meta = entry.meta["command"]
    at = ("meta", "command")
    if not isinstance(entry, ProcessEntry):
        return None, [Finding(entry.id, at, f"meta.command is read on process.lua entries only, not on a "
                                            f"{entry.kind}; ignored")]
    if not isinstance(meta, Mapping):
        return None, [Finding(entry.id, at, "meta.command must be a mapping with a name; not a command")]
    name = meta.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, [Finding(entry.id, (*at, "name"), "meta.command needs a name (a non-empty text); "
                                                       "not a command")]
    findings = []
    if name.startswith("-"):
        findings.append(Finding(entry.id, (*at, "name"), f"command name {name!r} starts with '-': `moonwire run "
                                "DIR NAME` would read it as an option, so it could never run", error=True))
    short, main = meta.get("short", ""), meta.get("main", False)
    if not isinstance(short, str):
        findings.append(Finding(entry.id, (*at, "short"), "meta.command.short must be a text; ignored"))
        short = ""
    if not isinstance(main, bool):
        findings.append(Finding(entry.id, (*at, "main"), "meta.command.main must be true or false; ignored"))
        main = False
    return Command(name, entry.id, short, main), findings


def command_findings(entries: Mapping[str, Entry], where: Callable[[str], str]) -> Iterator[Finding]:
    """What is wrong with the ``meta.command`` of ``entries``; ``where(entry_id)`` says
    where an entry is defined (``file:line``), for the error of a duplicate name."""
    first: dict[str, Command] = {}
    for entry_id in sorted(entries):
        command, findings = _command(entries[entry_id])
        yield from findings
        if command is None:
            continue
        if (other := first.get(command.name)) is not None:
            yield Finding(entry_id, ("meta", "command", "name"), f"duplicate command name {command.name!r}; "
                          f"{other.entry} ({where(other.entry)}) has it already", error=True)
        else:
            first[command.name] = command


def commands(entries: Mapping[str, Entry]) -> list[Command]:
    """The commands of a loaded project, by name (the loader has refused duplicates)."""
    found = {}
    for entry_id in sorted(entries):
        command = _command(entries[entry_id])[0]
        if command is not None:
            found.setdefault(command.name, command)
    return sorted(found.values(), key=lambda c: c.name)
