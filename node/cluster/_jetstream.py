"""JetStream for the cluster room: opening a key-value bucket, and one bound and one
conversion for every round trip, so that no call hangs and every failure of the store
reaches the caller as a :class:`MoonwireError` of kind Unavailable.

nats-py's own timeouts are not enough: a request made while the client reconnects
waits in its pending buffer, and ``KeyValue.create`` on a deleted key makes two
requests, each with the full client timeout. So each operation as a whole runs under
``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from moonwire.lua import Kind, MoonwireError

T = TypeVar("T")

WRONG_LAST_SEQUENCE = (10071, 10164)
"""JetStream's error codes for a conditional write whose expected revision was not the
key's last (``JSStreamWrongLastSequenceErrF``, ``...ConstantErr``)."""


class Conflict(Exception):
    """A conditional write lost: the key's revision was not the one expected."""


def unavailable(message: str) -> MoonwireError:
    return MoonwireError(message, Kind.UNAVAILABLE, retryable=True)


async def bounded(work: Awaitable[T], timeout: float, what: str) -> T:
    """``await work`` within ``timeout`` seconds.

    Raises:
        Conflict: a conditional write found another revision.
        MoonwireError: Unavailable, naming ``what``: no answer within ``timeout``, no
            JetStream on the server (no responders), the connection closed, or any
            other error from JetStream.
    """
    try:
        async with asyncio.timeout(timeout):
            return await work
    except nats.js.errors.KeyWrongLastSequenceError as err:
        raise Conflict(str(err)) from err
    except nats.js.errors.APIError as err:
        if err.err_code in WRONG_LAST_SEQUENCE:
            raise Conflict(str(err)) from err
        if isinstance(err, nats.js.errors.ServiceUnavailableError) and err.code is None:
            raise unavailable(f"{what}: JetStream is not enabled on the NATS server (no responders)") from err
        raise unavailable(f"{what}: JetStream refused: {err.description or err}") from err
    except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError) as err:
        raise unavailable(f"{what}: JetStream is not enabled on the NATS server (no responders)") from err
    except TimeoutError as err:  # asyncio's, and nats.errors.TimeoutError is one too
        raise unavailable(f"{what}: JetStream did not answer within {timeout:g}s") from err
    except nats.errors.Error as err:
        raise unavailable(f"{what}: {type(err).__name__}: {err}") from err


async def open_bucket(client: NatsClient, bucket: str, *, replicas: int, timeout: float,
                      description: str = "moonwire cluster names (docs/cluster.md)") -> KeyValue:
    """The key-value bucket ``bucket``, created when missing (history 1, file storage,
    ``replicas`` copies). A bucket that exists is used as it is, whatever its replicas:
    changing them is an operator's decision (``nats kv edit``), not a node's at start.

    Raises:
        MoonwireError: Unavailable (see :func:`bounded`).
    """
    js = client.jetstream(timeout=timeout)

    async def existing() -> KeyValue | None:
        try:
            return await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            return None

    what = f"opening the key-value bucket {bucket!r}"
    kv = await bounded(existing(), timeout, what)
    if kv is not None:
        return kv
    config = KeyValueConfig(bucket=bucket, history=1, replicas=replicas, storage=StorageType.FILE,
                            description=description)
    try:
        return await bounded(js.create_key_value(config), timeout, f"creating the key-value bucket {bucket!r}")
    except MoonwireError:
        # Another node may have created it at the same moment with other settings
        # ("stream name already in use with a different configuration"): use theirs.
        kv = await bounded(existing(), timeout, what)
        if kv is None:
            raise
        return kv
