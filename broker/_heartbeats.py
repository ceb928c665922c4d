"""The bodies of membership's messages (``_membership.py``): a node's heartbeat, and a
relay's digest of the heartbeats it heard.

A heartbeat (``<prefix>.node.<node>.hb``)::

    {"node": "n1", "incarnation": "k3x9", "hosts": ["app:host"], "bye": false,
     "cut": {"n2": ["k2a1", 1]}}

A digest (``<prefix>.node.<relay>.dg``), every interval from a relay of a large cluster:
its *roster*, every live node it heard (itself included) with its incarnation, and its
hosts and ``cut`` when not empty; how long ago (ms) each one's last heartbeat arrived, as
two little-endian bytes per roster node in base64 (``0xFFFF``: no news); and the
goodbyes of the last window. The roster is sent whole only when it changed or every few
intervals (for nodes that just started reading); otherwise only its id, so a digest costs
about 3 bytes a node, not 30::

    {"node": "n1", "incarnation": "k3x9", "roster": "5f0c...", "ages": "eAA2AQ==",
     "peers": [["n1", "k3x9", ["app:host"]], ["n7", "k3y0", [], {"n2": ["k2a1", 1]}]],
     "bye": [["n4", "k3b2"]]}
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

MAX_HEARTBEAT_BYTES = 256 * 1024  # a beat is ~100 bytes plus ~40 per peer it cut off
MAX_DIGEST_BYTES = 64 * 1024 * 1024  # ~30 bytes a node: far past any cluster's size


def _load(body: bytes, limit: int) -> Any:
    if len(body) > limit:
        raise ValueError(f"{len(body)} bytes, more than {limit}")
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("nested too deep") from None


def _cut(raw: Any) -> dict[str, tuple[str, int]]:
    if not isinstance(raw or {}, dict):
        raise TypeError("a cut list must be an object")
    cut: dict[str, tuple[str, int]] = {}
    for node, entry in (raw or {}).items():
        incarnation, times = entry
        if not isinstance(times, int) or isinstance(times, bool):  # 1e400 would not even convert
            raise TypeError("a cut count must be an integer")
        cut[str(node)] = (str(incarnation), times)
    return cut


def cut_json(cut: dict[str, tuple[str, int]]) -> dict[str, list[Any]]:
    return {node: [incarnation, times] for node, (incarnation, times) in cut.items()}


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One parsed heartbeat body."""

    node: str
    incarnation: str
    hosts: list[str]
    bye: bool
    cut: dict[str, tuple[str, int]] = field(default_factory=dict)  # node -> (incarnation, times)

    @staticmethod
    def parse(body: bytes) -> Heartbeat:
        """Raises: ValueError (including too large or too deep), KeyError or TypeError for
        a malformed body."""
        data = _load(body, MAX_HEARTBEAT_BYTES)
        if not isinstance(data, dict):
            raise TypeError("not a heartbeat object")
        cut = _cut(data.get("cut"))
        return Heartbeat(str(data["node"]), str(data["incarnation"]), [str(h) for h in data.get("hosts", [])],
                         bool(data.get("bye")), cut)


@dataclass(frozen=True, slots=True)
class Entry:
    """One node in a digest: its last heartbeat arrived at the relay ``age`` seconds
    before the digest was sent."""

    node: str
    incarnation: str
    age: float
    hosts: list[str]
    cut: dict[str, tuple[str, int]]


Member = tuple[str, str, list[str], dict[str, tuple[str, int]]]
"""One node of a digest's roster: name, incarnation, hosts, cut."""

NOT_HEARD = 0xFFFF  # an age past 65.5 s, or none: no news of that node
WHOLE_EVERY = 10
"""A relay sends its roster whole at least every this many digests (else when it changes)."""
_AGES = struct.Struct("<H")


