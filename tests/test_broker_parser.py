"""broker's FastParser against nats-py's own parser (pure logic: a recording client).

Whatever the stream and however it is cut into reads, the client must see the same
calls in the same order, and a malformed frame must fail the same way.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from moonwire.broker._parser import FastParser

HEADERS = b"NATS/1.0\r\nContent-Type: application/msgpack\r\n\r\n"
STATUS = b"NATS/1.0 503\r\n\r\n"


def hmsg(subject: bytes, sid: int, reply: bytes, headers: bytes, payload: bytes) -> bytes:
    middle = b" " + reply if reply else b""
    return (b"HMSG %s %d%s %d %d\r\n" % (subject, sid, middle, len(headers), len(headers) + len(payload))
            + headers + payload + b"\r\n")


def msg(subject: bytes, sid: int, reply: bytes, payload: bytes) -> bytes:
    middle = b" " + reply if reply else b""
    return b"MSG %s %d%s %d\r\n" % (subject, sid, middle, len(payload)) + payload + b"\r\n"


STREAM = b"".join([
    b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n",
    msg(b"a.b", 1, b"", b"hello"),
    msg(b"a.b", 1, b"_INBOX.x.1", b""),
    hmsg(b"mw.fn.app:double", 7, b"_INBOX.abc.42", HEADERS, b"\x81\xa4args\x91\x05"),
    hmsg(b"_INBOX.abc.1", 3, b"", STATUS, b""),  # a no-responders status: headers only
    b"PING\r\n",
    msg(b"t", 2, b"r", b"MSG t 2 5\r\nPING\r\n"),  # a payload that looks like frames
    b"+OK\r\n",
    hmsg(b"t", 2, b"", HEADERS, b"x" * 3000),
    b"PONG\r\n",
    *[hmsg(b"_INBOX.abc.%d" % i, 3, b"", HEADERS, b"\x81\xa6result%c" % i) for i in range(40)],
    msg(b"t", 2, b"", b"last"),
])


class Recorder:
    """The parts of a nats-py client a parser calls, recording each call."""

    def __init__(self, take_direct: bool) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.take_direct = take_direct

    def _deliver_now(self, sid: int, subject: bytes, reply: bytes, payload: bytes, headers: bytes | None) -> bool:
        if self.take_direct and sid == 3:
            self.calls.append(("msg", sid, bytes(subject), bytes(reply), payload, headers))
            return True
        return False

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, payload: bytes,
                           headers: bytes | None) -> None:
        self.calls.append(("msg", sid, bytes(subject), bytes(reply), payload, headers))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.calls.append(("info", info))

    async def _process_err(self, message: str) -> None:
        self.calls.append(("err", message))


async def feed(parser: Parser, stream: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in [*cuts, len(stream)]:
        await parser.parse(stream[start:cut])
        start = cut


async def test_whole_reads_give_what_nats_py_gives() -> None:
    theirs, ours = Recorder(False), Recorder(True)
    await Parser(theirs).parse(STREAM)
    await FastParser(ours).parse(STREAM)
    assert len(theirs.calls) == 50  # every frame and operation above (+OK calls nothing)
    assert ours.calls == theirs.calls


@pytest.mark.parametrize("seed", range(40))
async def test_any_cut_into_reads_gives_what_nats_py_gives(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.choice([1, 3, 20, 200])))
    theirs, ours = Recorder(False), Recorder(seed % 2 == 0)
    await feed(Parser(theirs), STREAM, cuts)
    parser = FastParser(ours)
    await feed(parser, STREAM, cuts)
    assert ours.calls == theirs.calls
    assert not parser.buf


async def test_every_single_cut_gives_what_nats_py_gives() -> None:
    stream = STREAM[:2000]
    expected = Recorder(False)
    await Parser(expected).parse(stream)
    for cut in range(1, len(stream)):
        ours = Recorder(True)
        await feed(FastParser(ours), stream, [cut])
        assert ours.calls == expected.calls, cut


@pytest.mark.parametrize("frame", [
    b"MSG a.b x 5\r\nhello\r\n",  # a sid that is not a number
    b"HMSG a.b 1 _INBOX.x 60 50\r\n" + b"x" * 50 + b"\r\n",  # headers longer than the frame
    b"MSG a.b 1 -5\r\nhello\r\n",
    b"BOGUS op\r\n",
])
async def test_a_malformed_frame_fails_as_nats_py_fails(frame: bytes) -> None:
    stream = msg(b"ok", 1, b"", b"first") + frame
    outcomes = []
    for parser_class, client in ((Parser, Recorder(False)), (FastParser, Recorder(True))):
        try:
            await parser_class(client).parse(stream)
            outcomes.append(("ok", client.calls))
        except ProtocolError as err:
            outcomes.append(("error", type(err), client.calls))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][-1][0][:2] == ("msg", 1)  # the good frame before it was delivered


async def test_a_handler_that_raises_does_not_get_its_frame_again() -> None:
    class Failing(Recorder):
        async def _process_msg(self, sid: int, subject: bytes, reply: bytes, payload: bytes,
                               headers: bytes | None) -> None:
            await super()._process_msg(sid, subject, reply, payload, headers)
            if payload == b"boom":
                raise RuntimeError("handler failed")

    client = Failing(False)
    parser = FastParser(client)
    with pytest.raises(RuntimeError):
        await parser.parse(msg(b"t", 1, b"", b"boom") + msg(b"t", 1, b"", b"next"))
    await parser.parse(b"")
    assert [call[4] for call in client.calls] == [b"boom", b"next"]


async def test_a_reset_while_delivering_drops_the_rest_of_the_read_as_nats_py_does() -> None:
    # nats-py resets the parser when the connection is lost; what the old read held is gone.
    outcomes = []
    for parser_class in (Parser, FastParser):
        class Resetting(Recorder):
            async def _process_msg(self, sid: int, subject: bytes, reply: bytes, payload: bytes,
                                   headers: bytes | None) -> None:
                await super()._process_msg(sid, subject, reply, payload, headers)
                if payload == b"reset":
                    parser.reset()

        client = Resetting(False)
        parser = parser_class(client)
        await parser.parse(msg(b"t", 1, b"", b"reset") + msg(b"t", 1, b"", b"stale"))
        await parser.parse(msg(b"t", 1, b"", b"fresh"))
        outcomes.append([call[4] for call in client.calls])
    assert outcomes[0] == outcomes[1] == [b"reset", b"fresh"]
