"""Checking the credentials a connection will present before it is attempted, so that a
missing or malformed file is one clear error naming the file, not a traceback from
deep inside nats-py (which reads the files only while it connects) or a generic
"cannot connect"."""

from __future__ import annotations

import ssl
from pathlib import Path

import nkeys


class BadCredentials(Exception):
    """A credentials, nkey seed or TLS file cannot be used; the message names it and why."""


def _read(what: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise BadCredentials(f"{what} {path}: {err.strerror or err}") from err


def _seed_ok(what: str, path: str, seed: bytes) -> None:
    try:
        nkeys.from_seed(bytearray(seed.strip())).wipe()
    except Exception as err:  # noqa: BLE001 - nkeys raises its own classes and binascii's
        raise BadCredentials(f"{what} {path}: not an nkey seed (expected one line starting with 'SU')") from err


def check_keys(creds_file: str | None, nkeys_seed: str | None) -> None:
    """Read the creds file and the nkey seed file, when given, as nats-py will.

    Raises:
        BadCredentials: a file is missing or unreadable, a creds file lacks its JWT or
            seed block, or a seed does not parse.
    """
    if creds_file is not None:
        text = _read("NATS credentials file", creds_file)
        # The seed is the line after its block's header (nats-py reads it so): a file cut
        # short there has none.
        seed_lines = text.split(b"BEGIN USER NKEY SEED", 1)[-1].split(b"\n", 2)
        if b"BEGIN NATS USER JWT" not in text or b"BEGIN USER NKEY SEED" not in text or len(seed_lines) < 2:
            raise BadCredentials(f"NATS credentials file {creds_file}: not a .creds file (expected a 'NATS USER "
                                 f"JWT' block and a 'USER NKEY SEED' block, as `nsc generate creds` writes)")
        _seed_ok("NATS credentials file", creds_file, seed_lines[1])
    if nkeys_seed is not None:
        _seed_ok("nkey seed file", nkeys_seed, _read("nkey seed file", nkeys_seed))


def load_tls(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext | None:
    """An SSL context when a CA or a client certificate is given, else None (plain, or
    TLS from a ``tls://`` URL with the system's CAs).

    Raises:
        BadCredentials: a CA, certificate or key file is missing or does not load.
    """
    if not (ca_file or cert_file):
        return None
    for what, path in (("TLS CA file", ca_file), ("TLS certificate file", cert_file), ("TLS key file", key_file)):
        if path is not None:
            _read(what, path)
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as err:
        raise BadCredentials(f"TLS CA file {ca_file}: not a PEM certificate ({err.reason or err})") from err
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as err:
            raise BadCredentials(f"TLS certificate {cert_file} with key {key_file or '(in the same file)'}: "
                                 f"{err.reason or err}") from err
    return context
