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
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KV_DEL, KV_OP, KeyValue

from moonwire.broker import TaskSet
from moonwire.lua import Kind, MoonwireError

log = logging.getLogger("moonwire.cluster")
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


def replicas_for(client: NatsClient) -> int:
    """How many copies of a bucket suit the NATS deployment ``client`` is connected to:
    one on a lone server; on a cluster, as many as it has servers, at most 3 (Raft's
    usual size: a quorum survives losing one). Read from the server's INFO, which names
    the cluster and lists its servers' client URLs."""
    info = getattr(client, "_server_info", None) or {}
    if not info.get("cluster"):
        return 1
    return max(1, min(3, len(info.get("connect_urls") or ())))


WATCH_HEARTBEAT = 1.0
"""Seconds between the idle heartbeats of a bucket's watch. nats-py's KV watch leaves
its ordered consumer at 5 s and recreates a consumer whose server died only after two
missed heartbeats: a replica then misses changes for 10-20 s. At 1 s, for 2-3 s."""


class _HeartbeatingJetStream:
    """A JetStream context whose subscriptions ask for idle heartbeats every ``every``
    seconds (what :meth:`KeyValue.watch` does not let its caller set)."""

    def __init__(self, js: Any, every: float) -> None:
        self._js = js
        self._every = every

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("idle_heartbeat", self._every)
        return await self._js.subscribe(*args, **kwargs)


def watch_all(kv: KeyValue) -> Awaitable[KeyValue.KeyWatcher]:
    """``kv.watchall()`` with the watch's heartbeat at :data:`WATCH_HEARTBEAT`. Built
    from the bucket's private fields (nats-py 2.16, pinned); without them, nats-py's own."""
    try:
        # The fields KeyValue.__init__ takes, as nats-py's JetStreamContext.key_value fills them.
        quicker = KeyValue(name=kv._name, stream=kv._stream, pre=kv._pre,
                           js=_HeartbeatingJetStream(kv._js, WATCH_HEARTBEAT), direct=kv._direct)
    except AttributeError:  # another nats-py: its own heartbeat
        return kv.watchall()
    return quicker.watchall()


async def follow_bucket(kv: KeyValue, apply: Callable[[KeyValue.Entry], None], tasks: TaskSet, *,
                        timeout: float, what: str) -> KeyValue.KeyWatcher:
    """Watch every key of ``kv``: hand ``apply`` the last entry of each key and return
    once all of them are in (a replica is then loaded), and go on handing it each change,
    in stream order, from a task owned by ``tasks``. ``what`` names the bucket in errors
    and in the task's name. ``apply`` must not raise: a failure ends the watch.

    The watch is nats-py's ordered consumer, which recreates itself from the next
    revision when it misses heartbeats (its server died) or sees a gap, so it survives a
    reconnect to another server of a cluster.

    Raises:
        MoonwireError: Unavailable (see :func:`bounded`); the watch is stopped again.
    """
    watcher = await bounded(watch_all(kv), timeout, f"watching {what}")
    try:
        # nats-py's watcher yields the last entry of every key, then None once it has
        # delivered them all (num_pending 0), then each change as it happens.
        seen = 0
        while (entry := await bounded(watcher.updates(timeout=None), timeout, f"loading {what}")) is not None:
            apply(entry)
            seen = max(seen, entry.revision or 0)
        # The marker can come first: when the consumer's info (num_pending 0) reaches the
        # client before the entries the server had already sent, nats-py counts nothing
        # received and marks the load done with the entries still on their way (seen
        # under load, without the fast paths). The load ends with the last entry the
        # server says it delivered.
        # (An entry nats-py skips, a marker of a kind it does not know, would never come:
        # the wait for it ends at ``timeout`` with what has come.)
        info = await bounded(watcher._sub.consumer_info(), timeout, f"loading {what}")
        with contextlib.suppress(MoonwireError):
            while seen < info.delivered.stream_seq:
                if (entry := await bounded(watcher.updates(timeout=None), timeout, f"loading {what}")) is not None:
                    apply(entry)
                    seen = max(seen, entry.revision or 0)
    except BaseException:
        await stop_watch(watcher, timeout)
        raise

    async def follow() -> None:
        async for entry in watcher:
            if entry is not None:
                apply(entry)

    tasks.start(follow(), f"watching {what}")
    return watcher


async def stop_watch(watcher: KeyValue.KeyWatcher, timeout: float) -> None:
    """Stop a watch within ``timeout``; never raises (the connection may be gone already,
    and then there is nothing to undo)."""
    try:
        async with asyncio.timeout(timeout):
            await watcher.stop()
    except Exception as err:
        log.debug("stopping a key-value watch: %s", err)


