"""The subject scheme (DESIGN §2-§6). Every subject moonwire uses is built here."""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def is_token(text: str) -> bool:
    """True when ``text`` is usable as one NATS subject token (and as a node name)."""
    return bool(_TOKEN.match(text))


def to_token(text: str) -> str:
    """Turn arbitrary text (e.g. a host name) into a valid subject token."""
    token = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")
    return token or "node"


@dataclass(frozen=True, slots=True)
class Subjects:
    """Subjects under one prefix, so several tenants can share a broker."""

    prefix: str = "mw"

    def __post_init__(self) -> None:
        if not all(is_token(part) for part in self.prefix.split(".")):
            raise ValueError(f"invalid subject prefix {self.prefix!r}: use tokens of [A-Za-z0-9_-] joined by '.'")

    def inbox(self, node: str, uid: str) -> str:
        return f"{self.prefix}.p.{node}.{uid}"

    def node_inboxes(self, node: str) -> str:
        """The one wildcard subscription a node holds for all its processes."""
        return f"{self.prefix}.p.{node}.>"

    def named(self, name: str) -> str:
        """A cluster name's inbox from outside (then ``.<topic>``): a queue group of every
        node takes each message and hands it to the name's holder, wherever it runs."""
        return f"{self.prefix}.n.{name}"

    def all_named(self) -> str:
        return f"{self.prefix}.n.>"

    def group(self, group: str) -> str:
        """A process group's broadcasts (then ``.<topic>`` from outside): every node
        with members of it subscribes while it has them."""
        return f"{self.prefix}.g.{group}"

    def control(self, node: str, verb: str) -> str:
        return f"{self.prefix}.ctl.{node}.{verb}"

    def spawn(self, host_id: str) -> str:
        return f"{self.prefix}.spawn.{host_id}"

    def survey(self, verb: str) -> str:
        """Asked of every node at once (``moonwire ps``, ``moonwire nodes``)."""
        return f"{self.prefix}.nodes.{verb}"

    def workflow(self, worker: str, workflow_id: str) -> str:
        """A workflow's inbox from outside: the nodes running ``worker`` turn what arrives
        here (with the topic as the next token, or in ``Mw-Topic``) into a signal."""
        return f"{self.prefix}.wf.{worker}.{workflow_id}"

    def workflows(self, worker: str) -> str:
        return f"{self.prefix}.wf.{worker}.>"

    def workflow_status(self, worker: str) -> str:
        """Requests for a workflow's status (``moonwire workflow show``), answered by a
        node that has a client for ``worker``."""
        return f"{self.prefix}.wfq.{worker}"

    def function(self, entry_id: str) -> str:
        return f"{self.prefix}.fn.{entry_id}"

    def heartbeat(self, node: str) -> str:
        return f"{self.prefix}.node.{node}.hb"

    def all_heartbeats(self) -> str:
        return f"{self.prefix}.node.*.hb"

    def digest(self, node: str) -> str:
        """Where a relay of a large cluster sends its digest of the heartbeats (``_membership.py``)."""
        return f"{self.prefix}.node.{node}.dg"

    def all_digests(self) -> str:
        return f"{self.prefix}.node.*.dg"

    def stream_acks(self, node: str) -> str:
        """Where ``node`` hears which of its process messages other nodes received (``_streams.py``)."""
        return f"{self.prefix}.ack.{node}"

    def dead_letters(self, node: str) -> str:
        return f"{self.prefix}.dlq.{node}"


# ---------------------------------------------------------------- cluster names

MAX_NAME = 255
"""The longest cluster name, in characters. JetStream allows longer keys (a subject of
up to 64 KiB by default), but a name travels in subjects (``$KV.<bucket>.<name>``, and
``<prefix>.n.<name>.<topic>`` for outside clients), and subjects past a few hundred bytes
cost on every message; 255 is the common limit of names everywhere else."""

_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
_BAD = re.compile(r"[^-/_=.a-zA-Z0-9]")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a cluster name (JetStream key rules plus a length limit),
    or None when it can. Every such name is a run of subject tokens, so it can follow
    ``<prefix>.n.`` in a subject (node/cluster, docs/cluster.md)."""
    if not isinstance(name, str):
        return f"a cluster name is a string, not {type(name).__name__}"
    if not name:
        return "a cluster name cannot be empty"
    if len(name) > MAX_NAME:
        return f"cluster name {name[:40]!r}... is {len(name)} characters long; the limit is {MAX_NAME}"
    if not _KEY.fullmatch(name):
        bad = sorted(set(_BAD.findall(name)))
        shown = ", ".join("space" if c == " " else repr(c) for c in bad)
        return (f"cluster name {name!r} has characters a name may not hold ({shown}); "
                f"use letters, digits and - / _ = .")
    if name.startswith(".") or name.endswith("."):
        return f"cluster name {name!r} may not start or end with '.'"
    return None
