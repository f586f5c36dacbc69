"""GF-1: the fully-encrypted-traffic exemptions Ex1..Ex5 (Wu et al., USENIX Security 2023).

Payloads are built from bytes with a known popcount so each exemption can be made to hold alone:
0x0f and 0xf0 have 4 set bits and are not printable, 'c' (0x63) has 4 set bits and is printable.
"""
from __future__ import annotations

import random

import pytest

from dpi._extract import fet_features
from tests.realstack import python_ssl_client_hello

NEUTRAL = b"\x0f\xf0"  # popcount 4, nothing printable: alone it is "fully encrypted"-looking


def reference(data: bytes) -> tuple[float, bool, float, int, bool]:
    """The GF-1 features computed the slow, obvious way (an independent check of the compiled code)."""
    printable = [0x20 <= b <= 0x7E for b in data]
    run = best = 0
    for is_printable in printable:
        run = run + 1 if is_printable else 0
        best = max(best, run)
    prefix = (len(data) >= 3 and data[0] in (0x16, 0x17) and data[1] == 0x03 and data[2] <= 0x09) or \
        data.startswith((b"GET ", b"PUT ", b"POST ", b"HEAD "))
    n = len(data)
    return (sum(bin(b).count("1") for b in data) / n if n else 0.0, n >= 6 and all(printable[:6]),
            sum(printable) / n if n else 0.0, best, prefix)


def test_neutral_payload_is_not_exempt() -> None:
    f = fet_features(NEUTRAL * 200)
    assert f.exempt is None
    assert (f.popcount_avg, f.first6_printable, f.printable_fraction, f.max_printable_run, f.protocol_prefix) == \
        (4.0, False, 0.0, 0, False)


@pytest.mark.parametrize("data", [b"\x01\x80" * 100, b"\x00" * 300, b"\xff\xfe" * 100, b"\xff" * 10])
def test_ex1_popcount_outside_the_band(data: bytes) -> None:
    assert fet_features(data).exempt == "Ex1"


@pytest.mark.parametrize("tail,exempt", [
    (b"\x01\x80", "Ex1"),  # 34 bits / 10 bytes = 3.4 exactly: exempt (<=)
    (b"\x03\x80", None),   # 3.5
    (b"\xff\xf8", None),   # 4.5
    (b"\xff\xfc", "Ex1"),  # 4.6 exactly: exempt (>=)
])
def test_ex1_thresholds_are_inclusive(tail: bytes, exempt: str | None) -> None:
    data = NEUTRAL * 4 + tail
    assert len(data) == 10
    assert fet_features(data).exempt == exempt


def test_ex2_first_six_printable() -> None:
    f = fet_features(b"cccccc" + NEUTRAL * 100)
    assert f.first6_printable and f.exempt == "Ex2"
    assert fet_features(b"ccccc" + NEUTRAL * 100).exempt is None


def test_ex3_more_than_half_printable() -> None:
    data = b"\x0f" + (b"c" * 10 + b"\xf0") * 20
    f = fet_features(data)
    assert f.printable_fraction > 0.5 and not f.first6_printable and f.max_printable_run == 10
    assert f.exempt == "Ex3"
    # Exactly half is not more than half.
    assert fet_features((b"c" + b"\xf0") * 50).exempt is None


def test_ex4_long_printable_run() -> None:
    assert fet_features(NEUTRAL * 50 + b"c" * 21 + NEUTRAL * 50).exempt == "Ex4"
    f = fet_features(NEUTRAL * 50 + b"c" * 20 + NEUTRAL * 50)
    assert f.max_printable_run == 20 and f.exempt is None


@pytest.mark.parametrize("prefix", [b"\x16\x03\x01", b"\x17\x03\x03", b"\x16\x03\x09", b"GET ", b"PUT ",
                                    b"POST ", b"HEAD "])
def test_ex5_protocol_prefix(prefix: bytes) -> None:
    f = fet_features(prefix + NEUTRAL * 100)
    assert f.protocol_prefix and f.exempt == "Ex5"


@pytest.mark.parametrize("prefix", [b"\x16\x03\x0a", b"\x18\x03\x01", b"\x16\x02\x01", b"POST", b"GET"])
def test_not_a_protocol_prefix(prefix: bytes) -> None:
    f = fet_features(prefix + NEUTRAL * 100)
    assert not f.protocol_prefix and f.exempt is None


def test_first_exemption_in_order() -> None:
    # "GET /index.html" satisfies Ex2, Ex4 and Ex5 and has a low popcount; Ex1 is reported first.
    assert fet_features(b"GET /" + b"a" * 30).exempt == "Ex1"
    assert fet_features(b"cccccc" + b"c" * 30).exempt == "Ex2"


def test_empty_payload_is_exempt() -> None:
    f = fet_features(b"")
    assert f.exempt == "Ex1" and f.popcount_avg == 0.0 and f.printable_fraction == 0.0


def test_random_bytes_are_mostly_not_exempt_GF_1() -> None:
    rng = random.Random(2023)
    samples = [rng.randbytes(rng.randrange(100, 1461)) for _ in range(400)]
    blocked = sum(fet_features(s).exempt is None for s in samples)
    assert blocked >= 0.9 * len(samples)


def test_real_protocols_are_exempt() -> None:
    assert fet_features(python_ssl_client_hello("fet.example")).exempt is not None
    assert fet_features(b"GET / HTTP/1.1\r\nHost: fet.example\r\n\r\n").exempt is not None


@pytest.mark.parametrize("seed", range(20))
def test_matches_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    data = bytes(rng.choice(b"\x00\x0f\xf0\xffabc ~\x7f\x16\x03") for _ in range(rng.randrange(0, 200)))
    f = fet_features(data)
    pop, first6, frac, run, prefix = reference(data)
    assert f.popcount_avg == pytest.approx(pop) and f.printable_fraction == pytest.approx(frac)
    assert (f.first6_printable, f.max_printable_run, f.protocol_prefix) == (first6, run, prefix)