FIRST_RETRY = 0.5
"""Seconds before the first new try of a store whose JetStream did not answer at start;
each wait then doubles up to the store's ``retry_interval``. A NATS cluster that has just
formed answers for JetStream within seconds (its meta leader is being elected): a node
started with it is not kept waiting a whole interval once it does."""


async def retry_every(interval: float, attempt: Callable[[], Awaitable[None]], what: str) -> None:
    """Await ``attempt()`` until it returns rather than raise Unavailable, first after
    :data:`FIRST_RETRY`, then doubling the wait up to ``interval`` seconds: for a store
    whose JetStream was missing at start. Each failure is logged at DEBUG (the store
    warned once already), the success at INFO."""
    wait = min(FIRST_RETRY, interval)
    while True:
        await asyncio.sleep(wait)
        wait = min(wait * 2, interval)
        try:
            await attempt()
        except MoonwireError as err:
            log.debug("%s still unavailable: %s", what, err.message)
            continue
        log.info("%s are available: JetStream answered", what)
        return


def earlier_incarnation(a: str, b: str) -> bool:
    """True when node incarnation ``a`` is earlier than ``b``: boot epochs in base 36, so
    the shorter string, then the smaller, is earlier (as ``broker/_membership.py`` reads
    them)."""
    return (len(a), a) < (len(b), b)


async def delete_key(js: JetStreamContext, bucket: str, key: str, revision: int | None, *, timeout: float,
                     what: str) -> int:
    """Delete ``key`` of ``bucket``, only if its last revision is ``revision`` when one is
    given; return the revision of the delete.

    Written out rather than ``KeyValue.delete``, which does not return the revision (a
    replica needs it to tell its own delete from a later write). The subject and headers
    are the KV protocol's (NATS ADR-8).

    Raises:
        Conflict: the key's last revision is another one.
        MoonwireError: Unavailable (see :func:`bounded`).
    """
    headers = {KV_OP: KV_DEL}
    if revision is not None:
        headers["Nats-Expected-Last-Subject-Sequence"] = str(revision)
    ack = await bounded(js.publish(f"$KV.{bucket}.{key}", b"", headers=headers), timeout, what)
    return ack.seq


async def delete_keys(js: JetStreamContext, bucket: str, keys: Iterable[tuple[str, int]], *, timeout: float,
                      what: str, parallel: int = 64) -> list[tuple[str, int]]:
    """Delete each ``(key, revision)`` of ``bucket`` conditionally on that revision, at
    most ``parallel`` at a time: a key written or deleted since is left alone (someone
    else's now, or freed already). Failures are logged, not raised. Returns the keys
    this call deleted, each with the revision of its delete. ``what`` says why, for the
    log.
    """
    limit = asyncio.Semaphore(parallel)

    async def delete(key: str, revision: int) -> tuple[str, int] | None:
        async with limit:
            try:
                deleted = await delete_key(js, bucket, key, revision, timeout=timeout, what=f"deleting {key!r} ({what})")
            except Conflict:
                return None
            except MoonwireError as err:
                log.warning("key %r of bucket %s stays (%s): %s", key, bucket, what, err.message)
                return None
        return key, deleted

    return [each for each in await asyncio.gather(*(delete(k, r) for k, r in keys)) if each is not None]


class BoundedCalls:
    """The round trips of a store on one bucket (``BucketStore``, ``ClusterNames``): each
    bounded by ``timeout`` and each Unavailable counted in ``_stats["unavailable"]``.
    A mixin: the store holds the bucket (``_kv``, None until open), ``bucket``,
    ``what`` (its name in messages), ``timeout`` and ``_stats``."""

    __slots__ = ()

    if TYPE_CHECKING:
        bucket: str
        what: str
        timeout: float
        _kv: KeyValue | None
        _stats: Counter[str]

    def _require(self, what: str) -> KeyValue:
        """The bucket, or Unavailable naming JetStream and ``what`` could not be done."""
        if self._kv is None:
            raise self._unavailable(f"cannot {what}: {self.what} need JetStream, and the bucket {self.bucket!r} "
                                    "could not be opened (is the NATS server running with -js?)")
        return self._kv

    def _unavailable(self, message: str) -> MoonwireError:
        self._stats["unavailable"] += 1
        return unavailable(message)

    async def _call(self, work: Awaitable[T], what: str) -> T:
        """``bounded(work)``, counting Unavailable."""
        try:
            return await bounded(work, self.timeout, what)
        except MoonwireError:
            self._stats["unavailable"] += 1
            raise


