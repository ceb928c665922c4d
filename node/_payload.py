"""Bodies on the wire: msgpack inside the cluster, JSON (or plain text) from outside.

Error objects survive the trip as a msgpack extension (and as ``{"error": {...}}`` in
JSON replies); PIDs are strings and need nothing.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

from broker import CONTENT_TYPE, MSGPACK, Headers
from lua import MoonwireError, invalid

JSON = "application/json"
JSON_HEADERS = Headers({CONTENT_TYPE: JSON})
_ERROR_EXT = 1


def _default(value: Any) -> Any:
    if isinstance(value, MoonwireError):
        return msgpack.ExtType(_ERROR_EXT, msgpack.packb(value.to_dict(), use_bin_type=True))
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _ERROR_EXT:
        return MoonwireError.from_dict(msgpack.unpackb(data, raw=False))
    return msgpack.ExtType(code, data)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True)


def unpack(body: bytes, content_type: str | None) -> Any:
    """Decode a body by its content type: msgpack, else JSON, else the text itself.

    Raises:
        MoonwireError: (Invalid) a msgpack body that does not decode, naming the reason.
    """
    if content_type == MSGPACK:
        try:
            return msgpack.unpackb(body, raw=False, ext_hook=_ext_hook, strict_map_key=False)
        except (ValueError, msgpack.UnpackException, TypeError) as err:
            raise invalid(f"malformed msgpack body: {err}") from err
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise invalid(f"body is neither msgpack (no {CONTENT_TYPE}: {MSGPACK} header) nor UTF-8 text") from err
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def to_json(value: Any) -> bytes:
    def default(v: Any) -> Any:
        if isinstance(v, MoonwireError):
            return v.to_dict()
        if isinstance(v, bytes):
            return v.decode("utf-8", errors="replace")
        raise TypeError(f"cannot encode {type(v).__name__} as JSON")

    return json.dumps(value, default=default, ensure_ascii=False).encode()
