"""First client packets for GF-1: a real Shadowsocks-AEAD first packet, and one payload per exemption.

`exemptions` applies Wu et al.'s five rules (USENIX Security 2023, GF-1) independently of `dpi._extract`, so a
test can first prove its fixture is what it claims (exempt by exactly one rule, or by none) before asking the
censor. Payloads are drawn from a seeded `random.Random` until they qualify, so every run uses the same bytes.
"""
from __future__ import annotations

import random
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dpi.measure import payloads

PRINTABLE = range(0x20, 0x7F)


_printable = payloads.printable


def exemptions(data: bytes) -> set[str]:
    """Every GF-1 exemption that holds for `data` (Ex1 .. Ex5); empty = fully-encrypted-looking, blockable.

    The plain-Python restatement lives in `dpi.measure.payloads` (written apart from `dpi._extract`, the censor's
    compiled one): the catalogue and the FET reproduction share one reference."""
    return set(payloads.exemptions(data))


def shadowsocks_aead_first_packet(seed: int = 1, host: bytes = b"example.org", port: int = 80) -> bytes:
    """The first packet of a Shadowsocks AEAD (chacha20-ietf-poly1305) client: salt, sealed length, sealed request.

    Built like the SIP004 spec: a per-connection subkey = HKDF-SHA1(key, salt, "ss-subkey"), nonces counting up
    from zero. The payload is the SOCKS-style target address followed by an HTTP request. The censor sees
    ciphertext, which is exactly the traffic GF-1 was built to catch.
    """
    rng = random.Random(seed)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"redweb lab password").derive(b"lab")
    salt = rng.randbytes(32)
    subkey = HKDF(algorithm=hashes.SHA1(), length=32, salt=salt, info=b"ss-subkey").derive(key)
    aead = ChaCha20Poly1305(subkey)
    target = b"\x03" + bytes([len(host)]) + host + port.to_bytes(2, "big")
    request = target + b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    sealed_len = aead.encrypt((0).to_bytes(12, "little"), len(request).to_bytes(2, "big"), None)
    sealed = aead.encrypt((1).to_bytes(12, "little"), request, None)
    return salt + sealed_len + sealed


def blockable_first_packet(seed: int = 1) -> bytes:
    """A Shadowsocks-AEAD first packet that meets no exemption (the first seed from `seed` on that gives one)."""
    for s in range(seed, seed + 1000):
        data = shadowsocks_aead_first_packet(s)
        if not exemptions(data):
            return data
    raise AssertionError("no non-exempt Shadowsocks packet in 1000 seeds")


def _draw(make: Callable[[random.Random], bytes], want: set[str], seed: int) -> bytes:
    rng = random.Random(seed)
    for _ in range(10000):
        data = make(rng)
        if exemptions(data) == want:
            return data
    raise AssertionError(f"no payload exempt by exactly {want}")


_LOW_BITS = [b for b in range(256) if bin(b).count("1") <= 3 and not _printable(b)]
_HIGH_BITS = [b for b in range(256) if bin(b).count("1") >= 5 and not _printable(b)]
_NON_PRINTABLE = [b for b in range(256) if not _printable(b)]


def _mixed(rng: random.Random, n: int) -> bytes:
    """Non-printable bytes whose set bits average about 4 (so Ex1 does not hold)."""
    return bytes(rng.choice(_NON_PRINTABLE) for _ in range(n))


# One payload per exemption, each meeting that exemption and no other (checked by `exemptions`).
EXEMPT_RECIPES: dict[str, Callable[[random.Random], bytes]] = {
    "Ex1-low": lambda r: bytes(r.choice(_LOW_BITS) for _ in range(200)),
    "Ex1-high": lambda r: bytes(r.choice(_HIGH_BITS) for _ in range(200)),
    "Ex2": lambda r: bytes(r.choice(PRINTABLE) for _ in range(6)) + _mixed(r, 194),
    "Ex3": lambda r: b"".join(_mixed(r, 1) + bytes(r.choice(PRINTABLE) for _ in range(5)) for _ in range(34)),
    "Ex4": lambda r: _mixed(r, 30) + bytes(r.choice(PRINTABLE) for _ in range(25)) + _mixed(r, 145),
    "Ex5-tls": lambda r: b"\x17\x03\x03" + _mixed(r, 197),
    "Ex5-http": lambda r: b"POST " + _mixed(r, 195),
}


def exempt_payload(case: str, seed: int = 7) -> bytes:
    """The payload of `case` (a key of EXEMPT_RECIPES), exempt by exactly that rule."""
    return _draw(EXEMPT_RECIPES[case], {case.split("-")[0]}, seed)