class BucketStore(BoundedCalls):
    """What a store on one key-value bucket shares with the others (``_groups.py``,
    ``_names.py``): the bucket
    opened at :meth:`start`, or, when JetStream is missing or silent, one warning and a
    try every ``retry_interval``; a watch of every key feeding the store's replica
    through :meth:`_apply`; every round trip bounded, each Unavailable counted in
    ``_stats["unavailable"]``.

    A subclass implements :meth:`_apply`, and may extend :meth:`_reset` (forget what an
    earlier, failed attempt loaded) and :meth:`_opened` (the replica is loaded: clean up
    after an earlier incarnation, say). ``what`` names the store in the log (``cluster
    process groups``).
    """

    def __init__(self, nats: NatsClient, *, bucket: str, what: str, replicas: int, timeout: float,
                 retry_interval: float) -> None:
        self.nats = nats
        self.bucket = bucket
        self.what = what
        self.unavailable_level = logging.WARNING
        """The level of the one line saying JetStream did not answer at start (the node's
        :class:`Cluster` says it once for all its stores)."""
        self.unavailable_at_start: str | None = None
        """Why the bucket could not be opened at start, if it could not."""
        self.replicas = replicas
        self.timeout = timeout
        self.retry_interval = retry_interval
        self._js = nats.jetstream(timeout=timeout)
        self._kv: KeyValue | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._tasks: TaskSet | None = None
        """The watch, or the wait for JetStream."""
        self._writes = TaskSet(log)
        """Work started for callers that cannot wait (:meth:`_soon`)."""
        self._stats = Counter[str]()

    @property
    def available(self) -> bool:
        """True once the bucket is open and the replica loaded."""
        return self._kv is not None

    async def start(self) -> None:
        """Open (or create) the bucket, load the replica and follow the bucket.

        Never raises for a missing or silent JetStream: :attr:`available` stays False,
        one warning names the cause, and a task tries again every ``retry_interval``.
        """
        if self._tasks is not None:
            raise RuntimeError(f"{self.what} started twice")
        self._tasks = TaskSet(log)
        try:
            await self._open()
        except MoonwireError as err:
            self.unavailable_at_start = err.message
            log.log(self.unavailable_level, "%s are unavailable until JetStream answers (tried bucket %s): %s; "
                    "trying again, at least every %gs", self.what, self.bucket, err.message, self.retry_interval)
            self._tasks.start(retry_every(self.retry_interval, self._open, self.what),
                              f"{self.what}: waiting for JetStream")

    async def _open(self) -> None:
        assert self._tasks is not None
        self._stats["attempts"] += 1
        kv = await open_bucket(self.nats, self.bucket, replicas=self.replicas, timeout=self.timeout,
                               description=f"moonwire {self.what} (docs/cluster.md)")
        self._reset()
        self._watcher = await follow_bucket(kv, self._apply, self._tasks, timeout=self.timeout,
                                            what=f"the bucket {self.bucket!r}")
        self._kv = kv
        log.info("%s: bucket %s open", self.what, self.bucket)
        await self._opened()

    async def _stop_following(self, drain: float = 0.0) -> None:
        """End the work :meth:`_soon` started (given ``drain`` seconds to finish first;
        nothing new starts meanwhile) and the watch (or the wait for JetStream); the
        store is unavailable after."""
        tasks, self._tasks = self._tasks, None
        if drain and len(self._writes):
            await self._writes.drain(drain)
        await self._writes.stop()
        if tasks is not None:
            await tasks.stop()
        self._kv = None
        if self._watcher is not None:
            await stop_watch(self._watcher, self.timeout)
            self._watcher = None

    def _soon(self, work: Coroutine[Any, Any, T], what: str) -> asyncio.Task[T] | None:
        """``work`` as a task owned here, for a caller that cannot wait (an exit path,
        membership's ``on_down``); None, and ``work`` closed, when the store is stopped."""
        if self._tasks is None:
            work.close()
            return None
        return self._writes.start(work, f"{self.what}: {what}")

    def _apply(self, entry: KeyValue.Entry) -> None:
        """The watch delivered ``entry``, in stream order. Must not raise."""
        raise NotImplementedError

    def _reset(self) -> None:
        """Forget the replica before it is loaded again."""

    async def _opened(self) -> None:
        """The bucket is open and the replica loaded."""

