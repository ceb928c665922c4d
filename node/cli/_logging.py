"""Log setup: human-readable lines on a console, or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``msg``, ``node`` (when
    known), and what the record carries besides (a unit's ``entry``, ``pid``,
    ``trace_id``, a Lua logger's ``fields``: docs/operations.md)."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.node is not None:
            out["node"] = self.node
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _not_tls_eof_noise(record: logging.LogRecord) -> bool:
    # nats-py's protocol answers True to eof_received (keep the transport open), which
    # asyncio ignores, with a warning, on a TLS transport: at every TLS connection the
    # server ends (a command's own close included). Nothing is wrong; drop the line.
    return not record.getMessage().startswith("returning true from eof_received() has no effect when using ssl")


def setup_logging(level: str = "info", fmt: str = "console", *, lua_level: str | None = None,
                  node: str | None = None) -> None:
    """One handler on stderr at ``level``; the project's Lua logs (``moonwire.lua``:
    print, logger) at ``lua_level`` when given; JSON records name ``node``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    handler.addFilter(_not_tls_eof_noise)
    root.setLevel(level.upper())
    # nats-py and temporalio are chatty at INFO about reconnects we already report.
    for noisy in ("nats", "temporalio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("moonwire.lua").setLevel(lua_level.upper() if lua_level else logging.NOTSET)
