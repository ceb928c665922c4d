"""The private parts of nats-py that :class:`broker.Client`'s fast paths hook, checked
once, when ``moonwire.broker`` is imported.

The fast paths (``broker/_client.py``: pre-encoded and cached header blocks,
``try_publish``, ``subscribe_direct`` from the read loop, ``FastParser``) read and
write attributes and override methods that nats-py does not promise to keep.
``pyproject.toml`` pins nats-py to the versions they were tested against; this check is
for an install that ends up with another one anyway. Each name in :data:`INTERNALS` is
probed for its presence and its shape (a method's parameters and whether it is a
coroutine, an attribute's type on a fresh client). When any probe fails, the fast paths
are off, with one warning naming every name that failed, and :class:`broker.Client`
is nats-py's client, using only its public methods.

None of these names is needed without the fast paths, so none fails the import: every
fast path has a public fallback with the same semantics (``publish``, a subscription
with a callback, nats-py's own parser), slower, and without the read loop's turns
(:attr:`broker.Client.after_read`).

The environment variable ``MOONWIRE_FAST_PATHS=0`` (or ``false``, ``no``, ``off``)
turns the fast paths off on purpose, whatever nats-py is installed: CI runs the suite
once each way, so that the fallbacks stay correct.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("moonwire.broker")

ENV = "MOONWIRE_FAST_PATHS"
"""The environment variable that turns the fast paths off (``0``, ``false``, ``no``, ``off``)."""
TESTED = "2.16"
"""The nats-py minor versions the fast paths were checked against (``pyproject.toml`` pins them)."""

_OFF = frozenset({"0", "false", "no", "off"})
_ON = frozenset({"", "1", "true", "yes", "on"})


def _params(function: Callable[..., object], *names: str, coroutine: bool | None = True) -> bool:
    """``function`` has exactly these leading parameters (any more must have defaults),
    and is a coroutine function or not as ``coroutine`` says (None: either)."""
    parameters = list(inspect.signature(function).parameters.values())
    if [p.name for p in parameters[:len(names)]] != list(names):
        return False
    if any(p.default is inspect.Parameter.empty for p in parameters[len(names):]):
        return False
    return coroutine is None or inspect.iscoroutinefunction(function) == coroutine


def _attr(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def _client() -> Any:
    return _attr("nats.aio.client", "Client")


def _fresh_client() -> dict[str, object]:
    return vars(_client()())


def _parser() -> Any:
    return _attr("nats.protocol.parser", "Parser")


def _fresh_parser() -> dict[str, object]:
    return vars(_parser()(None))


def _subscription() -> dict[str, object]:
    return vars(_attr("nats.aio.subscription", "Subscription")(None, 7, "s"))


def _read_loop_feeds_the_parser() -> bool:
    # The parser sees every byte read only while the read loop hands them to ``_ps``.
    return "self._ps.parse(" in inspect.getsource(_client()._read_loop)


def _tcp_transport_writes_through_a_stream_writer() -> bool:
    # flush_now writes to the StreamWriter that TcpTransport.writelines writes to.
    transport = _attr("nats.aio.transport", "TcpTransport")
    source = inspect.getsource(transport.writelines)
    return "_io_writer" in inspect.getsource(transport.__init__) and "self._io_writer.writelines" in source


def _reset_replaces_the_buffer() -> bool:
    # FastParser notices a reconnect in the middle of a read by its buffer being replaced.
    parser = _parser()(None)
    buf = parser.buf
    parser.reset()
    return parser.buf is not buf


def _is(value: object, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _stats(value: object) -> bool:
    return isinstance(value, dict) and all(key in value for key in ("in_msgs", "in_bytes", "out_msgs", "out_bytes"))


INTERNALS: tuple[tuple[str, Callable[[], bool]], ...] = (
    # Overridden by broker.Client, and called with these arguments by nats-py.
    ("Client._send_publish", lambda: _params(_client()._send_publish,
                                             "self", "subject", "reply", "payload", "payload_size", "headers")),
    ("Client._process_msg", lambda: _params(_client()._process_msg,
                                            "self", "sid", "subject", "reply", "data", "headers")),
    ("Client._process_headers", lambda: _params(_client()._process_headers, "self", "headers")),
    # Called by the fast paths as nats-py's own methods call them.
    ("Client._build_message", lambda: _params(_client()._build_message,
                                              "self", "sid", "subject", "reply", "data", "headers", coroutine=False)),
    ("Client._send_command", lambda: _params(_client()._send_command, "self", "cmd")),
    ("Client._flush_pending", lambda: _params(_client()._flush_pending, "self")),
    ("Client._read_loop", _read_loop_feeds_the_parser),
    ("nats.aio.client._validate_subject", lambda: _params(_attr("nats.aio.client", "_validate_subject"),
                                                          "subject", coroutine=False)),
    ("nats.protocol.command.pub_cmd", lambda: _params(_attr("nats.protocol.command", "pub_cmd"),
                                                      "subject", "reply", "payload", coroutine=False)),
    ("nats.protocol.command.hpub_cmd", lambda: _params(_attr("nats.protocol.command", "hpub_cmd"),
                                                       "subject", "reply", "hdr", "payload", coroutine=False)),
    # A client's state, read and written by try_publish and direct delivery.
    ("Client._ps", lambda: type(_fresh_client()["_ps"]) is _parser()),
    ("Client._status", lambda: _is(_fresh_client()["_status"], int) and _is(_client().CONNECTED, int)),
    ("Client._max_payload", lambda: _is(_fresh_client()["_max_payload"], int)),
    ("Client._skip_subject_validation", lambda: _is(_fresh_client()["_skip_subject_validation"], bool)),
    ("Client._pending", lambda: _is(_fresh_client()["_pending"], list)),
    ("Client._pending_data_size", lambda: _is(_fresh_client()["_pending_data_size"], int)),
    ("Client._max_pending_size", lambda: _is(_fresh_client()["_max_pending_size"], int)),
    ("Client._flush_queue", lambda: "_flush_queue" in _fresh_client()),
    ("Client._flusher_task", lambda: "_flusher_task" in _fresh_client()),
    ("Client._transport", lambda: "_transport" in _fresh_client()),
    ("TcpTransport._io_writer", _tcp_transport_writes_through_a_stream_writer),
    ("Client._subs", lambda: _is(_fresh_client()["_subs"], dict)),
    ("Client.stats", lambda: _stats(_fresh_client()["stats"])),
    ("Subscription._id", lambda: _subscription()["_id"] == 7),
    ("Subscription._received", lambda: _is(_subscription()["_received"], int)),
    # FastParser subclasses nats-py's parser and shares its state.
    ("Parser.parse", lambda: _params(_parser().parse, "self", "data")),
    ("Parser.buf", lambda: _is(_fresh_parser()["buf"], bytearray)),
    ("Parser.state", lambda: _fresh_parser()["state"] == _attr("nats.protocol.parser", "AWAITING_CONTROL_LINE")),
    ("Parser.nc", lambda: "nc" in _fresh_parser()),
    ("Parser.reset", _reset_replaces_the_buffer),
)
"""Every private name of nats-py the fast paths touch, each with its probe: true when
the name is there in the shape ``broker/_client.py`` and ``broker/_parser.py`` expect."""


def missing() -> list[str]:
    """The names of :data:`INTERNALS` that the installed nats-py lacks or has in
    another shape (an empty list when the fast paths can hook it)."""
    failed = []
    for name, probe in INTERNALS:
        try:
            present = probe()
        except Exception:  # noqa: BLE001 - an import, a lookup or a signature that is not there
            present = False
        if not present:
            failed.append(name)
    return failed


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment leaves the fast paths on (see :data:`ENV`)."""
    value = environ.get(ENV, "").strip().lower()
    if value in _OFF:
        return False
    if value not in _ON:
        log.warning("%s=%r is not one of 0, false, no, off, 1, true, yes, on: the fast paths stay on",
                    ENV, environ[ENV])
    return True


def decide(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether :class:`broker.Client` uses its fast paths: wanted, and every name of
    :data:`INTERNALS` there. Logs one warning when they are wanted but cannot be."""
    if not wanted(environ):
        log.debug("%s is off: nats-py's public paths only", ENV)
        return False
    failed = missing()
    if failed:
        log.warning("nats-py %s lacks or has changed what moonwire's fast paths hook (%s): they are off, and "
                    "moonwire runs on nats-py's public API, slower. They were tested with nats-py %s.*",
                    _version(), ", ".join(failed), TESTED)
        return False
    return True


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("nats-py")
    except PackageNotFoundError:
        return "(version unknown)"
