"""Service discovery the NATS way: each node is one service of the NATS services
protocol (ADR-32, what ``nats micro ls/info/stats`` speak), named ``moonwire``, whose id
is the node's name, with one endpoint per function the node serves on
``<prefix>.fn.<id>``.

The endpoints are moonwire's own subscriptions (``Functions.serve``: direct callbacks
from the read loop, queue group ``moonwire``); only the ``$SRV`` subjects are answered
here. nats-py's ``nats.micro.Service`` could not be used as it is: every endpoint it
lists is a subscription it makes with its own handler, where moonwire's fast path
already serves. Its protocol constants and subject scheme are used.

Answers (JSON, on the control connection's outbox, like every reply of the node):

* ``$SRV.PING[.moonwire[.<node>]]``: ``io.nats.micro.v1.ping_response``;
* ``$SRV.INFO[...]``: ``io.nats.micro.v1.info_response``, the endpoints as
  ``Functions.served_entries()`` lists them now;
* ``$SRV.STATS[...]``: ``io.nats.micro.v1.stats_response``: per endpoint the same
  counts the node's metrics export (``Functions.calls``), so a local ``funcs.call`` of a
  function this node serves counts too: it runs that endpoint's code without NATS.

``$SRV`` is a public subject, so answers are rate limited (:data:`RATE` a second, in
bursts of up to :data:`RATE`); requests past that, and requests without a reply
subject, are counted and dropped. The request body is ignored, as the protocol says.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.service import (INFO_RESPONSE_TYPE, PING_RESPONSE_TYPE, SEMVER_REGEX, STATS_RESPONSE_TYPE,
                                ServiceVerb, control_subject)

from moonwire.broker import Client

from ._counts import CallStats

log = logging.getLogger("moonwire.telemetry")

SERVICE_NAME = "moonwire"
RATE = 200.0
"""``$SRV`` answers a second a node gives at most (a burst of as many)."""
_INVALID = re.compile(r"[^A-Za-z0-9_-]")


def endpoint_name(entry_id: str) -> str:
    """An entry id as an ADR-32 name (letters, digits, ``-``, ``_``): ``app:hello`` ->
    ``app_hello``. Two ids may share a name (the protocol allows it); the endpoint's
    metadata carries the id itself."""
    return _INVALID.sub("_", entry_id) or "_"


def service_version(version: str) -> str:
    """``version`` if it is semantic (the protocol requires it), else ``0.0.0``."""
    return version if SEMVER_REGEX.match(version) else "0.0.0"


class MicroService:
    """This node's answers on ``$SRV``.

    ``served()`` lists the entry ids whose ``<prefix>.fn.<id>`` subject the node serves;
    ``calls`` has their counts; ``publish(subject, body)`` sends an answer.
    """

    def __init__(self, nats: Client, publish: Callable[[str, bytes], None], *, node: str, version: str,
                 subject_of: Callable[[str], str], queue_group: str, served: Callable[[], list[str]],
                 calls: Mapping[str, CallStats], metadata: dict[str, str]) -> None:
        self.nats = nats
        self.publish = publish
        self.node = node
        self.version = service_version(version)
        self.subject_of = subject_of
        self.queue_group = queue_group
        self.served = served
        self.calls = calls
        self.metadata = {"node": node, **metadata}
        self.requests: dict[tuple[str, str], int] = {}
        """``$SRV`` requests by (verb, result): answered, limited, no_reply."""
        self.started = datetime.now(timezone.utc)
        self._tokens = RATE
        self._refilled = time.monotonic()
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        self.started = datetime.now(timezone.utc)
        for verb in ServiceVerb:
            for name, id in ((None, None), (SERVICE_NAME, None), (SERVICE_NAME, self.node)):
                subject = control_subject(verb, name=name, id=id)
                self._subscriptions.append(await self.nats.subscribe_direct(
                    subject, lambda msg, verb=verb: self._on_request(msg, verb)))

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.unsubscribe()

    def _on_request(self, msg: Msg, verb: ServiceVerb) -> None:
        # Called from the read loop: nothing may raise into it.
        key = verb.value.lower()
        if not msg.reply:
            result = "no_reply"
        elif not self._take():
            result = "limited"
        else:
            result = "answered"
            try:
                self.publish(msg.reply, json.dumps(self.answer(verb)).encode())
            except Exception:  # noqa: BLE001 - a bug here is logged, never the read loop's
                log.exception("answering %s failed", msg.subject)
                result = "failed"
        self.requests[(key, result)] = self.requests.get((key, result), 0) + 1

    def _take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(RATE, self._tokens + (now - self._refilled) * RATE)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    # ------------------------------------------------------------ the answers

    def answer(self, verb: ServiceVerb) -> dict[str, Any]:
        """The body of the answer to ``verb``, as ADR-32's ``io.nats.micro.v1`` schemas say."""
        identity = {"name": SERVICE_NAME, "id": self.node, "version": self.version, "metadata": self.metadata}
        if verb is ServiceVerb.PING:
            return {"type": PING_RESPONSE_TYPE, **identity}
        entries = self.served()
        if verb is ServiceVerb.INFO:
            return {"type": INFO_RESPONSE_TYPE, **identity,
                    "description": f"moonwire node {self.node}: its functions, each on its own subject",
                    "endpoints": [{"name": endpoint_name(entry), "subject": self.subject_of(entry),
                                   "queue_group": self.queue_group, "metadata": {"entry": entry}}
                                  for entry in entries]}
        return {"type": STATS_RESPONSE_TYPE, **identity,
                "started": self.started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "endpoints": [self._endpoint_stats(entry) for entry in entries]}

    def _endpoint_stats(self, entry: str) -> dict[str, Any]:
        stats = self.calls.get(entry)
        requests = stats.calls if stats is not None else 0
        processing = int(stats.latency.sum * 1e9) if stats is not None else 0
        return {"name": endpoint_name(entry), "subject": self.subject_of(entry), "queue_group": self.queue_group,
                "num_requests": requests, "num_errors": stats.error_count if stats is not None else 0,
                "last_error": stats.last_error if stats is not None else "",
                "processing_time": processing, "average_processing_time": processing // requests if requests else 0,
                "data": {}}
