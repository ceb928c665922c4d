"""nats-py's protocol parser with a faster loop for what a busy connection mostly reads:
whole MSG and HMSG frames back to back.

nats-py's parser tries a regex per frame, keeps its arguments in a dict and deletes each
control line and each payload from the front of its buffer: ~2.2 µs a frame before any
handler runs. This loop reads frames in place and deletes once per read (~1.3 µs).
Anything else (another operation, a frame not all here yet, a line it does not read)
is left where it is for nats-py's parser, which then finds the state it would have
reached by itself; a malformed frame is nats-py's error to raise, as before.
"""

from __future__ import annotations

from typing import Any

from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser


class FastParser(Parser):
    """:class:`nats.protocol.parser.Parser` with the frame loop above.

    Its client must have ``_deliver_now(sid, subject, reply, payload, headers) -> bool``
    (:class:`broker.Client`): a frame it does not take goes to ``_process_msg``.
    """

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        if self.state == AWAITING_CONTROL_LINE:
            await self._frames(buf)
        if self.buf:
            await super().parse()

    async def _frames(self, buf: bytearray) -> None:
        nc: Any = self.nc
        deliver_now, find = nc._deliver_now, buf.find
        end = len(buf)
        pos = 0
        view = memoryview(buf)
        try:
            while pos < end:
                eol = find(b"\r\n", pos)
                if eol < 0:
                    break
                args = bytes(view[pos:eol]).split()
                # MSG <subject> <sid> [reply] <size>; HMSG ... [reply] <header size> <size>
                count = len(args)
                try:
                    if count in (5, 6) and args[0] == b"HMSG":
                        header_size, has_reply = int(args[-2]), count == 6
                    elif count in (4, 5) and args[0] == b"MSG":
                        header_size, has_reply = 0, count == 5
                    else:
                        break
                    sid, size = int(args[2]), int(args[-1])
                except ValueError:
                    break
                start = eol + 2
                split, stop = start + header_size, start + size
                if not start <= split <= stop or stop + 2 > end:
                    break  # not all here yet (or malformed): nats-py's parser takes it from here
                headers = bytes(view[start:split]) if split > start else None
                payload = bytes(view[split:stop])
                reply = args[3] if has_reply else b""
                pos = stop + 2  # consumed before delivery: a failing handler must not see it twice
                if not deliver_now(sid, args[1], reply, payload, headers):
                    await nc._process_msg(sid, args[1], reply, payload, headers)
                if self.buf is not buf:  # the connection was reset meanwhile
                    return
        finally:
            view.release()
            if pos:
                del buf[:pos]
