"""The Python functions behind the Lua ``crypto`` and ``hash`` modules of one state
(``_crypto.lua``, wippy-modules §8). Trusted Lua code holds them as upvalues only; it
checks argument types and charges the instruction budget before calling them.

A failure comes back as ``(None, message, kind)``, which the Lua side turns into an error
object (so its stack names the Lua caller); success as the value alone.

In a workflow's state (``state.random`` set) every random byte, including the nonces of
``encrypt.*``, comes from the workflow's seeded source, so a replay makes the same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.x509 import load_pem_x509_certificate

from ._channel import Channel
from ._errors import MoonwireError
from ._values import to_lua, to_python

if TYPE_CHECKING:
    from ._protocols import LuaRuntime

MAX_RANDOM = 1024 * 1024  # bytes one random call may make (Wippy's limit)
MAX_PBKDF2_ITERATIONS = 10_000_000  # Wippy's limit
NONCE = 12
DEFAULT_CHARSET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_HMAC_ALGS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
_HASHES = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
_FNV32 = (0x811C9DC5, 0x01000193, 0xFFFFFFFF)
_FNV64 = (0xCBF29CE484222325, 0x100000001B3, 0xFFFFFFFFFFFFFFFF)

INVALID, INTERNAL = b"Invalid", b"Internal"
Failure = tuple[None, bytes, bytes]


def _fail(message: str, kind: bytes = INVALID) -> Failure:
    return (None, message.encode(), kind)


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64url(text: bytes) -> bytes:
    if b"=" in text:  # Go's RawURLEncoding: no padding
        raise ValueError("illegal base64 data: padding")
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


def _go_json(value: Any) -> bytes:
    """JSON as Go's encoding/json writes a map: keys sorted, no spaces, whole floats
    without a fraction, and ``<``, ``>``, ``&`` escaped."""
    text = json.dumps(_whole_floats(value), separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                      allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _whole_floats(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, MoonwireError):
        return value.to_dict()
    if isinstance(value, bytes):
        raise ValueError("a claim holds a string that is not valid UTF-8")
    if isinstance(value, list):
        return [_whole_floats(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _whole_floats(v) for k, v in value.items()}
    return value


def _floats(value: Any) -> Any:
    """Numbers as Go's json decoding into ``any`` makes them: all float64."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    return value


def _private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)  # PKCS1 or PKCS8
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("key is not an RSA private key")
    return key


def _public_key(pem: bytes) -> rsa.RSAPublicKey:
    if b"CERTIFICATE" in pem:
        key: Any = load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("key is not an RSA public key")
    return key


def fnv1(data: bytes, params: tuple[int, int, int]) -> int:
    """FNV-1 (multiply, then xor: what Go's ``hash/fnv`` New32/New64 compute)."""
    value, prime, mask = params
    for byte in data:
        value = ((value * prime) & mask) ^ byte
    return value


