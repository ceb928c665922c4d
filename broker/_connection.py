"""Connecting to NATS with the options a deployment needs, and one clear error when it fails."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field

import nats

from ._client import Client

log = logging.getLogger("moonwire.broker")


class BrokerUnavailable(Exception):
    """No NATS server answered at any of the configured URLs."""

    def __init__(self, servers: list[str], cause: BaseException | None) -> None:
        self.servers = servers
        self.cause = cause
        reason = f": {cause}" if cause is not None and str(cause) else ""
        super().__init__(f"cannot connect to NATS at {', '.join(servers)}{reason}")


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Everything nats-py needs to reach a server. Credentials are passed through unchanged."""

    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    name: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkeys_seed: str | None = None
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_hostname: str | None = None
    connect_timeout: float = 2.0


def tls_context(options: ConnectOptions) -> ssl.SSLContext | None:
    """An SSL context when any TLS file is configured, else None (plain or URL-driven TLS)."""
    if not (options.tls_ca_file or options.tls_cert_file):
        return None
    context = ssl.create_default_context(cafile=options.tls_ca_file)
    if options.tls_cert_file:
        context.load_cert_chain(options.tls_cert_file, options.tls_key_file)
    return context


async def connect(options: ConnectOptions) -> Client:
    """Connect, or raise :class:`BrokerUnavailable` naming the URLs.

    The first connection is not retried: a node that cannot reach its broker at start
    should say so and exit, not hang. Once connected, nats-py reconnects for ever.

    Raises:
        BrokerUnavailable: no server accepted the connection.
    """
    kwargs: dict[str, object] = {
        "servers": options.servers,
        "name": options.name,
        "connect_timeout": options.connect_timeout,
        "allow_reconnect": True,
        # nats-py applies this to the first connect too, and -1 would retry it for
        # ever; allow one retry per server now and lift the limit once connected.
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.5,
    }
    if options.user is not None:
        kwargs["user"] = options.user
        kwargs["password"] = options.password
    if options.token is not None:
        kwargs["token"] = options.token
    if options.nkeys_seed is not None:
        kwargs["nkeys_seed"] = options.nkeys_seed
    if options.creds_file is not None:
        kwargs["user_credentials"] = options.creds_file
    context = tls_context(options)
    if context is not None:
        kwargs["tls"] = context
        if options.tls_hostname:
            kwargs["tls_hostname"] = options.tls_hostname

    errors: list[BaseException] = []
    connected = False

    async def on_error(err: Exception) -> None:
        if isinstance(err, nats.errors.SlowConsumerError):
            # nats-py dropped a message: its subscription's pending queue was full. A
            # loss, so counted (and logged once per subject per interval, not per message).
            subject = err.sub.subject if err.sub is not None else err.subject
            client.slow_consumer_drops.note(subject, "%s: dropped a message on %s (subscription %s): its pending "
                                            "queue is full (slow consumer)", options.name, err.subject, subject)
        elif connected:
            log.warning("NATS error on %s: %s", options.name, err)
        else:
            errors.append(err)

    async def on_disconnected() -> None:
        if not (client.is_closed or client.is_draining):  # our own close is not an outage
            log.warning("disconnected from NATS; reconnecting")

    async def on_reconnected() -> None:
        log.info("reconnected to NATS at %s", client.connected_url.netloc if client.connected_url else "?")

    try:
        # The error callback keeps the real cause for the message.
        client = Client()
        await client.connect(  # type: ignore[arg-type]
            **kwargs, error_cb=on_error, disconnected_cb=on_disconnected, reconnected_cb=on_reconnected
        )
        connected = True
        client.options["max_reconnect_attempts"] = -1
        return client
    except (OSError, asyncio.TimeoutError, nats.errors.Error) as err:
        cause: BaseException = errors[0] if errors else err
        raise BrokerUnavailable(list(options.servers), cause) from err
