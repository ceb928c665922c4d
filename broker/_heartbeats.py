"""The bodies of membership's messages (``_membership.py``): a node's heartbeat, and a
relay's digest of the heartbeats it heard.

A heartbeat (``<prefix>.node.<node>.hb``)::

    {"node": "n1", "incarnation": "k3x9", "hosts": ["app:host"], "bye": false,
     "cut": {"n2": ["k2a1", 1]}}

A digest (``<prefix>.node.<relay>.dg``), every interval from a relay of a large cluster:
per live node it heard (itself included), the incarnation, how long ago (ms) its last
heartbeat arrived, and its hosts and ``cut`` when not empty; and the goodbyes of the last
window::

    {"node": "n1", "incarnation": "k3x9",
     "peers": {"n1": ["k3x9", 120, ["app:host"]], "n7": ["k3y0", 310, [], {"n2": ["k2a1", 1]}]},
     "bye": [["n4", "k3b2"]]}
"""

from __future__ import annotations

import json
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


@dataclass(frozen=True, slots=True)
class Digest:
    """One parsed digest body."""

    node: str
    incarnation: str
    entries: list[Entry]
    byes: list[tuple[str, str]]

    @staticmethod
    def encode(node: str, incarnation: str, entries: list[Entry], byes: list[tuple[str, str]]) -> bytes:
        peers: dict[str, list[Any]] = {}
        for e in entries:
            item: list[Any] = [e.incarnation, round(e.age * 1000)]
            if e.hosts or e.cut:
                item.append(e.hosts)
            if e.cut:
                item.append(cut_json(e.cut))
            peers[e.node] = item
        return json.dumps({"node": node, "incarnation": incarnation, "peers": peers,
                           "bye": [list(b) for b in byes]}, separators=(",", ":")).encode()

    @staticmethod
    def parse(body: bytes) -> Digest:
        """Raises: ValueError, KeyError or TypeError for a malformed body."""
        data = _load(body, MAX_DIGEST_BYTES)
        if not isinstance(data, dict) or not isinstance(data.get("peers"), dict):
            raise TypeError("not a digest object")
        entries = []
        for node, item in data["peers"].items():
            if not isinstance(item, list) or not 2 <= len(item) <= 4:
                raise TypeError("a digest entry must be [incarnation, age_ms, hosts?, cut?]")
            age = item[1]
            if not isinstance(age, int) or isinstance(age, bool) or age < 0:
                raise TypeError("a digest age must be a non-negative integer")
            hosts = item[2] if len(item) > 2 else []
            if not isinstance(hosts, list):
                raise TypeError("a digest's hosts must be a list")
            entries.append(Entry(str(node), str(item[0]), age / 1000, [str(h) for h in hosts],
                                 _cut(item[3] if len(item) > 3 else None)))
        byes = []
        for bye in data.get("bye") or []:
            name, incarnation = bye
            byes.append((str(name), str(incarnation)))
        return Digest(str(data["node"]), str(data["incarnation"]), entries, byes)
