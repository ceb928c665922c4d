"""A temporal.client with TLS and mutual TLS. The dev server speaks plaintext only, so
the test puts a TLS-terminating proxy in front of it that demands a client certificate
signed by its CA; the node's workers and starts go through it."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from moonwire.node import ServerProcess
from support import run_cli, write_project


@dataclass
class TlsProxy:
    address: str
    ca: Path
    client_cert: Path
    client_key: Path
    clients: list[str] = field(default_factory=list)
    """The common name of every client certificate a connection presented."""


@pytest.fixture
async def tls_proxy(tmp_path: Path, temporal_server: ServerProcess) -> AsyncIterator[TlsProxy]:
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost")
    client_cert = ca.issue_cert("moonwire-node", common_name="moonwire-node")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])  # gRPC
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client_cert.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    upstream_host, upstream_port = temporal_server.address.rsplit(":", 1)
    proxy = TlsProxy("", tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key")
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        proxy.clients.extend(value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName")
        up_reader, up_writer = await asyncio.open_connection(upstream_host, int(upstream_port))
        for task in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=context)
    proxy.address = "127.0.0.1:%d" % server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


def tls_project(root: Path, proxy: TlsProxy, auth: str) -> Path:
    return write_project(root, {
        "_index.yaml": f"""
            namespace: app
            entries:
              - name: temporal
                kind: temporal.client
                address: "{proxy.address}"
                tls: {{enabled: true, ca_file: "{proxy.ca}", server_name: localhost}}
                {auth}
              - {{name: worker, kind: temporal.worker, client: temporal, task_queue: tls-{time.monotonic_ns()}}}
              - {{name: hello, kind: workflow.lua, source: file://hello.lua, modules: [workflow]}}
              - {{name: starter, kind: process.lua, source: file://starter.lua}}
        """,
        "hello.lua": """
            local workflow = require("workflow")
            return function(name) return { hello = name, queue = workflow.info().task_queue } end
        """,
        "starter.lua": 'return function() return process.exec("app:hello", "app:worker", "tls") end',
    })


async def test_a_client_with_mutual_tls_runs_workflows(tmp_path: Path, tls_proxy: TlsProxy, nats_server) -> None:
    auth = f'auth: {{type: mtls, cert_file: "{tls_proxy.client_cert}", key_file: "{tls_proxy.client_key}"}}'
    project = tls_project(tmp_path / "mtls", tls_proxy, auth)
    code, out, err = await run_cli("run", str(project), "--node", "t1", "--nats", nats_server.address,
                                   "-x", "app:starter")
    assert code == 0, err
    got = json.loads(out)
    assert got["hello"] == "tls" and got["queue"].startswith("tls-")
    assert tls_proxy.clients and set(tls_proxy.clients) == {"moonwire-node"}


async def test_without_a_client_certificate_the_node_says_why_it_cannot_connect(
        tmp_path: Path, tls_proxy: TlsProxy, nats_server) -> None:
    project = tls_project(tmp_path / "tls-only", tls_proxy, "")
    code, _, err = await run_cli("run", str(project), "--node", "t2", "--nats", nats_server.address,
                                 "-x", "app:starter")
    assert code != 0
    assert "app:temporal" in err, err  # names the client entry that could not connect
    assert not tls_proxy.clients
