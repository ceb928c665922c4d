"""The NATS client moonwire connects with: nats-py's, minus its per-message header work
for the header blocks moonwire sends over and over.

nats-py encodes a message's headers on every publish (a regex and string work per
header) and parses every block it receives line by line and character by character.
On a remote function call that was about 7 µs of CPU across the two nodes, out of
~65 (``docs/performance.md``). Moonwire's own traffic repeats a handful of blocks, so:

* publishing with :class:`Headers` (read-only headers that keep their encoded block)
  skips the encoding: the block is built once, by the same rules as nats-py's;
* a received block is parsed by nats-py the first time and served from a small cache
  after that (a copy each time, so a receiver may change its dict); a block that
  differs from a parsed one by its last line only (a stream's ``Mw-Seq``, appended by
  :meth:`Headers.with_header`) is that one's dict plus the line, and is not cached.

Four more paths skip nats-py's per-message work, for the node's busiest traffic
(function requests and replies):

* :meth:`Client.try_publish` puts a message on the connection's write buffer at once,
  as ``publish`` does when it would not wait, without its four coroutines;
* :meth:`Client.subscribe_direct` hands each message to a plain callback straight from
  the read loop, without the subscription's queue, task and coroutine per message;
* received frames are read by :class:`~broker._parser.FastParser`;
* :meth:`Client.flush_now` writes the write buffer to the socket at once when nothing
  is buffered there, instead of waking nats-py's flusher task on the next turn.

All of this hooks private parts of nats-py's Client, listed and checked once at import
by ``broker/_nats_internals.py``. :data:`FAST_PATH` says whether the paths are on: the
installed nats-py has every name in the shape this was written against, and
``MOONWIRE_FAST_PATHS=0`` does not turn them off. When they are off, :class:`Client` is
nats-py's client on its public methods only, with the same semantics, slower:
``try_publish`` returns False (callers then ``publish``), ``subscribe_direct`` is a
subscription whose callback task calls the plain callback, and frames are read by
nats-py's parser (``after_read``: see :class:`Client`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from time import perf_counter
from typing import Any, NoReturn

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import BadSubjectError, MaxPayloadError

from . import _nats_internals
from ._tally import Tally

log = logging.getLogger("moonwire.broker")

_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 7230 token, as nats-py checks

CACHE_BLOCKS = 1024
"""Distinct received header blocks kept parsed (the cache starts over when full)."""
CACHE_BLOCK_BYTES = 512
"""Longer blocks are parsed every time."""

_NOT_CACHED = object()


FAST_PATH = _nats_internals.decide()
"""Whether :class:`Client` uses its fast paths (decided once, at import)."""

if FAST_PATH:  # names that need not exist otherwise
    import nats.aio.client
    from nats.aio.transport import TcpTransport
    from nats.protocol.command import hpub_cmd, pub_cmd

    from ._parser import FastParser

    _validate_subject = nats.aio.client._validate_subject
    _parse_email = nats.aio.client.parse_email  # None: nats-py parses header lines itself
else:
    _parse_email = None


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

    def with_header(self, name: str, value: str) -> Headers:
        """These headers plus ``name: value``, whose block is this one plus a line: for
        a header that differs on every message (a sequence number) after a block that
        repeats. Checked as :class:`Headers` checks its own.

        Raises:
            ValueError: as :class:`Headers`.
        """
        if name in self:
            return Headers({**self, name: value})
        if not _HEADER_KEY.fullmatch(name):
            raise ValueError(f"bad header name {name!r}")
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} has a line break in its value")
        extended = Headers.__new__(Headers)
        dict.update(extended, self)
        dict.__setitem__(extended, name, value)
        extended.block = self.block[:-2] + f"{name}: {value.strip()}\r\n\r\n".encode()
        return extended

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("Headers are read-only")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _read_only  # type: ignore[assignment]


class Client(NatsClient):
    """nats-py's client with the fast paths above.

    Args:
        fast_paths: False for nats-py's public paths only, as with
            ``MOONWIRE_FAST_PATHS=0`` but for this client alone.

    Raises:
        ValueError: ``fast_paths`` is True but :data:`FAST_PATH` is not.
    """

    def __init__(self, *, fast_paths: bool = FAST_PATH) -> None:
        if fast_paths and not FAST_PATH:
            raise ValueError("the fast paths are off in this process (see broker/_nats_internals.py)")
        super().__init__()
        self.fast_paths = fast_paths
        """Whether this client uses the fast paths."""
        self._parsed_blocks: dict[bytes, dict[str, str] | None] = {}
        self._parsed_heads: dict[bytes, list[Any]] = {}
        """Blocks parsed as the head of others that differ from it by a last line: head
        -> [its parse, the last block read from it]."""
        self._direct: dict[int, tuple[Subscription, Callable[[Msg], None]]] = {}
        """Subscription id -> the subscription and its direct callback."""
        self.after_read: Callable[[], Awaitable[None]] | None = None
        """Awaited by the read loop after it has handled each chunk it read (at most
        nats-py's 32 KiB read size), and every :attr:`read_turn` seconds within one: the
        place to yield the event loop to others, or to hold reading while what the
        frames caused is written out. Without the fast paths nats-py's read loop has no
        such place, and the tasks nats-py runs for :meth:`subscribe_direct` callbacks
        await it instead, after a message once :attr:`read_turn` seconds have passed
        since the last time (after every message for 0): a flood then takes turns with
        the rest of the event loop too, but waits in nats-py's pending queues (up to
        their limits, then dropped and counted in :attr:`slow_consumer_drops`) rather
        than in the server."""
        self.read_turn = 0.0
        """Seconds of handling frames after which the read loop awaits :attr:`after_read`
        before the next frame (0: only after each chunk)."""
        self._turn_ends = 0.0
        self.slow_consumer_drops = Tally(log, "messages dropped by nats-py (slow consumer)")
        """Messages nats-py dropped because a subscription's pending queue was full, by
        subject (counted by :func:`broker.connect`'s error callback)."""
        if fast_paths:
            self._ps = FastParser(self)

    async def subscribe_direct(self, subject: str, callback: Callable[[Msg], None], *,
                               queue: str = "") -> Subscription:
        """Subscribe with a plain callback, called for each message straight from the
        connection's read loop, in order.

        For handlers that never wait: the read loop waits while one runs. An exception
        from ``callback`` is logged and the next message is delivered. nats-py's
        slow-consumer limits do not apply: no messages pile up in front of a callback.

        Without the fast paths, the callback is called the same way (in order, one at a
        time, exceptions logged) but from the subscription's task, behind nats-py's
        pending queue and its slow-consumer limits.
        """
        async def deliver(msg: Msg) -> None:  # how messages arrive without the fast paths
            _call(callback, msg)
            if self.after_read is not None:
                await self._take_turn()

        subscription = await self.subscribe(subject, queue=queue, cb=deliver)
        if self.fast_paths:
            self._direct[subscription._id] = (subscription, callback)
        return subscription

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "",
                      headers: dict[str, str] | None = None) -> None:
        """nats-py's ``publish``, which also refuses a message whose header block and
        payload together exceed the server's max_payload.

        nats-py counts the payload only; the server counts both, and closes the
        connection on a message over the limit, losing everything written behind it.

        Raises:
            MaxPayloadError: as nats-py's, for a payload that fits only without its headers.
        """
        if headers is not None and len(payload) + _block_size(headers) > self.max_payload:
            raise MaxPayloadError
        await super().publish(subject, payload, reply, headers)

    async def _take_turn(self) -> None:
        """Await :attr:`after_read` once :attr:`read_turn` has passed since the last time."""
        if perf_counter() >= self._turn_ends and self.after_read is not None:
            await self.after_read()
            self._turn_ends = perf_counter() + self.read_turn

    if FAST_PATH:
        async def _send_publish(self, subject: str, reply: str, payload: bytes, payload_size: int,
                                headers: dict[str, Any] | None) -> None:
            if type(headers) is not Headers or not self.fast_paths:
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

        async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,  # type: ignore[override]
                               headers: bytes | None) -> None:
            direct = self._direct.get(sid)
            if direct is None:
                await super()._process_msg(sid, subject, reply, data, headers)
            else:
                self._deliver(sid, direct, subject, reply, data, await self._process_headers(headers))

        async def _process_headers(self, headers: bytes) -> dict[str, str] | None:  # type: ignore[override]
            if not headers or len(headers) > CACHE_BLOCK_BYTES or not self.fast_paths:
                return await super()._process_headers(headers)
            parsed = self._cached(headers)
            if parsed is not _NOT_CACHED:
                return parsed  # type: ignore[return-value]
            # nats-py's parse skips malformed lines rather than failing, so what it
            # returns is all there is to know about a block.
            parsed = await super()._process_headers(headers)
            _keep(self._parsed_blocks, headers, None if parsed is None else dict(parsed))
            split = _split_last_line(headers)
            if split is not None and split[0] not in self._parsed_heads:
                head = await super()._process_headers(split[0])
                if head:
                    _keep(self._parsed_heads, split[0], [dict(head), headers])
            return parsed

        def _cached(self, block: bytes) -> dict[str, str] | None | object:
            """A copy of ``block`` parsed, from the caches: the block itself, or a head
            it extends by one line (a sequence number after a block that repeats,
            ``Headers.with_header``), else _NOT_CACHED. A block read from a head is
            cached itself once it comes twice in a row (a sequence number never does)."""
            cached = self._parsed_blocks.get(block, _NOT_CACHED)
            if cached is not _NOT_CACHED:
                return None if cached is None else dict(cached)  # type: ignore[call-overload]
            split = _split_last_line(block)
            if split is None:
                return _NOT_CACHED
            head = self._parsed_heads.get(split[0])
            if head is None:
                return _NOT_CACHED
            parsed = dict(head[0])
            parsed[split[1]] = split[2]  # last, as nats-py's parse sets it
            if head[1] == block:
                _keep(self._parsed_blocks, block, dict(parsed))
            head[1] = block
            return parsed

        def _deliver_now(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            """Deliver a frame to a direct subscription without awaiting anything. False,
            having done nothing, when ``sid`` is not one or its header block is not in the
            cache yet: ``_process_msg`` then takes the frame."""
            direct = self._direct.get(sid)
            if direct is None:
                return False
            parsed = None
            if headers:
                if len(headers) > CACHE_BLOCK_BYTES:
                    return False
                parsed = self._cached(headers)
                if parsed is _NOT_CACHED:
                    return False
            self._deliver(sid, direct, subject, reply, data, parsed)  # type: ignore[arg-type]
            return True

        def _deliver(self, sid: int, direct: tuple[Subscription, Callable[[Msg], None]], subject: bytes, reply: bytes,
                     data: bytes, headers: dict[str, str] | None) -> None:
            subscription, callback = direct
            if self._subs.get(sid) is not subscription:  # unsubscribed
                del self._direct[sid]
                return
            # nats-py's own steps for a plain subscription, up to its queue.
            self.stats["in_msgs"] += 1
            self.stats["in_bytes"] += len(data)
            subscription._received += 1
            msg = self._build_message(sid, subject, reply, data, headers)
            if msg:
                _call(callback, msg)

    def try_publish(self, subject: str, payload: bytes, reply: str = "",
                    headers: dict[str, str] | None = None, *, flush: bool = True) -> bool:
        """Publish without awaiting: put the message on the connection's write buffer
        now and kick the flusher, as ``publish`` does when it does not have to wait
        (``flush`` False: the caller calls :meth:`flush_now` after a run of them).

        Returns False, having done nothing, when only ``publish`` can take the message:
        not connected, the write buffer full, a message nats-py refuses (``publish``
        then raises the error), headers that are not :class:`Headers`, or the fast paths
        off (:attr:`fast_paths`).
        """
        if not self.fast_paths or self._status != NatsClient.CONNECTED or not subject:
            return False
        if headers is not None and type(headers) is not Headers:
            return False
        if len(payload) + (0 if headers is None else len(headers.block)) > self._max_payload:
            return False  # the server counts the headers too (see publish)
        if not self._skip_subject_validation:
            try:
                _validate_subject(subject)
                if reply:
                    _validate_subject(reply)
            except BadSubjectError:
                return False
        flush_queue, flusher = self._flush_queue, self._flusher_task
        if flush_queue is None or flusher is None or flusher.done() or flush_queue.full():
            return False
        command = (pub_cmd(subject, reply, payload) if headers is None
                   else hpub_cmd(subject, reply, headers.block, payload))
        if self._max_pending_size > 0 and self._pending_data_size + len(command) > self._max_pending_size:
            return False  # publish flushes first, waiting for the socket
        self._pending.append(command)
        self._pending_data_size += len(command)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += len(payload)
        if flush and flush_queue.empty():
            flush_queue.put_nowait(asyncio.get_running_loop().create_future())
        return True

    def flush_now(self) -> None:
        """Write the connection's write buffer to the socket now, when the socket takes
        it without waiting (nothing is buffered in front of it); else kick nats-py's
        flusher, which writes it on the loop's next turn and waits for the socket.
        Without the fast paths, nothing (``publish`` kicks the flusher itself)."""
        if not self.fast_paths or not self._pending_data_size:
            return
        transport = self._transport
        writer = getattr(transport, "_io_writer", None) if type(transport) is TcpTransport else None
        flush_queue, flusher = self._flush_queue, self._flusher_task
        if (writer is not None and self._status == NatsClient.CONNECTED and flusher is not None
                and not flusher.done() and not writer.transport.get_write_buffer_size()):
            pending = self._pending
            self._pending = []
            self._pending_data_size = 0
            writer.writelines(pending)
        elif flush_queue is not None and flush_queue.empty():
            flush_queue.put_nowait(asyncio.get_running_loop().create_future())


def _block_size(headers: dict[str, str]) -> int:
    """The bytes of ``headers`` encoded as a NATS header block (at least as nats-py encodes them)."""
    if type(headers) is Headers:
        return len(headers.block)
    return 12 + sum(len(str(name).encode()) + len(str(value).encode()) + 4 for name, value in headers.items())


def _keep(cache: dict[bytes, Any], block: bytes, parsed: Any) -> None:
    if len(cache) >= CACHE_BLOCKS:
        cache.clear()
    cache[block] = parsed


_HEAD = b"NATS/1.0\r\n"


def _split_last_line(block: bytes) -> tuple[bytes, str, str] | None:
    """``block`` as its head (a block of all lines but the last) and the name and value
    of its last line, parsed as nats-py parses a line; None when it is not a plain block
    of two lines or more (a status line, nats-py parsing with fast_mail_parser, a last
    line nats-py would skip)."""
    if not block.startswith(_HEAD) or not block.endswith(b"\r\n\r\n") or _parse_email is not None:
        return None
    cut = block.rfind(b"\r\n", len(_HEAD), len(block) - 4)
    if cut < 0:
        return None
    name, sep, value = block[cut + 2:len(block) - 4].partition(b":")
    try:
        key = name.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    if not sep or not key or any(c.isspace() for c in key):
        return None
    return block[:cut + 2] + b"\r\n", key, value.strip().decode("utf-8", "replace")


def _call(callback: Callable[[Msg], None], msg: Msg) -> None:
    try:
        callback(msg)
    except Exception:  # noqa: BLE001 - one message's handler must not stop the connection
        log.exception("handling a message on %s failed", msg.subject)
