"""The NATS authorization moonwire ships (deploy/nats-auth.conf with nkeys,
deploy/nats-tls.conf with client certificates, both over deploy/nats-permissions.conf),
run by a real nats-server started from those very files: a node with the node identity
starts and works (spawn, send, call, its key-value buckets); the client identity can
message processes and call functions, and every control it must not have is refused
with an error the client sees; the admin identity can do those; the node logs nothing
about the refusals. And `moonwire` commands take the credentials, with one clear line
when they are wrong."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nkeys
import pytest
import trustme
from nats.aio.client import Client as NatsClient

from moonwire.broker import BrokerUnavailable, ConnectOptions, connect
from moonwire.node import ServerProcess, free_port, start_nats
from support import AUTH_CONF, TLS_CONF, NodeProcess, run_cli, write_project
IDENTITIES = ("node", "client", "admin")

PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host}
          - {name: echo, kind: function.lua, source: file://echo.lua, method: main}
          - {name: worker, kind: process.lua, source: file://worker.lua, method: main}
    """,
    "echo.lua": """
        return {main = function(x) return {echo = x} end}
    """,
    "worker.lua": """
        return {main = function(tag)
          local inbox = process.inbox()
          while true do
            local msg = inbox:receive()
            print("worker " .. tostring(tag) .. " got " .. msg:topic() .. " " .. tostring(msg:payload():data()))
          end
        end}
    """,
}


@dataclass
class Broker:
    server: ServerProcess
    node: NodeProcess
    url: str
    cli_args: dict[str, tuple[str, ...]]
    """The `moonwire` flags that present each identity."""
    connect_args: dict[str, dict[str, object]]
    """nats-py's connect arguments for each identity."""
    denials: list[str] = field(default_factory=list)


@dataclass
class Watched:
    """A raw nats-py client and the errors its error callback saw."""

    nc: NatsClient
    errors: asyncio.Queue[str]

    async def refused(self, subject: str, kind: str = "publish") -> str:
        """The permissions violation the server sent for ``subject`` (nats-py lowercases it)."""
        while True:
            error = await asyncio.wait_for(self.errors.get(), 10)
            if f'permissions violation for {kind} to "{subject.lower()}"' in error.lower():
                return error


async def client_as(broker: Broker, identity: str) -> Watched:
    errors: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(err: Exception) -> None:
        errors.put_nowait(str(err))

    nc = await nats.connect(broker.url, error_cb=on_error, allow_reconnect=False, **broker.connect_args[identity])
    return Watched(nc, errors)


