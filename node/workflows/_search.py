"""Search attributes and memo: typed from Lua values, checked before Temporal sees them,
and the declared attributes registered at node start.

A project declares the custom search attributes of a namespace on its
``temporal.client`` entry (``search_attributes: {CustomerId: Keyword, ...}``). Both
``temporal.workflow.search_attributes`` at start and ``workflow.attrs{search = ...}``
inside a workflow name declared attributes only, and each value must suit its declared
type; anything else is Invalid, naming the attribute, before a request leaves. That
check matters most inside a workflow: Temporal answers a bad upsert (an unknown name, a
wrong type, a value over its size limit) by failing the whole workflow, and a memo over
the payload limit by failing every workflow task until the workflow times out.

Types (Lua value -> declared type): a string -> Keyword or Text; an integer, or a float
with an integral value -> Int; a number -> Double; a boolean -> Bool; an RFC 3339 time
string -> Datetime; an array of strings (or an empty table) -> KeywordList. Wippy infers
the type from the value with the same table (wippy-modules §12.6) and, by a quirk of its
converter, refuses Lua integers; moonwire takes integers (docs/lua.md, differences).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, SearchAttributeUpdate, TypedSearchAttributes
from temporalio.converter import encode_typed_search_attribute_value
from temporalio.service import RPCError, RPCStatusCode

from moonwire.lua import MoonwireError, invalid

from ..project import TemporalClientEntry
from ._payloads import encode

log = logging.getLogger("moonwire.workflows")

VALUE_LIMIT = 2048
"""Bytes of one search attribute value (Temporal's default ``limit.searchAttributesSizeOfValue``)."""
TOTAL_LIMIT = 40 * 1024
"""Bytes of the search attributes of one request (Temporal's default ``limit.searchAttributesTotalSize``)."""
MEMO_LIMIT = 2 * 1024 * 1024 - 1024
"""Bytes of the memo values of one request: Temporal's payload limit (2 MiB) less room
for the request around them."""

_KEYS = {
    "Keyword": SearchAttributeKey.for_keyword, "Text": SearchAttributeKey.for_text,
    "Int": SearchAttributeKey.for_int, "Double": SearchAttributeKey.for_float, "Bool": SearchAttributeKey.for_bool,
    "Datetime": SearchAttributeKey.for_datetime, "KeywordList": SearchAttributeKey.for_keyword_list,
}
_INDEXED = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD, "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT, "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL, "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}


@dataclass(frozen=True, slots=True)
class Declared:
    """The search attributes a ``temporal.client`` entry declares: name -> type."""

    client: str = ""
    types: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def of(entry: TemporalClientEntry) -> Declared:
        return Declared(entry.id, dict(entry.search_attributes))


def _table(value: Any, what: str) -> dict[str, Any]:
    """A Lua table keyed by names (an empty table arrives as an empty list)."""
    if value == []:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{what} must be a table of name = value")
    for key in value:
        if not isinstance(key, str) or not key:
            raise invalid(f"{what}: keys must be non-empty strings, not {_describe(key)}")
    return value


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes):
        return "a binary string (not UTF-8)"
    if isinstance(value, (list, dict)):
        return "a table"
    if isinstance(value, MoonwireError):
        return "an error"
    return f"a {type(value).__name__}"


def _typed(name: str, kind: str, value: Any, what: str) -> tuple[SearchAttributeKey[Any], Any]:
    def wrong(expected: str) -> MoonwireError:
        return invalid(f"{what}: search attribute {name} is declared {kind}: {expected} expected, "
                       f"got {_describe(value)}")

    if kind in ("Keyword", "Text"):
        if not isinstance(value, str):
            raise wrong("a string")
    elif kind == "Int":
        if isinstance(value, float) and value.is_integer() and -2.0 ** 63 <= value < 2.0 ** 63:
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong("an integer")
    elif kind == "Double":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong("a finite number")
        value = float(value)
    elif kind == "Bool":
        if not isinstance(value, bool):
            raise wrong("a boolean")
    elif kind == "Datetime":
        try:
            value = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            value = None
        if value is None or value.tzinfo is None:
            raise wrong("an RFC 3339 time string with its offset")
    elif value != [] and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise wrong("an array of strings")
    return _KEYS[kind](name), value


