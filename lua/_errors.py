"""Errors: one Python exception type with a ``kind``, matching Lua's ``errors`` constants.

Lua code sees errors as values (``nil, err`` with an error object); Python code raises
:class:`MoonwireError`. ``lua/_values.py`` converts between the two, once, at the boundary.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """The error kinds of wippy-surface §0 (CamelCase, as Wippy's runtime spells them)."""

    NOT_FOUND = "NotFound"
    ALREADY_EXISTS = "AlreadyExists"
    INVALID = "Invalid"
    PERMISSION_DENIED = "PermissionDenied"
    UNAVAILABLE = "Unavailable"
    INTERNAL = "Internal"
    CANCELED = "Canceled"
    CONFLICT = "Conflict"
    TIMEOUT = "Timeout"
    RATE_LIMITED = "RateLimited"
    UNKNOWN = ""


# wippy-surface §2.6: retryable by convention when the error does not say.
RETRYABLE_KINDS = frozenset({Kind.TIMEOUT, Kind.UNAVAILABLE, Kind.RATE_LIMITED})
NOT_RETRYABLE_KINDS = frozenset({Kind.INVALID, Kind.NOT_FOUND, Kind.PERMISSION_DENIED, Kind.ALREADY_EXISTS})


class MoonwireError(Exception):
    """An error with a kind, a retryable flag and details, as Lua error objects carry.

    ``retryable`` is True, False, or None when the error does not say.
    """

    def __init__(self, message: str, kind: str = Kind.UNKNOWN, *, retryable: bool | None = None,
                 details: Any = None, stack: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = str(kind)
        self.retryable = retryable
        self.details = details
        self.stack = stack

    def is_retryable(self) -> bool:
        """The explicit flag, else the convention for the kind."""
        if self.retryable is not None:
            return self.retryable
        return self.kind in RETRYABLE_KINDS

    def to_dict(self) -> dict[str, Any]:
        """The fields, ``details`` as they are (errors in them stay errors). What goes on
        the wire is written by ``node/_payload.py``'s one encoder, which also encodes the
        errors nested in ``details`` and bounds their depth."""
        out: dict[str, Any] = {"message": self.message, "kind": self.kind}
        if self.retryable is not None:
            out["retryable"] = self.retryable
        if self.details is not None:
            out["details"] = self.details
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoonwireError:
        """An error from its fields as they came (a JSON reply, say): anything but a
        boolean ``retryable`` reads as not saying."""
        retryable = data.get("retryable")
        return cls(str(data.get("message", "")), str(data.get("kind", "")),
                   retryable=retryable if isinstance(retryable, bool) else None, details=data.get("details"))

    def __repr__(self) -> str:
        return f"MoonwireError({self.message!r}, kind={self.kind!r}, retryable={self.retryable!r})"


def invalid(message: str) -> MoonwireError:
    return MoonwireError(message, Kind.INVALID, retryable=False)


def not_found(message: str) -> MoonwireError:
    return MoonwireError(message, Kind.NOT_FOUND, retryable=False)


def internal(message: str) -> MoonwireError:
    return MoonwireError(message, Kind.INTERNAL, retryable=False)
