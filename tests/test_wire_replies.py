"""The one reply shape (node/wire/_replies.py, docs/wire.md): what every request a node
answers looks like in msgpack and JSON, and how a request that got no reply fails."""

from __future__ import annotations

import asyncio
import json
import logging

import msgpack
import pytest
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from moonwire.broker import CONTENT_TYPE, MSGPACK, NoResponders, RequestTimeout, TaskSet
from moonwire.lua import Kind, MoonwireError, Outcome
from moonwire.node.wire import JSON, Unanswered, Why, encode_reply, reply_outcome, why_unanswered


def reply_msg(body: bytes, content_type: str) -> Msg:
    return Msg(None, subject="_INBOX.x", data=body, headers={CONTENT_TYPE: content_type})  # type: ignore[arg-type]


def unavailable(what: str):  # noqa: ANN201 - a Describe
    return lambda missing: MoonwireError(f"{what}: {missing}", Kind.UNAVAILABLE, retryable=True)


NESTED = MoonwireError("linked process failed", Kind.INTERNAL, details={
    "from": "{n1@h|a-1}", "error": MoonwireError("disk on fire", Kind.UNAVAILABLE, retryable=True)})


@pytest.mark.parametrize("content_type", [MSGPACK, JSON, None])
def test_a_result_is_result(content_type: str | None) -> None:
    body, headers = encode_reply(Outcome(value={"n": [1, 2]}), content_type)
    wire = MSGPACK if content_type == MSGPACK else JSON
    assert headers[CONTENT_TYPE] == wire
    decoded = msgpack.unpackb(body) if wire == MSGPACK else json.loads(body)
    assert decoded == {"result": {"n": [1, 2]}}
    assert reply_outcome(reply_msg(body, wire), unavailable("x"), 1.0) == Outcome(value={"n": [1, 2]})


@pytest.mark.parametrize("content_type", [MSGPACK, JSON])
def test_an_error_is_a_plain_map_of_its_fields_at_the_top(content_type: str) -> None:
    body, _ = encode_reply(Outcome(error=NESTED), content_type)
    top = (msgpack.unpackb(body) if content_type == MSGPACK else json.loads(body))["error"]
    # An outside client reads kind and message without knowing moonwire's extension.
    assert isinstance(top, dict) and (top["kind"], top["message"]) == ("Internal", "linked process failed")
    outcome = reply_outcome(reply_msg(body, content_type), unavailable("x"), 1.0)
    assert outcome.error is not None and outcome.error.kind == Kind.INTERNAL
    nested = outcome.error.details["error"]
    assert isinstance(nested, MoonwireError) or nested["message"] == "disk on fire"
    if content_type == MSGPACK:  # the nested error keeps its type inside the cluster
        assert isinstance(nested, MoonwireError) and nested.retryable is True


def test_a_result_the_wire_cannot_hold_becomes_an_internal_error_that_says_why() -> None:
    body, _ = encode_reply(Outcome(value={"f": object()}), MSGPACK)
    outcome = reply_outcome(reply_msg(body, MSGPACK), unavailable("x"), 1.0)
    assert outcome.error is not None and outcome.error.kind == Kind.INTERNAL
    assert "cannot encode the answer" in outcome.error.message


def test_an_outside_responder_may_answer_an_error_as_text() -> None:
    outcome = reply_outcome(reply_msg(b'{"error": "out of stock"}', JSON), unavailable("x"), 1.0)
    assert outcome.error is not None and (outcome.error.message, outcome.error.kind) == ("out of stock", Kind.UNKNOWN)


@pytest.mark.parametrize("body", [b"[1, 2]", b'{"neither": 1}', b'{"error": 3}', b'{"error": {"kind": "X"}}',
                                  b'{"error": {"message": 1}}', b"\xc1"])
def test_a_malformed_reply_is_an_error_value(body: bytes) -> None:
    outcome = reply_outcome(reply_msg(body, MSGPACK if body == b"\xc1" else JSON), unavailable("x"), 1.0)
    assert outcome.error is not None and outcome.error.kind == Kind.INVALID


@pytest.mark.parametrize(("happened", "why"), [
    (NoResponders(), Why.NO_RESPONDERS), (NoRespondersError(), Why.NO_RESPONDERS),
    (RequestTimeout(), Why.TIMEOUT), (NatsTimeout(), Why.TIMEOUT), (ConnectionClosedError(), Why.CLOSED),
    (asyncio.CancelledError(), Why.STOPPING)])
def test_every_nats_failure_is_classified_in_one_place(happened: BaseException, why: Why) -> None:
    assert why_unanswered(happened) is why
    seen: list[Unanswered] = []

    def describe(missing: Unanswered) -> MoonwireError:
        seen.append(missing)
        return MoonwireError(str(missing), Kind.UNAVAILABLE)

    outcome = reply_outcome(happened, describe, 2.0)
    assert seen == [Unanswered(why, 2.0)] and outcome.error is not None


async def test_a_task_set_logs_a_failure_forgets_what_ended_and_stops_the_rest(caplog) -> None:
    tasks = TaskSet(logging.getLogger("test.tasks"))
    release = asyncio.Event()

    async def fail() -> None:
        raise RuntimeError("boom")

    async def wait() -> None:
        await release.wait()

    failing = tasks.start(fail(), "the failing one")
    waiting = tasks.start(wait(), "the waiting one")
    with caplog.at_level(logging.ERROR, logger="test.tasks"):
        await asyncio.wait([failing])
        await asyncio.sleep(0)  # done callbacks run on the next turn
    assert len(tasks) == 1
    assert [r.getMessage() for r in caplog.records] == ["the failing one failed: boom"]
    await tasks.stop()
    assert waiting.cancelled() and len(tasks) == 0
