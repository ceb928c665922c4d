"""What the wire decoder's limits cost (issue 14, item 5), beside a raw baseline measured
in the same run: ``node._payload.unpack`` (size, depth and extension checks) against the
bare ``msgpack.unpackb`` / ``json.loads`` calls it wraps, on bodies a node sees.

    python bench/decoding.py [--rounds 5] [--json] [--loop asyncio|uvloop]

Rounds alternate raw and checked for each body; the best time of each is reported.

With ``--json`` the last line is one JSON object with these keys: ``machine``; for each
body ``B`` (``msgpack_call_request``, ``msgpack_200_key_map``, ``msgpack_16_kb_string``,
``json_small``, ``json_2000_objects``): ``B.bytes``, ``B.raw_us``, ``B.checked_us``,
``B.added_us`` and ``B.ratio`` (checked over raw).
"""

from __future__ import annotations

import json
import timeit
from typing import Any, Callable

import msgpack

from moonwire.node.wire._payload import MSGPACK, pack, unpack

from _support import Figures, parser, run


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


async def main() -> None:  # nothing to await: async only for the shared run()
    args = ARGS
    figures = Figures(args)
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for name, body, content_type, raw in BODIES:
            number = 20000 if len(body) < 200 else 100
            for label, work in (("raw", lambda: raw(body)), ("checked", lambda: unpack(body, content_type))):
                seconds = min(timeit.repeat(work, number=number, repeat=3)) / number
                best[(name, label)] = min(best.get((name, label), float("inf")), seconds)
    print(f"{'body':24s} {'bytes':>7s} {'raw us':>9s} {'checked us':>11s} {'added us':>9s}   ratio")
    for name, body, _, _ in BODIES:
        raw_s, checked_s = best[(name, "raw")], best[(name, "checked")]
        key = name.replace(" ", "_").replace("-", "_").lower()
        figures.add(f"{key}.bytes", len(body)), figures.add(f"{key}.raw_us", raw_s * 1e6)
        figures.add(f"{key}.checked_us", checked_s * 1e6), figures.add(f"{key}.added_us", (checked_s - raw_s) * 1e6)
        figures.add(f"{key}.ratio", checked_s / raw_s)
        print(f"{name:24s} {len(body):7d} {raw_s * 1e6:9.2f} {checked_s * 1e6:11.2f} {(checked_s - raw_s) * 1e6:9.2f}"
              f"   x{checked_s / raw_s:.2f}")
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--rounds", type=int, default=5)

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
