"""Connecting to NATS with the options a deployment needs, and one clear error when it fails."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import nats

from ._client import Client
from ._credentials import BadCredentials, check_keys, load_tls

log = logging.getLogger("moonwire.broker")

_PERMISSIONS = "permissions violation"
"""What the server's error says when it refuses this identity a subject (nats-py passes
it to the error callback and keeps the connection)."""


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
    """An SSL context when any TLS file is configured, else None (plain or URL-driven TLS).

    Raises:
        BadCredentials: a CA, certificate or key file is missing or does not load.
    """
    return load_tls(options.tls_ca_file, options.tls_cert_file, options.tls_key_file)


def _tls(options: ConnectOptions, context: ssl.SSLContext | None) -> bool:
    return context is not None or any(url.startswith("tls://") for url in options.servers)


async def connect(options: ConnectOptions, *, on_denied: Callable[[str], None] | None = None) -> Client:
    """Connect, or raise :class:`BrokerUnavailable` naming the URLs.

    The first connection is not retried: a node that cannot reach its broker at start
    should say so and exit, not hang. Once connected, nats-py reconnects for ever.
    The credential files are read first, so a bad one is named before any server is asked.

    Args:
        on_denied: called with the server's message when it refuses a publish or a
            subscription to this identity (a permissions violation); without it, that
            is logged as a warning.

    Raises:
        BrokerUnavailable: no server accepted the connection, or the credentials are
            unusable (the cause names the file) or were refused.
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
    try:
        check_keys(options.creds_file, options.nkeys_seed)
        context = tls_context(options)
    except BadCredentials as err:
        raise BrokerUnavailable(list(options.servers), err) from err
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
        elif connected and on_denied is not None and _PERMISSIONS in str(err).lower():
            on_denied(str(err))
        elif connected:
            log.warning("NATS error on %s: %s", options.name, err)
        else:
            errors.append(err)
            if isinstance(err, ssl.SSLError):
                # A certificate the other side refuses stays refused: end the first
                # connect now, raised out of nats-py's retry loop, without its close:
                # nats-py 2.16 then waits for ever for the failed TLS transport to
                # close (its retry, and a close() of the client, both hung here).
                raise err

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
        # The real cause, for the message: a TLS refusal may follow a first attempt
        # that only saw the connection drop.
        cause: BaseException = next((e for e in errors if isinstance(e, ssl.SSLError)), errors[0] if errors else err)
        if _tls(options, context) and isinstance(cause, (ConnectionError, nats.errors.UnexpectedEOF)):
            # A TLS 1.3 server refuses a client certificate after the handshake, so the
            # refusal often arrives as a dropped connection, not as an alert.
            cause = ConnectionError(f"the server closed the TLS connection ({cause or type(cause).__name__}): it "
                                    f"may require a client certificate signed by a CA it trusts (nats.tls.cert_file, "
                                    f"nats.tls.key_file)")
        if isinstance(cause, nats.errors.AuthorizationError) or "authorization violation" in str(cause).lower():
            cause = PermissionError("the server refused the credentials (authorization violation)")
        raise BrokerUnavailable(list(options.servers), cause) from err
