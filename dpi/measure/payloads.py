"""First payloads for the fully-encrypted-traffic measurement (GF-1, GF-2), and a reference reading of GF-1.

The measurement sends TCP connections whose first client packet is either random (what GF-2's 26.3 % is about)
or built to meet exactly one exemption of GF-1 (those must never be blocked). The exemption test here is written
from CENSOR-MODELS.md's wording on purpose, apart from the censor's compiled one (`dpi._extract.fet_features`):
a payload claimed to meet only Ex3 is checked by this reading, the censor decides by its own, and the tests
compare the two.

GF-1, "printable" = 0x20-0x7e; a first packet is exempt if ANY holds:
    Ex1  average set bits per byte <= 3.4 or >= 4.6
    Ex2  the first 6 bytes are printable
    Ex3  more than 50 % of the bytes are printable
    Ex4  more than 20 contiguous printable bytes
    Ex5  it starts like TLS (16-17 03 00-09) or HTTP (`GET `, `PUT `, `POST `, `HEAD `)
"""
from __future__ import annotations

import random
from collections.abc import Callable

EXEMPTIONS: tuple[str, ...] = ("Ex1", "Ex2", "Ex3", "Ex4", "Ex5")


def printable(b: int) -> bool:
    return 0x20 <= b <= 0x7E


def popcount(b: int) -> int:
    return b.bit_count()


def exemptions(data: bytes) -> tuple[str, ...]:
    """Every GF-1 exemption that holds for `data` (empty: none is claimed; the caller should not send it)."""
    n = len(data)
    if n == 0:
        return ()
    held: list[str] = []
    bits = sum(popcount(b) for b in data)
    if 10 * bits <= 34 * n or 10 * bits >= 46 * n:  # integers: exactly 3.4 or 4.6 is exempt (<=, >=)
        held.append("Ex1")
    if n >= 6 and all(printable(b) for b in data[:6]):
        held.append("Ex2")
    if 2 * sum(1 for b in data if printable(b)) > n:
        held.append("Ex3")
    run = best = 0
    for b in data:
        run = run + 1 if printable(b) else 0
        best = max(best, run)
    if best > 20:
        held.append("Ex4")
    if (n >= 3 and data[0] in (0x16, 0x17) and data[1] == 0x03 and data[2] <= 0x09) or \
            data.startswith((b"GET ", b"PUT ", b"POST ", b"HEAD ")):
        held.append("Ex5")
    return tuple(held)


def fully_encrypted(data: bytes) -> bool:
    """GF-1: no exemption holds (what GF-2 then blocks with probability ~26.3 %)."""
    return bool(data) and not exemptions(data)


# Byte pools. Non-printable bytes only, so that no printable-based exemption holds by accident.
_NONPRINT = [b for b in range(256) if not printable(b)]
_LOW_BITS = [b for b in _NONPRINT if popcount(b) <= 2]  # Ex1 low: average <= 3.4
_HIGH_BITS = [b for b in _NONPRINT if popcount(b) >= 6]  # Ex1 high: average >= 4.6
_MID_BITS = [b for b in _NONPRINT if 3 <= popcount(b) <= 5]  # average ~4: Ex1 does not hold
_PRINT_MID = [b for b in range(0x21, 0x7F) if 3 <= popcount(b) <= 5]  # printable, average ~4


def _mid(rng: random.Random, n: int) -> bytes:
    return bytes(rng.choice(_MID_BITS) for _ in range(n))


def _text(rng: random.Random, n: int) -> bytes:
    return bytes(rng.choice(_PRINT_MID) for _ in range(n))


def _ex1_low(rng: random.Random, n: int) -> bytes:
    return bytes(rng.choice(_LOW_BITS) for _ in range(n))


def _ex1_high(rng: random.Random, n: int) -> bytes:
    return bytes(rng.choice(_HIGH_BITS) for _ in range(n))


def _ex2(rng: random.Random, n: int) -> bytes:
    return _text(rng, 6) + _mid(rng, n - 6)


def _ex3(rng: random.Random, n: int) -> bytes:
    # a non-printable byte first (no Ex2), then 3 printable + 1 non-printable: 75 % printable, runs of 3 (no Ex4)
    out = bytearray(_mid(rng, 1))
    while len(out) < n:
        out += _text(rng, 3) + _mid(rng, 1)
    return bytes(out[:n])


def _ex4(rng: random.Random, n: int) -> bytes:
    run = 24  # > 20 contiguous printable bytes; n >= 64 keeps the printable share under half
    head = n // 3
    return _mid(rng, head) + _text(rng, run) + _mid(rng, n - head - run)


def _ex5_tls(rng: random.Random, n: int) -> bytes:
    return bytes([0x16, 0x03, 0x01]) + _mid(rng, n - 3)


def _ex5_http(rng: random.Random, n: int) -> bytes:
    return b"GET " + _mid(rng, n - 4)


# kind -> (the exemption it must meet, builder). Each builder's output is checked to meet exactly that one.
EXEMPT_KINDS: dict[str, tuple[str, Callable[[random.Random, int], bytes]]] = {
    "ex1-low-bits": ("Ex1", _ex1_low),
    "ex1-high-bits": ("Ex1", _ex1_high),
    "ex2-printable-prefix": ("Ex2", _ex2),
    "ex3-mostly-printable": ("Ex3", _ex3),
    "ex4-printable-run": ("Ex4", _ex4),
    "ex5-tls-prefix": ("Ex5", _ex5_tls),
    "ex5-http-prefix": ("Ex5", _ex5_http),
}
MIN_LENGTH = 64


def exempt_payload(kind: str, rng: random.Random, length: int = 256) -> bytes:
    """A payload of `length` bytes meeting exactly the exemption of `kind` (see EXEMPT_KINDS)."""
    if kind not in EXEMPT_KINDS:
        raise ValueError(f"unknown payload kind {kind!r}: one of {', '.join(EXEMPT_KINDS)}")
    if length < MIN_LENGTH:
        raise ValueError(f"payloads must be at least {MIN_LENGTH} bytes")
    want, build = EXEMPT_KINDS[kind]
    for _ in range(1000):
        data = build(rng, length)
        if exemptions(data) == (want,):
            return data
    raise RuntimeError(f"could not build a {kind} payload of {length} bytes")  # pragma: no cover


def random_payload(rng: random.Random, length: int) -> bytes:
    """Uniformly random bytes, as an encrypted protocol's first packet looks (it may, rarely, be exempt)."""
    return bytes(rng.getrandbits(8) for _ in range(length))


def random_length(rng: random.Random, low: int = MIN_LENGTH, high: int = 1000) -> int:
    return rng.randint(low, high)
