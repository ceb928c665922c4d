"""The NATS client moonwire connects with: nats-py's, minus its per-message header work
for the header blocks moonwire sends over and over.

nats-py encodes a message's headers on every publish (a regex and string work per
header) and parses every block it receives line by line and character by character.
On a remote function call that was about 7 µs of CPU across the two nodes, out of
~65 (``docs/performance.md``). Moonwire's own traffic repeats a handful of blocks, so:

* publishing with :class:`Headers` (read-only headers that keep their encoded block)
  skips the encoding: the block is built once, by the same rules as nats-py's;
* a received block is parsed by nats-py the first time and served from a small cache
  after that (a copy each time, so a receiver may change its dict).

Both hook private methods of nats-py's Client. :data:`FAST_PATH` says whether the
installed nats-py has them in the shape this was written against; when it does not,
:class:`Client` behaves exactly as nats-py's, only slower.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from nats.aio.client import Client as NatsClient
from nats.errors import BadSubjectError
from nats.protocol.command import hpub_cmd

_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 7230 token, as nats-py checks

CACHE_BLOCKS = 1024
"""Distinct received header blocks kept parsed (the cache starts over when full)."""
CACHE_BLOCK_BYTES = 512
"""Longer blocks are parsed every time."""


def _fast_path_available() -> bool:
    try:
        send = inspect.signature(NatsClient._send_publish)
        receive = inspect.signature(NatsClient._process_headers)
    except AttributeError:
        return False
    return (list(send.parameters) == ["self", "subject", "reply", "payload", "payload_size", "headers"]
            and list(receive.parameters) == ["self", "headers"]
            and inspect.iscoroutinefunction(NatsClient._send_command)
            and inspect.iscoroutinefunction(NatsClient._flush_pending))


FAST_PATH = _fast_path_available()


class Headers(dict[str, str]):
    """Message headers that are encoded once, for headers published many times.

    Read-only, since the encoded block would not follow a change.

    Raises:
        ValueError: a name that is not a header token, or a value with a line break.
    """

    __slots__ = ("block",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        super().__init__(items)
        lines = [b"NATS/1.0\r\n"]
        for name, value in dict.items(self):
            if not _HEADER_KEY.fullmatch(name):
                raise ValueError(f"bad header name {name!r}")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} has a line break in its value")
            lines.append(f"{name}: {value.strip()}\r\n".encode())
        lines.append(b"\r\n")
        self.block = b"".join(lines)

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("Headers are read-only")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _read_only  # type: ignore[assignment]


class Client(NatsClient):
    """nats-py's client with the header fast paths above (when :data:`FAST_PATH`)."""

    def __init__(self) -> None:
        super().__init__()
        self._parsed_blocks: dict[bytes, dict[str, str] | None] = {}

    if FAST_PATH:
        async def _send_publish(self, subject: str, reply: str, payload: bytes, payload_size: int,
                                headers: dict[str, Any] | None) -> None:
            if type(headers) is not Headers:
                await super()._send_publish(subject, reply, payload, payload_size, headers)
                return
            # nats-py's own steps after it has encoded the headers.
            if subject == "":
                raise BadSubjectError
            self.stats["out_msgs"] += 1
            self.stats["out_bytes"] += payload_size
            await self._send_command(hpub_cmd(subject, reply, headers.block, payload))
            if self._flush_queue is not None and self._flush_queue.empty():
                await self._flush_pending()

        async def _process_headers(self, headers: bytes) -> dict[str, str] | None:  # type: ignore[override]
            if not headers or len(headers) > CACHE_BLOCK_BYTES:
                return await super()._process_headers(headers)
            cache = self._parsed_blocks
            if headers in cache:
                parsed = cache[headers]
            else:
                # nats-py's parse skips malformed lines rather than failing, so what it
                # returns is all there is to know about a block.
                parsed = await super()._process_headers(headers)
                if len(cache) >= CACHE_BLOCKS:
                    cache.clear()
                cache[headers] = None if parsed is None else dict(parsed)
            return None if parsed is None else dict(parsed)