def _checked(values: Any, declared: Declared, what: str) -> list[tuple[SearchAttributeKey[Any], Any]]:
    out: list[tuple[SearchAttributeKey[Any], Any]] = []
    total = 0
    for name, value in _table(values, what).items():
        kind = declared.types.get(name)
        if kind is None:
            known = ", ".join(sorted(declared.types)) or "none"
            raise invalid(f"{what}: search attribute {name!r} is not declared (declare it under search_attributes "
                          f"of temporal.client {declared.client or '(none)'}; declared: {known})")
        key, typed = _typed(name, kind, value, what)
        size = len(encode_typed_search_attribute_value(key, typed).data)
        if size > VALUE_LIMIT:
            raise invalid(f"{what}: search attribute {name} is {size} bytes, over Temporal's limit of {VALUE_LIMIT}")
        total += size
        out.append((key, typed))
    if total > TOTAL_LIMIT:
        raise invalid(f"{what}: search attributes of {total} bytes, over Temporal's limit of {TOTAL_LIMIT}")
    return out


def search_attributes(values: Any, declared: Declared, what: str) -> TypedSearchAttributes:
    """Start options' search attributes, typed.

    Raises:
        MoonwireError: (Invalid) a table that is not name = value, an undeclared name, a
            value that does not suit its declared type or is over Temporal's size limits;
            the message names the attribute.
    """
    return TypedSearchAttributes([SearchAttributePair(key, value) for key, value in _checked(values, declared, what)])


def search_updates(values: Any, declared: Declared, what: str) -> list[SearchAttributeUpdate[Any]]:
    """``workflow.attrs{search = ...}`` as upserts (raises as :func:`search_attributes`)."""
    return [key.value_set(value) for key, value in _checked(values, declared, what)]


def memo(value: Any, what: str) -> dict[str, Any]:
    """A memo table as Temporal memo fields, each value a payload of its own (JSON when it
    can be); any data may be a value.

    Raises:
        MoonwireError: (Invalid) a table not keyed by strings, or values over the limit.
    """
    fields = {name: encode(item) for name, item in _table(value, what).items()}
    size = sum(len(raw.payload.data) for raw in fields.values())
    if size > MEMO_LIMIT:
        raise invalid(f"{what}: memo of {size} bytes, over Temporal's payload limit of {MEMO_LIMIT}")
    return fields


async def register(client: Client, entry: TemporalClientEntry) -> None:
    """Make sure the namespace has the search attributes ``entry`` declares: add the
    missing ones (through the operator service, as ``temporal operator search-attribute
    create`` does; adding is idempotent, so nodes starting together do not clash).

    A server that refuses the operator service (Temporal Cloud manages attributes in its
    own console) is told nothing; the node warns and starts.

    Raises:
        MoonwireError: (Invalid) the namespace has an attribute by a declared name with
            another type, or refused a declared attribute (its message says why).
    """
    if not entry.search_attributes:
        return
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=entry.namespace))
    except RPCError as err:
        log.warning("%s: cannot list the search attributes of namespace %s (%s); declared attributes are not "
                    "registered", entry.id, entry.namespace, err.message)
        return
    existing = {**listed.system_attributes, **listed.custom_attributes}
    names = {int(v): k for k, v in _INDEXED.items()}
    missing: dict[str, Any] = {}
    for name, kind in entry.search_attributes.items():
        have = existing.get(name)
        if have is None:
            missing[name] = _INDEXED[kind]
        elif have != _INDEXED[kind]:
            raise invalid(f"{entry.id}: search attribute {name} is declared {kind}, but namespace {entry.namespace} "
                          f"has it as {names.get(int(have), have)}")
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=entry.namespace, search_attributes=missing))
    except RPCError as err:
        if err.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED):
            log.warning("%s: not allowed to add search attributes %s to namespace %s (%s); create them with "
                        "`temporal operator search-attribute create`", entry.id, ", ".join(missing),
                        entry.namespace, err.message)
            return
        raise invalid(f"{entry.id}: adding search attributes {', '.join(missing)} to namespace {entry.namespace} "
                      f"failed: {err.message}") from None
    log.info("%s: added search attributes %s to namespace %s", entry.id, ", ".join(missing), entry.namespace)