class CryptoFunctions:
    def __init__(self, state: LuaRuntime) -> None:
        self.state = state

    def table(self) -> Any:
        names = [
            "random_bytes", "random_string", "random_uuid", "hmac", "encrypt", "decrypt", "jwt_encode",
            "jwt_verify", "pbkdf2", "pbkdf2_start", "can_offload", "compare", "digest", "hmac_digest", "fnv",
        ]
        return self.state.table_from({name.encode(): getattr(self, name) for name in names})

    # ------------------------------------------------------------ random

    def _random(self, n: int) -> bytes:
        source = self.state.random
        if source is not None:  # a workflow: its seeded source, the same on replay
            return source.randbytes(n)
        return secrets.token_bytes(n)

    @staticmethod
    def _length(n: Any) -> int | Failure:
        if not isinstance(n, int) and not (isinstance(n, float) and n.is_integer()):
            return _fail("length must be a positive integer")
        n = int(n)
        if n <= 0:
            return _fail("length must be a positive integer")
        if n > MAX_RANDOM:
            return _fail("length exceeds maximum allowed size (1MB)")
        return n

    def random_bytes(self, n: Any) -> tuple[Any, ...]:
        length = self._length(n)
        if isinstance(length, tuple):
            return length
        return (self._random(length),)

    def random_string(self, n: Any, charset: Any) -> tuple[Any, ...]:
        length = self._length(n)
        if isinstance(length, tuple):
            return length
        chars = charset if isinstance(charset, bytes) else DEFAULT_CHARSET
        if not chars:
            return _fail("charset cannot be empty")
        # charset[byte % #charset], as Wippy (modulo bias included), as one translate.
        table = bytes(chars[b % len(chars)] for b in range(256))
        return (self._random(length).translate(table),)

    def random_uuid(self) -> bytes:
        return str(uuid.UUID(bytes=self._random(16), version=4)).encode()

    # ------------------------------------------------------------ hmac, compare, hashes

    def hmac(self, algorithm: bytes, key: bytes, data: bytes) -> tuple[Any, ...]:
        if not key:
            return _fail("key cannot be empty")
        return (hmac.new(key, data, _HASHES[algorithm.decode()]).hexdigest().encode(),)

    def compare(self, a: bytes, b: bytes) -> bool:
        return hmac.compare_digest(a, b)

    def digest(self, algorithm: bytes, data: bytes, raw: bool) -> bytes:
        h = _HASHES[algorithm.decode()](data)
        return h.digest() if raw else h.hexdigest().encode()

    def hmac_digest(self, algorithm: bytes, data: bytes, secret: bytes, raw: bool) -> bytes:
        h = hmac.new(secret, data, _HASHES[algorithm.decode()])
        return h.digest() if raw else h.hexdigest().encode()

    def fnv(self, bits: int, data: bytes) -> int | float:
        if int(bits) == 32:
            return fnv1(data, _FNV32)
        return float(fnv1(data, _FNV64))  # a float, as Wippy: above 2^53 it loses precision

    # ------------------------------------------------------------ encrypt, decrypt

    @staticmethod
    def _cipher(algorithm: bytes, key: bytes) -> AESGCM | ChaCha20Poly1305 | Failure:
        if algorithm == b"aes":
            if len(key) not in (16, 24, 32):
                return _fail("key must be 16, 24, or 32 bytes")
            return AESGCM(key)
        if len(key) != 32:
            return _fail("key must be 32 bytes")
        return ChaCha20Poly1305(key)

    def encrypt(self, algorithm: bytes, data: bytes, key: bytes, aad: bytes | None) -> tuple[Any, ...]:
        cipher = self._cipher(algorithm, key)
        if isinstance(cipher, tuple):
            return cipher
        nonce = self._random(NONCE)
        return (nonce + cipher.encrypt(nonce, data, aad),)

    def decrypt(self, algorithm: bytes, data: bytes, key: bytes, aad: bytes | None) -> tuple[Any, ...]:
        cipher = self._cipher(algorithm, key)
        if isinstance(cipher, tuple):
            return cipher
        if len(data) < NONCE:
            return _fail("encrypted data too short")
        try:
            return (cipher.decrypt(data[:NONCE], data[NONCE:], aad),)
        except InvalidTag:
            return _fail("decrypt: message authentication failed", INTERNAL)

    # ------------------------------------------------------------ jwt

    def jwt_encode(self, claims: Any, key: bytes, alg: bytes) -> tuple[Any, ...]:
        name = alg.decode(errors="replace")
        if name not in _HMAC_ALGS and name != "RS256":
            name = "HS256"  # as Wippy: an unknown algorithm signs with HS256
        try:
            payload = to_python(self.state, claims)
        except MoonwireError as err:
            return _fail(f"failed to convert payload to map: {err.message}")
        if payload == []:
            payload = {}
        if not isinstance(payload, dict):
            return _fail("failed to convert payload to map")
        header: dict[str, Any] = {"alg": name, "typ": "JWT"}
        extra = payload.get("_header")
        if isinstance(extra, dict):
            header.update(extra)
            del payload["_header"]
        try:
            signing_input = _b64url(_go_json(header)) + b"." + _b64url(_go_json(payload))
        except ValueError as err:
            return _fail(f"sign token: {err}", INTERNAL)
        if name == "RS256":
            try:
                private = _private_key(key)
            except (ValueError, TypeError) as err:
                return _fail(f"invalid RSA private key: {err}")
            signature = private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            if not key:
                return _fail("sign token: key is invalid", INTERNAL)
            signature = hmac.new(key, signing_input, _HMAC_ALGS[name]).digest()
        return (signing_input + b"." + _b64url(signature),)

    def jwt_verify(self, token: bytes, key: bytes, alg: bytes, require_exp: bool) -> tuple[Any, ...]:
        try:
            claims = self._verified_claims(token, key, alg.decode(errors="replace"), require_exp)
        except ValueError as err:
            return _fail(f"verify token: {err}", INTERNAL)
        return (to_lua(self.state, _floats(claims)),)

    def _verified_claims(self, token: bytes, key: bytes, alg: str, require_exp: bool) -> dict[str, Any]:
        parts = token.split(b".")
        if len(parts) != 3:
            raise ValueError("token is malformed: token contains an invalid number of segments")
        try:
            header = json.loads(_unb64url(parts[0]))
            claims = json.loads(_unb64url(parts[1]))
            signature = _unb64url(parts[2])
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"token is malformed: {err}") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError("token is malformed: header or claims is not a JSON object")
        if header.get("alg") != alg or (alg not in _HMAC_ALGS and alg != "RS256"):
            raise ValueError(f"token is unverifiable: signing method {header.get('alg')} is invalid")
        signing_input = parts[0] + b"." + parts[1]
        if alg == "RS256":
            try:
                _public_key(key).verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
            except InvalidSignature:
                raise ValueError("token signature is invalid: crypto/rsa: verification error") from None
            except (TypeError, ValueError) as err:
                raise ValueError(f"token is unverifiable: error while executing keyfunc: {err}") from None
        else:
            if not key:
                raise ValueError("token signature is invalid: key is invalid")
            expected = hmac.new(key, signing_input, _HMAC_ALGS[alg]).digest()
            if not hmac.compare_digest(expected, signature):
                raise ValueError("token signature is invalid: signature is invalid")
        now = self.state.clock() / 1e9  # a workflow's clock in a workflow
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if exp is None:
            if require_exp:
                raise ValueError("token has invalid claims: token is missing required claim: exp claim is required")
        elif not _is_number(exp):
            raise ValueError("token has invalid claims: token contains an invalid number: exp")
        elif not now < exp:
            raise ValueError("token has invalid claims: token is expired")
        if nbf is not None:
            if not _is_number(nbf):
                raise ValueError("token has invalid claims: token contains an invalid number: nbf")
            if now < nbf:
                raise ValueError("token has invalid claims: token is not valid yet")
        return claims

    # ------------------------------------------------------------ pbkdf2

    @staticmethod
    def _pbkdf2_args(password: bytes, salt: bytes, iterations: Any, length: Any,
                     hash_name: bytes) -> tuple[str, int, int] | Failure:
        if not password:
            return _fail("password cannot be empty")
        if not salt:
            return _fail("salt cannot be empty")
        if not _is_number(iterations) or not math.isfinite(iterations) or iterations <= 0:
            return _fail("iterations must be positive")
        if iterations > MAX_PBKDF2_ITERATIONS:
            return _fail(f"iterations exceeds maximum ({MAX_PBKDF2_ITERATIONS})")
        if not _is_number(length) or not math.isfinite(length) or length <= 0:
            return _fail("key length must be positive")
        name = hash_name.decode(errors="replace")
        if name not in ("sha256", "sha512"):
            return _fail(f"unsupported hash function: {name}")
        # One derived block per digest size; a huge length is as much work as iterations.
        if int(length) > MAX_RANDOM:
            return _fail("key length exceeds maximum allowed size (1MB)")
        return name, int(iterations), int(length)

    def can_offload(self) -> bool:
        """Whether a long derivation may run in a thread while the unit waits: not in a
        workflow (its event loop is Temporal's, and its code must not wait on the
        machine), and only inside a running unit."""
        return self.state.random is None and self.state.current is not None

    def pbkdf2(self, password: bytes, salt: bytes, iterations: Any, length: Any, hash_name: bytes) -> tuple[Any, ...]:
        """Derive the key here and now (the caller has charged the budget for it)."""
        args = self._pbkdf2_args(password, salt, iterations, length, hash_name)
        if args[0] is None:
            return args
        name, rounds, size = args  # type: ignore[misc]
        return (hashlib.pbkdf2_hmac(name, password, salt, rounds, size),)

    def pbkdf2_start(self, password: bytes, salt: bytes, iterations: Any, length: Any,
                     hash_name: bytes) -> tuple[Any, ...]:
        """Derive the key in a worker thread: a channel that receives the key, or false
        should the derivation fail, when done. Only for a unit outside a workflow (the caller
        checks); the thread is one of _DERIVATIONS, and hashlib releases the
        GIL while OpenSSL derives, so the event loop keeps running meanwhile."""
        args = self._pbkdf2_args(password, salt, iterations, length, hash_name)
        if args[0] is None:
            return args
        name, rounds, size = args  # type: ignore[misc]
        unit = self.state.current
        assert unit is not None
        channel = Channel(1)

        def done(task: asyncio.Task[bytes]) -> None:
            if task.cancelled():
                return  # the unit ended; nobody waits
            channel.offer(task.result() if task.exception() is None else False)

        derived = asyncio.get_running_loop().run_in_executor(_DERIVATIONS, hashlib.pbkdf2_hmac, name, password, salt,
                                                             rounds, size)
        unit.own(derived, done)
        return (channel,)


_DERIVATIONS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="moonwire-pbkdf2")
"""Where long key derivations run: threads of their own, two at most, so that units
deriving keys at once queue here instead of filling the loop's default executor,
which the node needs for other work (name lookups when NATS reconnects)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
