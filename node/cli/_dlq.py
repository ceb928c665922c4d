"""``moonwire dlq``: the dead letters the cluster kept (``node/cluster/_dead_letters.py``).

``dlq`` lists them, oldest first: id, time, the node that dead-lettered it, the subject
it failed on, why, how often it was replayed, and a summary of its body. ``dlq replay
ID...`` (or ``--all``, of ``--node``) publishes them again to that subject and deletes
them from the stream; one that fails again comes back with its new reason. ``dlq purge``
deletes them all (of ``--node``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from nats.aio.client import Client as NatsClient

from moonwire.broker import TOPIC_HEADER, Subjects
from moonwire.lua import MoonwireError

from ..cluster import DeadLetterStore, StoredLetter
from ..wire import CONTENT_TYPE, unpack
from ._common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, talk
from ._listings import table

SUMMARY = 60
"""Characters of a body's summary."""
REPLAY_CHUNK = 256
"""Replayed letters are deleted from the stream this many at a time."""


def summary(letter: StoredLetter) -> str:
    """The body as a short line: its value (JSON, msgpack or text), else its size;
    after its topic when a header names one (a process message from a node: the body is
    its list of payloads)."""
    topic = letter.headers.get(TOPIC_HEADER)
    try:
        value: Any = unpack(letter.body, letter.headers.get(CONTENT_TYPE))
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    except (MoonwireError, ValueError, TypeError):
        text = f"<{len(letter.body)} bytes>"
    text = " ".join(((f"{topic}: " if topic else "") + text).split())
    return text if len(text) <= SUMMARY else text[:SUMMARY - 1] + "…"


def cmd_dlq(args: argparse.Namespace) -> int:
    if args.action != "replay" and (args.ids or args.all):
        print("error: IDs and --all are for `dlq replay`", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "replay" and bool(args.ids) == bool(args.all):
        print("error: `dlq replay` takes the IDs of letters, or --all", file=sys.stderr)
        return EXIT_USAGE
    if args.limit < 0 or args.rate < 0:
        print("error: --limit and --rate must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    work = {"list": _list, "replay": _replay, "purge": _purge}[args.action]

    async def run(nc: NatsClient, subjects: Subjects) -> int:
        try:
            return await work(args, DeadLetterStore(nc, subjects))
        except MoonwireError as err:
            print(f"error: {err.message}", file=sys.stderr)
            return EXIT_FAILURE

    return talk(args, run)


async def _list(args: argparse.Namespace, store: DeadLetterStore) -> int:
    rows = [["ID", "TIME", "NODE", "SUBJECT", "REASON", "REPLAYS", "BODY"]]
    kept = sum(n for node, n in (await store.counts()).items() if args.target_node in (None, node))
    shown = 0
    async with contextlib.aclosing(store.letters(args.target_node)) as letters:
        async for letter in letters:
            if shown >= args.limit:
                break
            shown += 1
            _show(args, letter, rows)
    if not args.json:
        if shown:
            table(rows)
        elif not kept:
            print("no dead letters kept" + (f" from node {args.target_node}" if args.target_node else ""))
    if kept > shown:
        print(f"({kept - shown} more; raise --limit to see them)", file=sys.stderr)
    return EXIT_OK


def _show(args: argparse.Namespace, letter: StoredLetter, rows: list[list[str]]) -> None:
    """Print ``letter`` as a JSON line, or add it to the table's ``rows``."""
    if args.json:
        print(json.dumps({"id": letter.seq, "time": letter.time.isoformat(), "node": letter.node,
                          "subject": letter.subject, "reason": letter.reason, "replays": letter.replays,
                          "headers": letter.headers, "body": summary(letter)}, ensure_ascii=False))
    else:
        rows.append([str(letter.seq), letter.time.strftime("%Y-%m-%d %H:%M:%S"), letter.node, letter.subject,
                     letter.reason, str(letter.replays), summary(letter)])


async def _replay(args: argparse.Namespace, store: DeadLetterStore) -> int:
    wanted = set(args.ids)
    # Letters dead-lettered while this runs come after `until`: a replay never reads
    # its own failures again.
    until = await store.last_seq()
    replayed: list[int] = []
    refused = 0
    started = time.monotonic()
    async with contextlib.aclosing(store.letters(args.target_node, until=until)) as letters:
        async for letter in letters:
            if args.ids and letter.seq not in wanted:
                continue
            wanted.discard(letter.seq)
            reason = store.refusal(letter)
            if reason is not None:
                refused += 1
                print(f"error: letter {letter.seq} not replayed: {reason}", file=sys.stderr)
                continue
            if args.rate:  # a flood replayed at once would only be dead-lettered again
                await asyncio.sleep(max(0.0, started + len(replayed) / args.rate - time.monotonic()))
            await store.replay(letter)
            replayed.append(letter.seq)
            if len(replayed) % REPLAY_CHUNK == 0:  # out of the stream as they go: an interrupted
                await store.nc.flush()             # replay repeats at most one chunk
                await store.delete(replayed[-REPLAY_CHUNK:])
            if args.ids and not wanted:
                break
    await store.nc.flush()
    await store.delete(replayed[len(replayed) - len(replayed) % REPLAY_CHUNK:])
    for seq in sorted(wanted):
        print(f"error: no letter {seq}" + (f" from node {args.target_node}" if args.target_node else ""),
              file=sys.stderr)
    print(f"replayed {len(replayed)} letter(s)" + (f"; {refused} refused" if refused else ""))
    return EXIT_FAILURE if wanted or refused else EXIT_OK


async def _purge(args: argparse.Namespace, store: DeadLetterStore) -> int:
    count = await store.purge(args.target_node)
    print(f"purged {count} letter(s)" + (f" from node {args.target_node}" if args.target_node else ""))
    return EXIT_OK
