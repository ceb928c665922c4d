"""What the wire decoder's limits cost (issue 14, item 5), beside a raw baseline measured
in the same run: ``node._payload.unpack`` (size, depth and extension checks) against the
bare ``msgpack.unpackb`` / ``json.loads`` calls it wraps, on bodies a node sees.

    python bench/decoding.py [--rounds 5]

Rounds alternate raw and checked for each body; the best time of each is reported.
"""

from __future__ import annotations

import argparse
import json
import timeit
from typing import Any, Callable

import msgpack

from moonwire.node.wire._payload import MSGPACK, pack, unpack


def raw_msgpack(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def raw_json(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"))


BODIES: list[tuple[str, bytes, str | None, Callable[[bytes], Any]]] = [
    ("msgpack call request", pack({"args": [1, "x", 2.5], "ctx": {}}), MSGPACK, raw_msgpack),
    ("msgpack 200-key map", pack({"args": [{f"k{i}": [i, "v" * 10, {"a": i}] for i in range(200)}]}), MSGPACK,
     raw_msgpack),
    ("msgpack 16 KB string", pack(["x" * 16384]), MSGPACK, raw_msgpack),
    ("json small", b'{"args": [1, "x", [1, [2, [3]]]], "ctx": {}}', None, raw_json),
    ("json 2000 objects", ("[" + ",".join('{"a": [1, 2, {"b": "c"}]}' for _ in range(2000)) + "]").encode(), None,
     raw_json),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for name, body, content_type, raw in BODIES:
            number = 20000 if len(body) < 200 else 100
            for label, run in (("raw", lambda: raw(body)), ("checked", lambda: unpack(body, content_type))):
                seconds = min(timeit.repeat(run, number=number, repeat=3)) / number
                best[(name, label)] = min(best.get((name, label), float("inf")), seconds)
    print(f"{'body':24s} {'bytes':>7s} {'raw us':>9s} {'checked us':>11s} {'added us':>9s}")
    for name, body, _, _ in BODIES:
        raw_s, checked_s = best[(name, "raw")], best[(name, "checked")]
        print(f"{name:24s} {len(body):7d} {raw_s * 1e6:9.2f} {checked_s * 1e6:11.2f} {(checked_s - raw_s) * 1e6:9.2f}")


if __name__ == "__main__":
    main()
