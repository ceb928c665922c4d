"""What a project is made of on disk, as a snapshot that changes when any of it does
(``moonwire run --watch`` polls it).

Polling beat an inotify library: no dependency, the same code on every platform, and a
project is a few hundred small files (a scan costs about a millisecond) scanned twice a
second. A file counts as changed when its modification time, size or inode changes,
so an editor that replaces a file by renaming a new one over it is seen too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ._project import SKIP_DIRS

WATCHED_SUFFIXES = (".yaml", ".yml", ".lua")

Snapshot = dict[str, tuple[int, int, int]]
"""Path -> (modification time in ns, size, inode) of every watched file."""


def snapshot(root: Path, extra: Iterable[Path] = ()) -> Snapshot:
    """The YAML and Lua files under ``root`` (hidden folders, the state folder among them,
    and the folders the loader skips left out) and the files in ``extra`` (entry sources
    with other names, or outside those folders)."""
    found: Snapshot = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS]
        for name in files:
            if name.endswith(WATCHED_SUFFIXES):
                _stat(os.path.join(folder, name), found)
    for path in extra:
        _stat(str(path), found)
    return found


def _stat(path: str, into: Snapshot) -> None:
    try:
        st = os.stat(path)
    except OSError:  # gone between the listing and now: the next scan sees it gone
        return
    into[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
