"""YAML that remembers where each mapping and key came from, so every error can name a line.

PyYAML's safe loader, with mappings built as :class:`LocatedMap` and sequences as
:class:`LocatedList`. Duplicate keys, which PyYAML silently overwrites, are errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


class LocatedMap(dict[str, Any]):
    """A dict that knows its own line and the line of each key (1-based)."""

    __slots__ = ("line", "key_lines")

    def __init__(self, *args: Any, line: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line = line
        self.key_lines: dict[str, int] = {}


class LocatedList(list[Any]):
    __slots__ = ("line", "item_lines")

    def __init__(self, *args: Any, line: int = 0) -> None:
        super().__init__(*args)
        self.line = line
        self.item_lines: list[int] = []


class YamlError(Exception):
    """A file that is not valid YAML. ``line`` is 1-based, or None when unknown."""

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {reason}")


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedMap:
    loader.flatten_mapping(node)
    result = LocatedMap(line=node.start_mark.line + 1)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", key_node.start_mark
            )
        key = str(key) if not isinstance(key, str) else key
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    result = LocatedList(line=node.start_mark.line + 1)
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.item_lines.append(item.start_mark.line + 1)
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: Path) -> Any:
    """Parse one YAML document from ``path``.

    Raises:
        YamlError: the file cannot be read or is not valid YAML; the error names the line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise YamlError(path, None, f"cannot read file: {err}") from err
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        context = err.context or ""
        if context and err.context_mark is not None and err.context_mark is not mark:
            context += f" (from line {err.context_mark.line + 1})"
        reason = ", ".join(part for part in (context, err.problem) if part) or str(err)
        raise YamlError(path, line, f"invalid YAML: {reason}") from err
    except yaml.YAMLError as err:
        raise YamlError(path, None, f"invalid YAML: {err}") from err


def line_of(root: Any, path: tuple[str | int, ...]) -> int | None:
    """The line of the deepest node along ``path`` that has one."""
    line = getattr(root, "line", None) or None
    node = root
    for part in path:
        if isinstance(node, LocatedMap) and isinstance(part, str) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, LocatedList) and isinstance(part, int) and 0 <= part < len(node):
            line = node.item_lines[part]
            node = node[part]
        else:
            break
    return line


_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def interpolate_env(
    value: Any,
    environ: dict[str, str],
    on_missing: Callable[[tuple[str | int, ...], str], None],
    path: tuple[str | int, ...] = (),
) -> Any:
    """Replace ``${env:NAME}`` in every string under ``value``, in place for containers.

    An unset variable is reported through ``on_missing(path, name)`` and left as written.
    """
    if isinstance(value, str):
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                on_missing(path, name)
                return match.group(0)
            return environ[name]

        return _ENV.sub(replace, value)
    if isinstance(value, dict):
        for key in list(value):
            value[key] = interpolate_env(value[key], environ, on_missing, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = interpolate_env(item, environ, on_missing, (*path, index))
    return value
