"""The ``crypto`` and ``hash`` modules (wippy-modules §8): known-answer vectors, argument
rules and error kinds, the budget, and replay-identical randomness in workflows."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from moonwire.lua import Limits, LuaState, Replay
from support import run_lua

MODULES = ("crypto", "hash")


async def value_of(source: str, *args: object, **kwargs: object) -> object:
    outcome = await run_lua(source, *args, modules=MODULES, **kwargs)
    assert outcome.error is None, outcome.error
    return outcome.value


async def error_of(source: str, *args: object, **kwargs: object) -> str:
    outcome = await run_lua(source, *args, modules=MODULES, **kwargs)
    assert outcome.error is not None, outcome.value
    return outcome.error.message


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ------------------------------------------------------------------ hmac (RFC 4231)

RFC4231 = [  # (key, data, HMAC-SHA256, HMAC-SHA512)
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
     "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
     "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
     "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
     "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
]


@pytest.mark.parametrize(("key", "data", "sha256", "sha512"), RFC4231)
async def test_hmac_rfc4231_crypto_key_first_hash_data_first(key: bytes, data: bytes, sha256: str, sha512: str) -> None:
    result = await value_of("""
        return function(key, data)
          return {crypto.hmac.sha256(key, data), crypto.hmac.sha512(key, data),
                  hash.hmac_sha256(data, key), hash.hmac_sha512(data, key), hash.hmac_sha256(data, key, true)}
        end""", key, data)
    assert result == [sha256, sha512, sha256, sha512, bytes.fromhex(sha256)]


async def test_hash_hmac_md5_and_sha1() -> None:
    result = await value_of("""
        return function() return {hash.hmac_md5("data", "key"), hash.hmac_sha1("data", "key")} end""")
    assert result == [hmac.new(b"key", b"data", "md5").hexdigest(), hmac.new(b"key", b"data", "sha1").hexdigest()]


# ------------------------------------------------------------------ hashes, fnv


HASHES = {
    "md5": "900150983cd24fb0d6963f7d28e17f72",
    "sha1": "a9993e364706816aba3e25717850c26c9cd0d89d",
    "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    "sha512": "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
              "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
}


@pytest.mark.parametrize(("name", "digest"), HASHES.items())
async def test_hash_vectors_hex_and_raw(name: str, digest: str) -> None:
    result = await value_of(f"""
        return function()
          local hex, err = hash.{name}("abc")
          return {{hex, err == nil, hash.{name}("abc", true), hash.{name}("abc", false)}}
        end""")
    assert result == [digest, True, bytes.fromhex(digest), digest]


async def test_fnv_is_fnv1_not_fnv1a() -> None:
    result = await value_of("""
        return function()
          return {hash.fnv32(""), hash.fnv32("a"), hash.fnv32("foobar"), math.type(hash.fnv32("a")),
                  hash.fnv64(""), hash.fnv64("a"), hash.fnv64("foobar"), math.type(hash.fnv64("a"))}
        end""")
    assert result == [0x811C9DC5, 0x050C5D7E, 0x31F0B262, "integer",
                      float(0xCBF29CE484222325), float(0xAF63BD4C8601B7BE), float(0x340D8765A4DDA9C2), "float"]


async def test_hash_non_string_is_an_invalid_error_not_a_raise() -> None:
    result = await value_of("""
        return function()
          local out = {}
          for _, call in ipairs({
            function() return hash.md5(5) end, function() return hash.sha256(nil) end,
            function() return hash.fnv32({}) end, function() return hash.hmac_sha256("x", 5) end,
          }) do
            local v, err = call()
            out[#out + 1] = v == nil and err:kind()
          end
          return out
        end""")
    assert result == ["Invalid"] * 4


# ------------------------------------------------------------------ pbkdf2


PBKDF2_SHA256 = [  # RFC 6070's inputs with HMAC-SHA256 (the module has no SHA-1)
    (b"password", b"salt", 1, 32, "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"),
    (b"password", b"salt", 2, 32, "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"),
    (b"password", b"salt", 4096, 32, "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"),
]


@pytest.mark.parametrize(("password", "salt", "iterations", "length", "expected"), PBKDF2_SHA256)
async def test_pbkdf2_vectors(password: bytes, salt: bytes, iterations: int, length: int, expected: str) -> None:
    assert await value_of("return function(p, s, i, n) return crypto.pbkdf2(p, s, i, n) end",
                          password, salt, iterations, length) == bytes.fromhex(expected)


async def test_pbkdf2_sha512_and_a_non_string_hash_is_the_default() -> None:
    result = await value_of("""
        return function() return {crypto.pbkdf2("pw", "salt", 10, 64, "sha512"), crypto.pbkdf2("pw", "salt", 10, 16, 5)} end""")
    assert result == [hashlib.pbkdf2_hmac("sha512", b"pw", b"salt", 10, 64),
                      hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 10, 16)]


async def test_pbkdf2_beyond_the_budget_runs_in_a_thread_outside_workflows() -> None:
    # 600,000 iterations are ~15M instructions' worth: more than this budget, yet it
    # succeeds, derived in a worker thread while the unit waits.
    limits = Limits(instructions=2_000_000)
    assert await value_of('return function() return crypto.pbkdf2("pw", "salt", 600000, 32) end', limits=limits) == \
        hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 600000, 32)


async def test_pbkdf2_beyond_the_budget_in_a_workflow_fails_with_the_budget_error() -> None:
    state = LuaState(Limits(instructions=2_000_000), replay=Replay(now_ns=lambda: 0, random=random.Random(1)))
    message = await error_of('return function() return crypto.pbkdf2("pw", "salt", 600000, 32) end', state=state)
    assert "instruction budget exceeded" in message


# ------------------------------------------------------------------ encrypt, decrypt


@pytest.mark.parametrize(("algorithm", "key_size"), [("aes", 16), ("aes", 24), ("aes", 32), ("chacha20", 32)])
async def test_encrypt_decrypt_round_trip_and_tamper(algorithm: str, key_size: int) -> None:
    result = await value_of(f"""
        return function(key)
          local c = crypto.encrypt.{algorithm}("secret message", key)
          local c2 = crypto.encrypt.{algorithm}("secret message", key)
          local with_aad = crypto.encrypt.{algorithm}("m", key, "header")
          local last = #c
          local flipped = c:sub(1, last - 1) .. string.char((c:byte(last) + 1) % 256)
          local _, tampered = crypto.decrypt.{algorithm}(flipped, key)
          local _, wrong_aad = crypto.decrypt.{algorithm}(with_aad, key, "other")
          local _, short = crypto.decrypt.{algorithm}("short", key)
          return {{crypto.decrypt.{algorithm}(c, key), #c, c ~= c2, crypto.decrypt.{algorithm}(with_aad, key, "header"),
                  tampered:kind(), wrong_aad:kind(), short:kind()}}
        end""", b"k" * key_size)
    assert result == ["secret message", 12 + 14 + 16, True, "m", "Internal", "Internal", "Invalid"]


async def test_encrypt_bad_key_sizes_are_invalid() -> None:
    result = await value_of("""
        return function()
          local _, a = crypto.encrypt.aes("x", "short")
          local _, b = crypto.decrypt.aes("x", string.rep("k", 20))
          local _, c = crypto.encrypt.chacha20("x", string.rep("k", 16))
          return {a:kind(), a:message(), b:kind(), c:kind(), c:message()}
        end""")
    assert result == ["Invalid", "key must be 16, 24, or 32 bytes", "Invalid", "Invalid", "key must be 32 bytes"]


# ------------------------------------------------------------------ jwt

JWT_IO = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
          ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")


async def test_jwt_verify_known_hs256_token() -> None:
    claims, iat_type = await value_of("""
        return function(token)
          local claims = crypto.jwt.verify(token, "your-256-bit-secret", "HS256", false)
          return {claims, math.type(claims.iat)}
        end""", JWT_IO)
    assert claims == {"sub": "1234567890", "name": "John Doe", "iat": 1516239022.0}
    assert iat_type == "float"  # numeric claims come back as floats, as Wippy's


async def test_jwt_encode_known_answer() -> None:
    token = await value_of("""
        return function()
          return crypto.jwt.encode({sub = "1234567890", name = "John Doe", iat = 1516239022}, "your-256-bit-secret")
        end""")
    header = b64url(b'{"alg":"HS256","typ":"JWT"}')
    payload = b64url(b'{"iat":1516239022,"name":"John Doe","sub":"1234567890"}')  # keys sorted, as Go's
    signature = b64url(hmac.new(b"your-256-bit-secret", f"{header}.{payload}".encode(), "sha256").digest())
    assert token == f"{header}.{payload}.{signature}"


@pytest.mark.parametrize(("alg", "digest"), [("HS384", "sha384"), ("HS512", "sha512"), ("XX", "sha256")])
async def test_jwt_algorithms_and_header_merge(alg: str, digest: str) -> None:
    token, claims = await value_of(f"""
        return function()
          local token = crypto.jwt.encode({{sub = "u", exp = 4102444800, _header = {{kid = "k1"}}}}, "key", "{alg}")
          return {{token, crypto.jwt.verify(token, "key", "{"HS256" if alg == "XX" else alg}")}}
        end""")
    head, body, signature = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    assert header == {"alg": "HS256" if alg == "XX" else alg, "typ": "JWT", "kid": "k1"}  # unknown alg: HS256
    assert base64.urlsafe_b64decode(signature + "==") == hmac.new(b"key", f"{head}.{body}".encode(), digest).digest()
    assert claims == {"sub": "u", "exp": 4102444800.0}


async def test_jwt_verify_failures_are_internal() -> None:
    result = await value_of("""
        return function()
          local function kind(v, err) return v == nil and err:kind() .. ": " .. err:message() end
          local good = crypto.jwt.encode({sub = "u", exp = 4102444800}, "key")
          local no_exp = crypto.jwt.encode({sub = "u"}, "key")
          local expired = crypto.jwt.encode({sub = "u", exp = 1000}, "key")
          return {
            kind(crypto.jwt.verify(good, "other")),
            kind(crypto.jwt.verify(good, "key", "HS512")),
            kind(crypto.jwt.verify(expired, "key")),
            kind(crypto.jwt.verify(no_exp, "key")),
            crypto.jwt.verify(no_exp, "key", "HS256", false).sub,
            kind(crypto.jwt.verify("not.a.token", "key")),
          }
        end""")
    assert [r.split(":")[0] for r in result if r != "u"] == ["Internal"] * 5
    assert "signature is invalid" in result[0] and "signing method" in result[1]
    assert "expired" in result[2] and "exp claim is required" in result[3] and result[4] == "u"


def rsa_pems() -> tuple[str, str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
    pkcs1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return pkcs8, pkcs1, public


async def test_jwt_rs256_pkcs8_and_pkcs1_and_bad_keys() -> None:
    pkcs8, pkcs1, public = rsa_pems()
    result = await value_of("""
        return function(pkcs8, pkcs1, public)
          local a = crypto.jwt.encode({sub = "a", exp = 4102444800}, pkcs8, "RS256")
          local b = crypto.jwt.encode({sub = "b", exp = 4102444800}, pkcs1, "RS256")
          local _, bad_private = crypto.jwt.encode({sub = "c"}, "not a pem", "RS256")
          local _, bad_public = crypto.jwt.verify(a, "not a pem", "RS256")
          local _, as_hmac = crypto.jwt.verify(a, public)   -- HS256 expected: alg mismatch
          return {crypto.jwt.verify(a, public, "RS256").sub, crypto.jwt.verify(b, public, "RS256").sub,
                  bad_private:kind(), bad_public:kind(), as_hmac:kind()}
        end""", pkcs8, pkcs1, public)
    assert result == ["a", "b", "Invalid", "Internal", "Internal"]


# ------------------------------------------------------------------ random, compare


async def test_random_bytes_string_uuid() -> None:
    result = await value_of("""
        return function()
          return {#crypto.random.bytes(32), crypto.random.bytes(32) ~= crypto.random.bytes(32),
                  crypto.random.string(40), crypto.random.string(200, "ab"), crypto.random.string(5, 7),
                  crypto.random.uuid()}
        end""")
    assert result[:2] == [32, True]
    assert re.fullmatch(r"[A-Za-z0-9]{40}", result[2]) and re.fullmatch(r"[ab]{200}", result[3])
    assert re.fullmatch(r"[A-Za-z0-9]{5}", result[4])  # a non-string charset is ignored
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", result[5])


async def test_constant_time_compare() -> None:
    assert await value_of("""
        return function()
          return {crypto.constant_time_compare("abc", "abc"), crypto.constant_time_compare("abc", "abd"),
                  crypto.constant_time_compare("abc", "ab"), select("#", crypto.constant_time_compare("a", "a"))}
        end""") == [True, False, False, 1]


async def test_invalid_arguments_are_invalid_errors() -> None:
    result = await value_of("""
        return function()
          local out = {}
          for _, call in ipairs({
            function() return crypto.random.bytes(0) end,
            function() return crypto.random.bytes(1048577) end,
            function() return crypto.random.string(-1) end,
            function() return crypto.random.string(4, "") end,
            function() return crypto.hmac.sha256("", "data") end,
            function() return crypto.pbkdf2("", "salt", 1, 32) end,
            function() return crypto.pbkdf2("pw", "", 1, 32) end,
            function() return crypto.pbkdf2("pw", "salt", 0, 32) end,
            function() return crypto.pbkdf2("pw", "salt", 10000001, 32) end,
            function() return crypto.pbkdf2("pw", "salt", 1, 0) end,
            function() return crypto.pbkdf2("pw", "salt", 1, 32, "md5") end,
          }) do
            local v, err = call()
            out[#out + 1] = v == nil and err:kind()
          end
          return out
        end""")
    assert result == ["Invalid"] * 11


@pytest.mark.parametrize(("call", "expected"), [
    ("crypto.random.bytes('x')", "bad argument #1 to 'bytes' (number expected, got string)"),
    ("crypto.hmac.sha256({}, 'x')", "bad argument #1 to 'sha256' (string expected, got table)"),
    ("crypto.encrypt.aes('x', nil)", "bad argument #2 to 'aes' (string expected, got nil)"),
    ("crypto.jwt.encode('x', 'k')", "bad argument #1 to 'encode' (table expected, got string)"),
    ("crypto.jwt.verify('t', 'k', 'HS256', 1)", "bad argument #4 to 'verify' (boolean expected, got number)"),
    ("crypto.pbkdf2('p', 's', '1', 32)", "bad argument #3 to 'pbkdf2' (number expected, got string)"),
    ("crypto.constant_time_compare('a', false)", "bad argument #2 to 'constant_time_compare' (string expected, got boolean)"),
])
async def test_wrong_argument_types_raise(call: str, expected: str) -> None:
    message = await error_of(f"return function()\n local v = {call}\n return v\nend")
    assert expected in message and "test:fn.lua:2:" in message  # names the caller's line


async def test_modules_are_read_only() -> None:
    message = await error_of("return function() crypto.random.bytes = nil end")
    assert "read-only" in message or "cannot" in message


# ------------------------------------------------------------------ budget


async def test_hashing_a_huge_string_is_charged_to_the_budget() -> None:
    big = b"x" * (8 * 1024 * 1024)  # ~1M instructions' worth: more than this budget
    message = await error_of("return function(s) return hash.sha256(s) end", big,
                             limits=Limits(instructions=500_000))
    assert "instruction budget exceeded" in message
    assert await value_of("return function(s) return hash.sha256(s) end", big) == hashlib.sha256(big).hexdigest()


# ------------------------------------------------------------------ workflows: replay-identical


RANDOM_SOURCE = """
    return function()
      local key = string.rep("k", 32)
      return {crypto.random.bytes(16), crypto.random.string(12), crypto.random.uuid(),
              crypto.encrypt.aes("m", key), crypto.encrypt.chacha20("m", key)}
    end"""


def replay_state(seed: int) -> LuaState:
    return LuaState(replay=Replay(now_ns=lambda: 1_700_000_000 * 10**9, random=random.Random(seed)))


async def test_workflow_randomness_is_replay_identical() -> None:
    first = await value_of(RANDOM_SOURCE, state=replay_state(42))
    replayed = await value_of(RANDOM_SOURCE, state=replay_state(42))
    other_seed = await value_of(RANDOM_SOURCE, state=replay_state(43))
    machine_a, machine_b = await value_of(RANDOM_SOURCE), await value_of(RANDOM_SOURCE)
    assert first == replayed
    assert all(a != b for a, b in zip(first, other_seed))
    assert all(a != b for a, b in zip(machine_a, machine_b))
    # Still decryptable: the nonce travels with the ciphertext.
    assert await value_of("return function(c) return crypto.decrypt.aes(c, string.rep('k', 32)) end", first[3]) == "m"


async def test_jwt_expiry_reads_the_workflows_clock() -> None:
    token = await value_of('return function() return crypto.jwt.encode({exp = 1700000100}, "k") end')
    source = 'return function(t) local c, err = crypto.jwt.verify(t, "k") return c ~= nil end'
    assert await value_of(source, token, state=replay_state(1)) is True  # workflow clock: 100 s before exp
    assert await value_of(source, token) is False  # the machine's clock: long expired
