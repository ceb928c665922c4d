"""The control plane, inbound (DESIGN §5-§6): this node serves its control subject
``<prefix>.ctl.<node>.<verb>``, the survey subjects ``<prefix>.nodes.<verb>`` (asked of
every node, so only ``info`` and ``ps``), and the spawn queue group of every host it
runs, running each verb on the process table (``ProcessTable.control``).

Clients outside moonwire use the same subjects with plain JSON (``docs/wire.md``): a spawn
body may be the simple ``{"entry", "args", "name"?, ...}`` (answered ``{"pid": ...}``)
instead of moonwire's own ``{"request", "parent"}`` (answered with the PID itself), an
empty body is ``{}``, and each verb's fields are checked here before the table acts, so
a malformed request is answered Invalid with nothing done.

Every request ends in exactly one answer in the one reply shape (``wire/_replies.py``),
or, without a reply subject, in nothing when it was served and in a dead letter when it
was not. A cancel or terminate runs only once the stream from its sender's node has
delivered what that node sent before it (``Mw-After``, ``broker/_streams.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from moonwire.broker import Outbox, Pid, Streams, Subjects
from moonwire.lua import MoonwireError, Outcome, Pending, internal, invalid

from ..wire import (CONTENT_TYPE, DeadLetter, answer, decode_outside_spawn, encode_spawn, taken_headers, tell_taken,
                    to_json, unpack)
from ._remote import ORDERED_VERBS, SPAWN_QUEUE
from ._table import ProcessTable

log = logging.getLogger("moonwire.control")

SURVEY_VERBS = frozenset({"info", "ps"})
CONTROL_VERBS = frozenset({"monitor", "link", "unmonitor", "unlink", "cancel", "terminate", "spawn", "lookup",
                           "abandon"}) | SURVEY_VERBS
_WILDCARDS = frozenset("*>")
"""NATS wildcards: a name holding one was surely meant as a pattern, which no lookup is."""


class ControlPlane:
    """This node's answers to other nodes' (and the CLI's) process operations."""

    def __init__(self, nats: NatsClient, outbox: Outbox, subjects: Subjects, node: str, table: ProcessTable,
                 streams: Streams[Any], dead_letter: DeadLetter) -> None:
        self.nats = nats
        self.outbox = outbox
        self.subjects = subjects
        self.node = node
        self.table = table
        self.streams = streams
        """Where a cancel or terminate waits for the messages its sender sent before it."""
        self.dead_letter = dead_letter
        """Where a request without a reply subject that cannot be served goes."""
        self._subscriptions: list[Subscription] = []
        self._taken = taken_headers(node, table.pids.epoch)

    async def start(self) -> None:
        """Serve this node's control subject, the survey subjects, and the spawn queue
        group of every host it runs (``spawn_hosts``)."""
        subscribe = self.nats.subscribe
        self._subscriptions.append(await subscribe(self.subjects.control(self.node, "*"), cb=self._on_control))
        self._subscriptions.append(await subscribe(self.subjects.survey("*"), cb=self._on_survey))
        for host in self.table.spawn_hosts():
            self._subscriptions.append(await subscribe(self.subjects.spawn(host), queue=SPAWN_QUEUE,
                                                       cb=self._on_spawn))

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.unsubscribe()

    async def _on_control(self, msg: Msg) -> None:
        self._run_verb(msg, CONTROL_VERBS)

    async def _on_survey(self, msg: Msg) -> None:
        self._run_verb(msg, SURVEY_VERBS)  # asked of every node: nothing that acts

    def _run_verb(self, msg: Msg, allowed: frozenset[str]) -> None:
        verb = msg.subject.rpartition(".")[2]

        def answer() -> None:
            self._answer(msg, lambda data: self._control(verb, data) if verb in allowed else _unknown(verb))

        if verb not in ORDERED_VERBS:
            answer()
            return
        try:
            self.streams.when_delivered(msg.headers, answer)
        except ValueError as err:
            self._reply(msg, Outcome(error=invalid(f"control request on {msg.subject}: {err}")))

    async def _on_spawn(self, msg: Msg) -> None:
        host = msg.subject[len(self.subjects.spawn("")):]
        self._answer(msg, lambda data: self._spawn(data, host))

    def _control(self, verb: str, data: dict[str, Any]) -> Any:
        """Run ``verb`` on the table once its fields are checked (``spawn``: either form)."""
        if verb == "spawn":
            return self._spawn(data, None)
        _check_fields(verb, data)
        if verb == "abandon":  # a node gave up a call served here (functions/_served.py)
            served = self.table.functions.served
            return served is not None and served.abandon(data["reply"])
        value = self.table.control(verb, data)
        return _fitting(value, self.nats.max_payload) if verb in SURVEY_VERBS else value

    def _spawn(self, data: dict[str, Any], host: str | None) -> Any:
        """A spawn in moonwire's own form (``{"request", "parent"}``: the answer is the PID)
        or in the outside form (``{"entry", ...}``: the answer is ``{"pid": ...}``); both
        run the one spawn path of the table. ``host`` is the spawn subject's, None on the
        node's control subject."""
        if "request" in data:
            return self.table.control("spawn", data)
        value = self.table.control("spawn", encode_spawn(decode_outside_spawn(data, host), ""))
        if not isinstance(value, Pending):
            return {"pid": value}
        wrapped = Pending(value.drop)
        value.listen(lambda outcome: wrapped.settle(Outcome(value={"pid": outcome.value}) if outcome.ok else outcome))
        return wrapped

    def _answer(self, msg: Msg, run: Callable[[dict[str, Any]], Any]) -> None:
        """The one body of every inbound handler: decode, run, answer. Exactly one exit:
        the answer (a value or an error) to the reply subject; without one, an error
        goes to the dead-letter queue. Nothing raises into the client's read loop."""
        try:
            data = unpack(msg.data, (msg.headers or {}).get(CONTENT_TYPE))
            if data is None:  # an empty body: `nats req mw.nodes.ps ''`
                data = {}
            if not isinstance(data, dict):
                raise invalid("a control request body must be a map")
            value = run(data)
            if isinstance(value, Pending):  # answered later (a workflow start, say): a node that asks is told
                tell_taken(msg, self.outbox.publish_nowait, self._taken)
                value.listen(lambda outcome: self._reply(msg, outcome))
                return
            outcome = Outcome(value=value)
        except MoonwireError as err:
            outcome = Outcome(error=err)
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # a field missing or of the wrong type
            outcome = Outcome(error=invalid(f"malformed control request on {msg.subject}: "
                                            f"{type(err).__name__}: {err}"))
        except Exception as err:  # noqa: BLE001 - a bug here must not reach the read loop; it is answered
            log.exception("control request on %s failed", msg.subject)
            outcome = Outcome(error=internal(f"control request on {msg.subject} failed: {type(err).__name__}: {err}"))
        self._reply(msg, outcome)

    def _reply(self, msg: Msg, outcome: Outcome) -> None:
        answer(msg, outcome, self.outbox.publish_nowait, self.dead_letter, self.nats.max_payload)


def _fitting(info: Any, max_payload: int) -> Any:
    """A ``ps`` answer whose process list is cut to what one NATS message holds (its
    counts stay exact): a reply over the server's max_payload is never published, and
    the node would look silent (``moonwire top``)."""
    listed = info.get("list") if isinstance(info, dict) else None
    room = max_payload - 1024  # the reply's map and headers
    if not listed or max_payload <= 0:
        return info
    size = len(to_json({"result": info}))  # a JSON request is answered in JSON, the longer
    while size > room and listed:
        listed = listed[:int(len(listed) * room / size * 0.95)]
        info["list"] = listed
        size = len(to_json({"result": info}))
    return info


def _unknown(verb: str) -> Any:
    raise invalid(f"unknown control request {verb!r}")


def _check_fields(verb: str, data: dict[str, Any]) -> None:
    """Refuse (Invalid) a request whose fields an outside client got wrong, before the
    table acts on it: the table reads fields leniently (``str(...)``) for its own nodes.

    Raises:
        MoonwireError: Invalid, naming the field.
    """
    if verb == "lookup":
        name = data.get("name")
        if not (isinstance(name, str) and name and _WILDCARDS.isdisjoint(name)):
            raise invalid("malformed lookup: 'name' must be a non-empty text without wildcards (* >): "
                          "a lookup is of one exact name")
        if data.get("scope", "cluster") not in ("cluster", "local"):
            raise invalid("malformed lookup: 'scope' must be \"cluster\" (the default: cluster-wide, then this "
                          "node's) or \"local\" (this node's registry only)")
    elif verb in ("cancel", "terminate"):
        target = data.get("target")
        if not (isinstance(target, str) and Pid.parse(target) is not None):
            raise invalid(f"malformed {verb}: 'target' must be a PID {{node@host|uid}}")
        for field in ("by", "reason"):
            if not isinstance(data.get(field, ""), str):
                raise invalid(f"malformed {verb}: {field!r} must be a text")
    elif verb == "abandon":
        if not isinstance(data.get("reply"), str):
            raise invalid("malformed abandon: 'reply' must be the reply subject of a call")
    elif verb in SURVEY_VERBS:
        limit = data.get("limit", 0)
        if not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0):
            raise invalid(f"malformed {verb}: 'limit' must be a whole number >= 0")