def nkey_pair(path: Path) -> str:
    """Write a user seed to ``path``; return its public key."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path.write_bytes(seed)
    return nkeys.from_seed(bytearray(seed)).public_key.decode()


async def start_broker(tmp: Path, conf: Path, env: dict[str, str], scheme: str, node_args: tuple[str, ...],
                       cli_args: dict[str, tuple[str, ...]], connect_args: dict[str, dict[str, object]],
                       ) -> AsyncIterator[Broker]:
    server = await start_nats(tmp / "nats", port=free_port(), args=("-c", str(conf)), env=env)
    url = f"{scheme}://127.0.0.1:{server.port}"
    node = NodeProcess(write_project(tmp / "project", PROJECT), "pn", nats_url=url, args=node_args)
    try:
        await node.start()
        yield Broker(server, node, url, cli_args, connect_args)
    finally:
        await node.aclose()
        await server.stop()


@pytest.fixture(scope="module")
async def nkey_broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Broker]:
    """A nats-server from deploy/nats-auth.conf and a node that logs in as the node identity."""
    tmp = tmp_path_factory.mktemp("nkeys")
    env = {f"MW_NATS_{who.upper()}_NKEY": nkey_pair(tmp / f"{who}.nk") for who in IDENTITIES}
    cli = {who: ("--set", f"nats.nkeys_seed={tmp / f'{who}.nk'}") for who in IDENTITIES}
    raw = {who: {"nkeys_seed": str(tmp / f"{who}.nk")} for who in IDENTITIES}
    async for broker in start_broker(tmp, AUTH_CONF, env, "nats", cli["node"], cli, raw):
        yield broker


@pytest.fixture(scope="module")
async def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Broker]:
    """A nats-server from deploy/nats-tls.conf: a certificate per identity, mapped by its e-mail name."""
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    server_cert.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
    server_cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    for who in IDENTITIES:
        cert = ca.issue_cert(f"{who}@moonwire")
        cert.cert_chain_pems[0].write_to_path(str(tmp / f"{who}.pem"))
        cert.private_key_pem.write_to_path(str(tmp / f"{who}.key"))
    env = {"MW_NATS_TLS_CERT": str(tmp / "server.pem"), "MW_NATS_TLS_KEY": str(tmp / "server.key"),
           "MW_NATS_TLS_CA": str(tmp / "ca.pem")}
    cli = {who: ("--set", f"nats.tls.ca_file={tmp / 'ca.pem'}", "--set", f"nats.tls.cert_file={tmp / f'{who}.pem'}",
                 "--set", f"nats.tls.key_file={tmp / f'{who}.key'}") for who in IDENTITIES}
    raw: dict[str, dict[str, object]] = {}
    for who in IDENTITIES:
        context = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
        context.load_cert_chain(str(tmp / f"{who}.pem"), str(tmp / f"{who}.key"))
        raw[who] = {"tls": context}
    async for broker in start_broker(tmp, TLS_CONF, env, "tls", cli["node"], cli, raw):
        yield broker


@pytest.fixture(params=["nkey", "tls"])
def broker(request: pytest.FixtureRequest) -> Broker:
    return request.getfixturevalue(f"{request.param}_broker")


async def spawn_as(broker: Broker, identity: str, tag: str, *extra: str) -> tuple[int, str, str]:
    return await run_cli("spawn", "app:worker", tag, "--host", "app:host", *extra, "--nats", broker.url,
                         *broker.cli_args[identity])


async def test_the_admin_spawns_with_a_cluster_name_and_terminates(broker: Broker) -> None:
    # The node logged in as the node identity and opened its buckets (it says running
    # only then); a cluster name is a write to the names bucket through the node.
    code, out, err = await spawn_as(broker, "admin", "a", "--name", f"admin-{id(broker)}", "--scope", "consistent")
    assert code == 0, err
    pid = out.strip()
    admin = await client_as(broker, "admin")
    try:
        await admin.nc.publish(f"mw.n.admin-{id(broker)}.hello", b'"by name"')
        await broker.node.wait_for_line(r"worker a got hello by name")
        node = pid[1:].split("@", 1)[0]
        reply = await admin.nc.request(f"mw.ctl.{node}.terminate", json.dumps({"target": pid}).encode(), timeout=10)
        assert json.loads(reply.data) == {"result": True}
        # Dead letters are the admin's to read.
        await admin.nc.subscribe(f"mw.dlq.{node}")
        await admin.nc.flush()
    finally:
        await admin.nc.close()


async def test_the_client_messages_a_process_and_calls_a_function(broker: Broker) -> None:
    code, out, err = await spawn_as(broker, "admin", "c")
    assert code == 0, err
    pid = out.strip()
    node, uid = pid[1:-1].split("@", 1)[0], pid[1:-1].rsplit("|", 1)[1]
    client = await client_as(broker, "client")
    try:
        answer = await client.nc.request("mw.fn.app:echo", b"[5]", timeout=10)
        assert json.loads(answer.data) == {"result": {"echo": 5}}
        await client.nc.publish(f"mw.p.{node}.{uid}.hello", b'"from a client"')
        await broker.node.wait_for_line(r"worker c got hello from a client")
        survey = await client.nc.request(f"mw.ctl.{node}.ps", b"", timeout=10)
        assert pid in {row["pid"] for row in json.loads(survey.data)["result"]["list"]}
    finally:
        await client.nc.close()
    code, out, err = await run_cli("call", "app:echo", "7", "--nats", broker.url, *broker.cli_args["client"])
    assert (code, json.loads(out)) == (0, {"echo": 7}), err


async def test_the_client_cannot_spawn_cancel_terminate_or_reach_jetstream(broker: Broker) -> None:
    code, out, err = await spawn_as(broker, "admin", "d")
    assert code == 0, err
    pid = out.strip()
    node = pid[1:].split("@", 1)[0]
    target = json.dumps({"target": pid}).encode()
    client = await client_as(broker, "client")
    try:
        refused = {
            "mw.spawn.app:host": json.dumps({"entry": "app:worker"}).encode(),
            f"mw.ctl.{node}.spawn": json.dumps({"entry": "app:worker", "host": "app:host"}).encode(),
            f"mw.ctl.{node}.cancel": target,
            f"mw.ctl.{node}.terminate": target,
            f"mw.ctl.{node}.monitor": target,
            f"mw.node.{node}.hb": b"",           # a forged heartbeat or goodbye
            f"mw.ack.{node}": b"",               # a forged stream acknowledgement
            f"mw.dlq.{node}": b"",
            "$JS.API.INFO": b"",
            "$KV.mw_names.x": b"",
        }
        for subject, body in refused.items():
            await client.nc.publish(subject, body, reply=client.nc.new_inbox())
            await client.refused(subject)
        for subject in (f"mw.p.{node}.>", f"mw.dlq.{node}", "mw.>"):  # nobody else's traffic
            await client.nc.subscribe(subject)
            await client.refused(subject, "subscription")
        assert client.nc.is_connected  # refusals do not cost the connection
        # The process is still there: nothing above reached the node.
        await client.nc.publish(f"mw.p.{node}.{pid[1:-1].rsplit('|', 1)[1]}.still", b'"here"')
        await broker.node.wait_for_line(r"worker d got still here")
    finally:
        await client.nc.close()

    code, out, err = await spawn_as(broker, "client", "e")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        'error: PermissionDenied: nats: permissions violation for publish to "mw.spawn.app:host" '
        "(the NATS server does not allow this identity to do that)"]
    # The refusals were the client's business: the node logged nothing about them.
    alarming = [line for line in broker.node.lines if " WARNING " in line or " ERROR " in line]
    assert alarming == []


async def test_wrong_credentials_are_one_clear_line(nkey_broker: Broker, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.nk"
    nkey_pair(stranger)  # a valid key the server does not know
    url = nkey_broker.url
    refused = "the server refused the credentials (authorization violation)"
    # A node with refused credentials says so and exits non-zero, without a traceback.
    node = NodeProcess(write_project(tmp_path / "p", PROJECT), "refused", nats_url=url,
                       args=("--set", f"nats.nkeys_seed={stranger}"))
    await node.start(ready=None)
    results = await asyncio.gather(run_cli("ps", "--nats", url, "--set", f"nats.nkeys_seed={stranger}"),
                                   run_cli("ps", "--nats", url, "--creds", str(tmp_path / "missing.creds")))
    reasons = [refused, f"NATS credentials file {tmp_path / 'missing.creds'}: No such file or directory"]
    for reason, (code, out, err) in zip(reasons, results):
        assert code == 1 and out == "", err
        assert err.strip().splitlines() == [f"error: cannot connect to NATS at {url}: {reason}"]
    assert await node.wait() == 1
    assert "Traceback" not in node.output and refused in node.output

    # The other ways a credential is wrong, through the same connect (in this process).
    not_a_seed = tmp_path / "public.txt"
    not_a_seed.write_text(nkey_pair(tmp_path / "other.nk"))
    not_creds = tmp_path / "x.creds"
    not_creds.write_text("hello\n")
    truncated = tmp_path / "cut.creds"  # cut short after the seed block's first line
    truncated.write_text("-----BEGIN NATS USER JWT-----\neyJ\n------END NATS USER JWT------\n"
                         "-----BEGIN USER NKEY SEED-----")
    cases = [
        (ConnectOptions([url]), refused),
        (ConnectOptions([url], nkeys_seed=str(tmp_path / "missing.nk")),
         f"nkey seed file {tmp_path / 'missing.nk'}: No such file or directory"),
        (ConnectOptions([url], nkeys_seed=str(not_a_seed)), f"nkey seed file {not_a_seed}: not an nkey seed"),
        (ConnectOptions([url], creds_file=str(not_creds)), f"NATS credentials file {not_creds}: not a .creds file"),
        (ConnectOptions([url], creds_file=str(truncated)), f"NATS credentials file {truncated}: not a .creds file"),
        (ConnectOptions([url], tls_ca_file=str(not_creds)), f"TLS CA file {not_creds}: not a PEM certificate"),
    ]
    for options, reason in cases:
        with pytest.raises(BrokerUnavailable) as caught:
            await connect(options)
        assert str(caught.value).startswith(f"cannot connect to NATS at {url}: {reason}"), options


async def test_tls_without_a_client_certificate_or_from_another_ca_is_refused(tls_broker: Broker,
                                                                              tmp_path: Path) -> None:
    other = trustme.CA()
    cert = other.issue_cert("admin@moonwire")
    other.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "other.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    ca = str(Path(tls_broker.cli_args["client"][1].split("=", 1)[1]))
    url, plain = tls_broker.url, tls_broker.url.replace("tls://", "nats://")
    cases = [  # what is wrong, and what the error says (a TLS 1.3 refusal may arrive as a dropped connection)
        (ConnectOptions([plain]), ("certificate verify failed",)),  # no TLS settings: the system's CAs
        (ConnectOptions([url], tls_ca_file=ca), ("alert certificate required", "client certificate")),
        (ConnectOptions([url], tls_ca_file=ca, tls_cert_file=str(tmp_path / "other.pem"),
                        tls_key_file=str(tmp_path / "other.key")), ("alert unknown ca", "client certificate")),
        (ConnectOptions([url], tls_ca_file=str(tmp_path / "other-ca.pem")), ("certificate verify failed",)),
    ]
    for options, reason in cases:
        with pytest.raises(BrokerUnavailable) as caught:
            await asyncio.wait_for(connect(options), 15)  # refused at once, not after retries
        assert any(why in str(caught.value).lower() for why in reason), caught.value
    # The command line says it in one line.
    code, out, err = await run_cli("ps", "--nats", url, "--set", f"nats.tls.ca_file={ca}")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: cannot connect to NATS at {url}: "), err


# ------------------------------------------------------------ a .creds file (operator mode)
#
# A creds file holds a user JWT signed by an account that an operator signed; the server
# trusts the operator. These few lines mint them as `nsc` would, for this test only:
# what moonwire ships is nats-auth.conf / nats-tls.conf, and this proves `--creds`.

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _keys(prefix: int) -> tuple[bytes, nkeys.KeyPair]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return seed, nkeys.from_seed(bytearray(seed))


def _jwt(issuer: nkeys.KeyPair, subject: nkeys.KeyPair, kind: str, **nats_claims: object) -> str:
    claims: dict[str, object] = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": kind,
                                 "sub": subject.public_key.decode(), "nats": {**nats_claims, "type": kind, "version": 2}}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()).decode()
    signed = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode()) + "." + _b64(json.dumps(claims).encode())
    return signed + "." + _b64(issuer.sign(signed.encode()))


async def test_a_creds_file_logs_in_a_node_and_a_command(tmp_path: Path) -> None:
    _, operator = _keys(nkeys.PREFIX_BYTE_OPERATOR)
    _, system = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    _, account = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, user = _keys(nkeys.PREFIX_BYTE_USER)
    limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1,
              "leaf": -1}
    jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    accounts = {system: _jwt(operator, system, "account", limits=limits),
                account: _jwt(operator, account, "account", limits={**limits, **jetstream})}
    preload = "\n".join(f"  {key.public_key.decode()}: {token}" for key, token in accounts.items())
    conf = tmp_path / "operator.conf"
    conf.write_text(f"operator: {_jwt(operator, operator, 'operator')}\nsystem_account: {system.public_key.decode()}\n"
                    f"resolver: MEMORY\nresolver_preload: {{\n{preload}\n}}\n")
    creds = tmp_path / "node.creds"
    creds.write_text(f"-----BEGIN NATS USER JWT-----\n{_jwt(account, user, 'user', subs=-1, data=-1, payload=-1)}\n"
                     f"------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n"
                     f"------END USER NKEY SEED------\n")
    server = await start_nats(tmp_path / "nats", port=free_port(), args=("-c", str(conf)))
    node = NodeProcess(write_project(tmp_path / "project", PROJECT), "cr", nats_url=server.address,
                       args=("--creds", str(creds)))
    try:
        await node.start()
        code, out, err = await run_cli("call", "app:echo", "3", "--nats", server.address, "--creds", str(creds))
        assert (code, json.loads(out)) == (0, {"echo": 3}), err
        code, out, err = await run_cli("call", "app:echo", "3", "--nats", server.address)
        assert code == 1 and "the server refused the credentials" in err, err
    finally:
        await node.aclose()
        await server.stop()