def roster_id(roster: list[Member]) -> str:
    """What names a roster in the digests that carry only its ages."""
    canonical = json.dumps([[n, i, h, cut_json(c)] for n, i, h, c in roster], separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Digest:
    """One parsed digest body: the roster (every node in it) only when the relay sends it
    whole, else its id; one age per roster node, in its order."""

    node: str
    incarnation: str
    roster_id: str
    roster: list[Member] | None
    ages: list[float | None]
    byes: list[tuple[str, str]]

    @staticmethod
    def encode(node: str, incarnation: str, roster: list[Member], ages: list[float | None],
               byes: list[tuple[str, str]], *, whole: bool, rid: str) -> bytes:
        # An age two bytes cannot hold is no news, never the largest age they can: that
        # would make a beat heard long ago look 65.5 s old, news to a reader that
        # declared the node down since (a relay back from a long deafness names it).
        raw = b"".join(_AGES.pack(NOT_HEARD if age is None else min(max(round(age * 1000), 0), NOT_HEARD))
                       for age in ages)
        body: dict[str, Any] = {"node": node, "incarnation": incarnation, "roster": rid,
                                "ages": base64.b64encode(raw).decode(), "bye": [list(b) for b in byes]}
        if whole:
            body["peers"] = [[n, i, h, cut_json(c)] if c else [n, i, h] if h else [n, i] for n, i, h, c in roster]
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def parse(body: bytes) -> Digest:
        """Raises: ValueError, KeyError or TypeError for a malformed body."""
        data = _load(body, MAX_DIGEST_BYTES)
        if not isinstance(data, dict) or not isinstance(data.get("ages"), str):
            raise TypeError("not a digest object")
        raw = base64.b64decode(data["ages"], validate=True)
        if len(raw) % 2:
            raise ValueError("ages must be two bytes each")
        ages = [None if age == NOT_HEARD else age / 1000 for (age,) in _AGES.iter_unpack(raw)]
        roster: list[Member] | None = None
        if "peers" in data:
            roster = []
            for item in data["peers"]:
                if not isinstance(item, list) or not 2 <= len(item) <= 4:
                    raise TypeError("a digest's node must be [name, incarnation, hosts?, cut?]")
                hosts = item[2] if len(item) > 2 else []
                if not isinstance(hosts, list):
                    raise TypeError("a digest's hosts must be a list")
                roster.append((str(item[0]), str(item[1]), [str(h) for h in hosts],
                               _cut(item[3] if len(item) > 3 else None)))
            if len(roster) != len(ages):
                raise ValueError(f"{len(roster)} nodes but {len(ages)} ages")
        byes = []
        for bye in data.get("bye") or []:
            name, incarnation = bye
            byes.append((str(name), str(incarnation)))
        return Digest(str(data["node"]), str(data["incarnation"]), str(data["roster"]), roster, ages, byes)

    def entries(self, roster: list[Member]) -> list[Entry]:
        """The nodes heard, with ``roster`` (this digest's own, or the one its id names)."""
        if len(roster) != len(self.ages):
            raise ValueError(f"{len(roster)} nodes but {len(self.ages)} ages")
        return [Entry(n, i, age, h, c) for (n, i, h, c), age in zip(roster, self.ages) if age is not None]


class Rosters:
    """As a relay, the roster last sent (an unchanged one goes as its id); as a reader,
    the roster last sent whole by each relay (``keep`` relays at most)."""

    def __init__(self, keep: int) -> None:
        self.sent = ("", 0)  # roster id, digests since it went whole
        self.held: dict[str, tuple[str, list[Member]]] = {}
        self.keep = keep

    def encode(self, node: str, incarnation: str, members: list[tuple[Member, float | None]],
               byes: list[tuple[str, str]]) -> bytes:
        """A digest of ``members`` (each with its age, s; None: no news) from relay ``node``."""
        roster = [member for member, _ in members]
        rid = roster_id(roster)
        whole = rid != self.sent[0] or self.sent[1] >= WHOLE_EVERY - 1
        self.sent = (rid, 0 if whole else self.sent[1] + 1)
        return Digest.encode(node, incarnation, roster, [age for _, age in members], byes, whole=whole, rid=rid)

    def entries(self, digest: Digest) -> list[Entry]:
        """The nodes ``digest`` names, by its own roster or the one held of its relay under
        the id it gives; none (no news) while another is held, until it comes whole."""
        if digest.roster is not None:
            if digest.node not in self.held and len(self.held) >= self.keep:
                self.held.clear()  # relays come and go: keep those of late only
            self.held[digest.node] = (digest.roster_id, digest.roster)
        rid, roster = self.held.get(digest.node, ("", []))
        return digest.entries(roster) if rid == digest.roster_id and len(roster) == len(digest.ages) else []
