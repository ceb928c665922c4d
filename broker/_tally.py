"""Log lines whose number does not grow with what a flood sends (STYLE §16).

A :class:`Tally` counts events by a short key (a reason, say). The first event of a key
in an interval is logged in full at once, so a lone event shows up when it happens;
the others of that interval are only counted, and one summary line at the end of the
interval gives their counts. Keys are bounded too (an attacker chooses much of a
reason's text): past ``max_keys`` distinct keys, events count under ``(other)``.
"""

from __future__ import annotations

import asyncio
import logging
import re

OTHER = "(other)"

_VARIABLE = re.compile(r"\{[^}]*\}|'[^']*'|\"[^\"]*\"|\d+")


def reason_key(reason: str, limit: int = 80) -> str:
    """``reason`` with what varies from message to message (PIDs, quoted values,
    numbers) blanked out, so reasons of one kind share a key."""
    return _VARIABLE.sub("_", reason)[:limit]


class Tally:
    """Counts of events by key, logged as above. Call :meth:`close` when done: it
    cancels the interval's timer and logs what is still counted."""

    def __init__(self, logger: logging.Logger, what: str, *, interval: float = 10.0, max_keys: int = 32,
                 level: int = logging.WARNING) -> None:
        self.logger = logger
        self.what = what
        """What is counted, for the summary line: "dead letters to mw.dlq.n1"."""
        self.interval = interval
        self.max_keys = max_keys
        self.level = level
        self.total = 0
        self.totals: dict[str, int] = {}
        """Every event since the start, by key (at most ``max_keys`` keys, then OTHER)."""
        self._logged: set[str] = set()  # keys logged in full in this interval
        self._unlogged: dict[str, int] = {}  # counted but not logged in this interval
        self._timer: asyncio.TimerHandle | None = None

    def note(self, key: str, message: str, *args: object) -> None:
        """Count one event of ``key``; log ``message % args`` if it is the first of
        its key in this interval."""
        self.total += 1
        totals = self.totals
        if key not in totals and len(totals) >= self.max_keys:
            key = OTHER
        totals[key] = totals.get(key, 0) + 1
        if key in self._logged:
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
        elif len(self._logged) < self.max_keys:
            self._logged.add(key)
            self.logger.log(self.level, message, *args)
        else:
            self._unlogged[OTHER] = self._unlogged.get(OTHER, 0) + 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._end_interval)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._end_interval()

    def _end_interval(self) -> None:
        self._timer = None
        unlogged, self._unlogged = self._unlogged, {}
        self._logged.clear()
        if unlogged:
            counts = ", ".join(f"{n} x {key}" for key, n in sorted(unlogged.items(), key=lambda kv: -kv[1]))
            self.logger.log(self.level, "%s: %d more in the last %.0fs not logged one by one: %s",
                            self.what, sum(unlogged.values()), self.interval, counts)
