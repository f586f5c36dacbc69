"""Fuzzing every parser the censor runs on attacker-controlled bytes (issue 7): targets, corpus, long campaign.

Circumvention tools send malformed packets on purpose, so every extractor must return a status, never raise,
never hang and never grow memory without bound. The targets here are shared by the short hypothesis tests
(`tests/test_robustness_fuzz.py`) and by the long campaign:

    python -m bench.fuzz seed                      # (re)write tests/corpus/<target>/ from real stacks
    python -m bench.fuzz run --target quic --seconds 600 [--engine atheris|hypothesis]
    python -m bench.fuzz run --target all --seconds 3600

Targets: `packet` (dpi._core.parse_packet: IPv4/IPv6/TCP/UDP headers), `censor` (packet sequences through
`dpi.engine.Censor.process` with each bundled profile: the compiled core, its flow table and first-flight
reassembly, and every extractor the engine calls), `tls`, `http`, `dns` (dpi._extract), `quic`
(dpi.quic.parse_initial and InitialAssembler). Seeds are real first flights: OpenSSL ClientHellos through
Python's ssl, curl's HTTP request, dnslib queries, aioquic Initials, and TCP/UDP packets around them from
`dpi.traffic`.

Engines: atheris (libFuzzer, coverage-guided; `pip install atheris`) instruments the Python that runs (engine,
QUIC decryption, forging, matching); the compiled Cython modules are not instrumented unless built with clang's
`-fsanitize=fuzzer-no-link`, so their outcomes (status codes, kinds, flow states) are fed back as extra coverage
by `_feedback`. Without atheris the campaign falls back to hypothesis with many examples. Every input runs under
a per-input time budget (SIGALRM) and an allocation budget (tracemalloc peak for Python, `Core.memory_bytes`
against the table's bound for C); a failing input is written to tests/corpus/regressions/<target>/, where
`tests/test_robustness_fuzz.py` replays it forever after.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import random
import signal
import struct
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CORPUS = ROOT / "tests" / "corpus"
REGRESSIONS = CORPUS / "regressions"
TIME_BUDGET = 2.0  # seconds one input may take (a hang is a failure; generous: this is a watchdog, not a benchmark)
PY_ALLOC_BUDGET = 32 << 20  # bytes of Python allocations one input may hold at its peak
CENSOR_PROFILES = ("gfw", "tspu-2021", "tspu-2022", "tspu-2025", "gfw-quic", "gfw-dns", "gfw-fet", "henan",
                   "gfw-esni", "redweb")
FLOW_BYTES = 248  # per-flow share of Core.memory_bytes() without buffers (sizeof(Flow) + its buckets)


class Hang(Exception):
    """An input took longer than TIME_BUDGET."""


class Budget:
    """Per-input time (SIGALRM, main thread only) and Python allocation budget."""

    def __init__(self, seconds: float = TIME_BUDGET, alloc: int = PY_ALLOC_BUDGET, trace: bool = True) -> None:
        self.seconds, self.alloc, self.trace = seconds, alloc, trace

    def __enter__(self) -> "Budget":
        def on_alarm(_s: int, _f: object) -> None:
            raise Hang(f"input took more than {self.seconds:g} s")
        self._old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        if self.trace:
            tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old)
        if self.trace:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            if exc[0] is None and peak > self.alloc:
                raise AssertionError(f"one input allocated {peak} bytes (budget {self.alloc})")


# -- targets: each takes bytes, raises only on a real bug ----------------------------------------------------------
def target_packet(data: bytes) -> None:
    from dpi import _core
    info = _core.parse_packet(data)
    assert info is None or isinstance(info, dict)
    if info and "payload_offset" in info:
        assert 0 <= info["payload_offset"] <= len(data)
        assert 0 <= info["payload_len"] <= len(data) - info["payload_offset"]
        assert info["version"] in (4, 6) and len(info["src"]) in (4, 16)


def target_tls(data: bytes) -> None:
    from dpi import _extract as x
    for reassemble in (False, True):
        for skip in (False, True):
            ch = x.parse_tls_client_hello(data, reassemble, skip)
            assert ch.status in (x.OK, x.NEED_MORE, x.NOT_THIS, x.MALFORMED, x.FRAGMENTED)
            assert all(isinstance(n, str) for n in ch.sni + ch.alpn)
            if ch.status == x.OK:
                assert ch.end <= len(data)
    hs = x.parse_handshake_client_hello(data)
    assert hs.status in (x.OK, x.NEED_MORE, x.NOT_THIS, x.MALFORMED)
    x.fet_features(data)


def target_http(data: bytes) -> None:
    from dpi import _extract as x
    req = x.parse_http_request(data)
    assert req.status in (x.OK, x.NEED_MORE, x.NOT_THIS, x.MALFORMED)
    if req.status == x.OK:
        assert req.port is None or 0 <= req.port <= 65535


def target_dns(data: bytes) -> None:
    from dpi import _extract as x
    from dpi.forge import AddressPool, forge_dns_response
    for tcp in (False, True):
        msg = x.parse_dns(data, tcp)
        assert msg.status in (x.OK, x.NEED_MORE, x.NOT_THIS, x.MALFORMED)
        if msg.status == x.OK:
            assert len(msg.qname) <= 253
    # the forger parses the same bytes (behind an IP/UDP header) when it answers (GD-1)
    from dpi.forge import udp_packet
    pkt = udp_packet("10.0.0.1", "10.0.0.2", 5353, 53, data)
    forge_dns_response(pkt, a_pool=AddressPool(("203.0.113.7",), "cycle", random.Random(1)),
                       aaaa_pool=AddressPool(("2001::1",), "cycle", random.Random(1)), rng=random.Random(1))


def target_quic(data: bytes) -> None:
    from dpi import _extract as x
    from dpi import quic
    statuses = {quic.OK, quic.NOT_QUIC, quic.NOT_INITIAL, quic.UNSUPPORTED_VERSION, quic.TRUNCATED,
                quic.DECRYPT_FAILED, quic.NO_CRYPTO, quic.INCOMPLETE}
    info = quic.parse_initial(data)
    assert info.status in statuses, info.status
    assert len(info.crypto) <= quic.MAX_CRYPTO_BYTES and len(info.frames) <= quic.MAX_FRAMES
    asm = quic.InitialAssembler()
    half = len(data) // 2
    for part in (data[:half], data[half:], data):
        i2 = asm.feed(part)
        assert i2.status in statuses and len(i2.crypto) <= quic.MAX_CRYPTO_BYTES
    hdr = x.parse_quic_long_header(data, 0)
    assert hdr.status in (x.OK, x.NEED_MORE, x.NOT_THIS, x.MALFORMED)


def split_packets(data: bytes) -> tuple[int, list[bytes]]:
    """`censor` input format: 1 byte profile index, then packets as (u16 length, bytes)."""
    if not data:
        return 0, []
    idx, pos, out = data[0], 1, []
    while pos + 2 <= len(data) and len(out) < 64:
        n = struct.unpack_from("!H", data, pos)[0]
        pos += 2
        out.append(data[pos:pos + n])
        pos += n
    return idx, out


def join_packets(profile_index: int, packets: Sequence[bytes]) -> bytes:
    return bytes([profile_index & 0xFF]) + b"".join(struct.pack("!H", len(p) & 0xFFFF) + p[:0xFFFF]
                                                    for p in packets)


@functools.lru_cache(maxsize=None)
def _profile(name: str):  # type: ignore[no-untyped-def]
    from dpi.profile import load_profile
    return load_profile(name)


def target_censor(data: bytes) -> None:
    from dpi.decision import Decision
    from dpi.engine import Censor
    idx, packets = split_packets(data)
    profile = _profile(CENSOR_PROFILES[idx % len(CENSOR_PROFILES)])
    censor = Censor(profile, seed=1)
    cap, budget = censor.core.capacity, profile.tcp.budget
    bound = cap * (FLOW_BYTES + 4 * budget)
    ts = 1000.0
    try:
        for i, pkt in enumerate(packets):
            ts += 0.001 if i % 7 else 700.0 * (idx & 1)  # now and then past every idle timeout (T21-6, GQ-1)
            d = censor.process(pkt, ts)
            assert isinstance(d, Decision) and d.verdict in (0, 1) and d.mark in (0, 1, 2)
            for delay, forged in d.inject:
                assert delay >= 0 and isinstance(forged, bytes) and forged[0] >> 4 in (4, 6)
            assert censor.core.active_flows <= cap
            assert censor.core.memory_bytes() <= bound
        snap = censor.counters_snapshot()
        assert snap["packets"] == len(packets)
    finally:
        # Censor and Core refer to each other: without this the 16 MB flow table waits for the cyclic collector,
        # which a fuzzer running thousands of inputs a second outpaces (RSS grew to 800 MB under libFuzzer).
        censor.core = None


TARGETS: dict[str, Callable[[bytes], None]] = {
    "packet": target_packet, "censor": target_censor, "tls": target_tls, "http": target_http, "dns": target_dns,
    "quic": target_quic,
}


def run_one(target: str, data: bytes, trace: bool = True) -> None:
    """One input through one target under the time and allocation budgets."""
    with Budget(trace=trace):
        TARGETS[target](data)


# -- corpus --------------------------------------------------------------------------------------------------------
def seeds() -> dict[str, dict[str, bytes]]:
    """Seed inputs from real stacks, per target (file name → bytes)."""
    from dpi import traffic
    from dpi.forge import tcp_packet, udp_packet
    from tests.realstack import (aioquic_initial_datagram, curl_client_hello, curl_http_request, dnslib_query,
                                 openssl_client_hello, python_ssl_client_hello)
    from tests.realstack.craft import split_tls_records
    from tests.realstack.quic import DRAFT_29, V2

    ch = python_ssl_client_hello("seed.example", ["h2", "http/1.1"])
    tls = {"python-ssl-tls13.bin": ch,
           "python-ssl-tls12.bin": python_ssl_client_hello("seed.example", tls_version="1.2"),
           "python-ssl-no-sni.bin": python_ssl_client_hello(None),
           "records-split.bin": split_tls_records(ch, [7, 40])}
    try:
        tls["openssl.bin"] = openssl_client_hello("seed.example")
        tls["curl.bin"] = curl_client_hello("seed.example")
    except Exception:  # the subprocess clients are optional for seeding
        pass
    http = {"traffic.bin": traffic.http_request("seed.example", "/index.html"),
            "connect-v6.bin": b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n"}
    try:
        http["curl.bin"] = curl_http_request("seed.example", "/a?b=c")
        http["curl-host-header.bin"] = curl_http_request("seed.example", "/", headers=("Host: other.example:8080",
                                                                                       "Cookie: a=b"))
    except Exception:
        pass
    dns = {"a.bin": dnslib_query("www.seed.example", "A"), "https.bin": dnslib_query("seed.example", "HTTPS"),
           "aaaa.bin": dnslib_query("seed.example", "AAAA", query_id=7)}
    quic = {"v1.bin": aioquic_initial_datagram("seed.example"),
            "v2.bin": aioquic_initial_datagram("seed.example", version=V2),
            "draft29.bin": aioquic_initial_datagram("seed.example", version=DRAFT_29)}
    conv = traffic.TcpConversation("10.0.0.2", "198.51.100.7", 40000, 443).handshake()
    conv.client_send(ch).server_send(b"\x16\x03\x03" + bytes(300)).close()
    conv6 = traffic.TcpConversation("2001:db8::2", "2001:db8:1::7", 40001, 80).handshake()
    conv6.client_send(traffic.http_request("seed.example")).close()
    packets = {f"tcp4-{i}.bin": p for i, (_, p) in enumerate(conv.packets[:5])}
    packets.update({f"tcp6-{i}.bin": p for i, (_, p) in enumerate(conv6.packets[:4])})
    packets["udp4-dns.bin"] = udp_packet("10.0.0.2", "198.51.100.53", 5353, 53, dns["a.bin"])
    packets["udp6-quic.bin"] = udp_packet("2001:db8::2", "2001:db8:1::7", 50000, 443, quic["v1.bin"])
    packets["tcp4-syn.bin"] = tcp_packet("10.0.0.2", "198.51.100.7", 40002, 443, 1, 0, 0x02, window=64240)
    censor = {
        "gfw-tls.bin": join_packets(CENSOR_PROFILES.index("gfw"), [p for _, p in conv.packets]),
        "tspu2021-tls.bin": join_packets(CENSOR_PROFILES.index("tspu-2021"), [p for _, p in conv.packets]),
        "henan-http6.bin": join_packets(CENSOR_PROFILES.index("henan"), [p for _, p in conv6.packets]),
        "gfw-quic.bin": join_packets(CENSOR_PROFILES.index("gfw-quic"), [packets["udp6-quic.bin"]]),
        "gfw-dns.bin": join_packets(CENSOR_PROFILES.index("gfw-dns"), [packets["udp4-dns.bin"]]),
    }
    return {"tls": tls, "http": http, "dns": dns, "quic": quic, "packet": packets, "censor": censor}


def hostile_inputs() -> dict[str, dict[str, tuple[bytes, str]]]:
    """Inputs built to hurt, kept as regression cases from the start (what a campaign finds is added beside them):
    target → file name → (bytes, why it is hostile)."""
    from dpi.forge import tcp_packet, udp_packet
    from tests.realstack import aioquic_client_hello
    from tests.realstack.quic import crypto_frame, protect_initial, varint

    dcid = bytes(range(8))
    hello = aioquic_client_hello("hostile.example")
    far = b"\x06" + varint((1 << 62) - 1, 8) + varint(4) + b"abcd"  # CRYPTO at the largest offset there is
    tiny = b"".join(crypto_frame(i, hello[i:i + 1]) for i in range(400))  # more frames than MAX_FRAMES
    reversed_frames = b"".join(crypto_frame(i, hello[i:i + 50]) for i in reversed(range(0, len(hello), 50)))
    dns_loop = bytes.fromhex("123401000001000000000000") + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    dns_deep = bytes.fromhex("123401000001000000000000") + b"\x01a" * 130 + b"\x00\x00\x01\x00\x01"
    syn = tcp_packet("10.0.0.2", "198.51.100.7", 40000, 80, 100, 0, 0x02)
    part = tcp_packet("10.0.0.2", "198.51.100.7", 40000, 80, 101, 1, 0x18, payload=b"GET / HTTP/1.1\r\nX: ")
    hole = tcp_packet("10.0.0.2", "198.51.100.7", 40000, 80, 101 + 16000, 1, 0x18, payload=b"A" * 1400)
    ip = bytearray(syn)
    ip[0] = 0x4F  # IHL 60 bytes, packet shorter than that
    doff = bytearray(syn)
    doff[32] = 0x30  # TCP data offset 3 words (< 5)
    v6ext = bytearray(udp_packet("2001:db8::2", "2001:db8::7", 1, 53, b"x"))
    v6ext[6] = 0  # next header hop-by-hop ... pointing to itself, again and again
    v6ext[40:40] = b"\x00\x00" + bytes(6)
    return {
        "quic": {
            "crypto-offset-2-62.bin": (protect_initial(far, dcid=dcid, pad_to=1200),
                                       "CRYPTO frame at offset 2^62-1: reassembly memory must stay bounded"),
            "400-tiny-crypto-frames.bin": (protect_initial(tiny, dcid=dcid), "more CRYPTO frames than MAX_FRAMES"),
            "crypto-frames-reversed.bin": (protect_initial(reversed_frames, dcid=dcid, pad_to=1200),
                                           "ClientHello in CRYPTO frames sent last-first (GQ-3)"),
        },
        "dns": {"compression-loop.bin": (dns_loop, "a name that points at itself"),
                "name-past-253.bin": (dns_deep, "130 labels: past the 253-byte name limit")},
        "tls": {"lengths-ffff.bin": (b"\x16\x03\x01\xff\xff\x01\xff\xff\xff" + bytes(64),
                                     "every length field at its maximum")},
        "packet": {"ipv4-ihl-past-end.bin": (bytes(ip), "IPv4 header length beyond the packet"),
                   "tcp-doff-3.bin": (bytes(doff), "TCP data offset below the 20-byte minimum"),
                   "ipv6-hop-by-hop.bin": (bytes(v6ext), "an IPv6 extension header before UDP")},
        "censor": {"first-flight-hole.bin": (join_packets(0, [syn, part, hole] * 3),
                                             "a partial request, then data past a hole near the budget (G-1)"),
                   "syn-flood-one-port.bin": (join_packets(1, [syn] * 60), "the same SYN 60 times (T21-2)")},
    }


def write_seeds() -> int:
    n = 0
    for target, files in hostile_inputs().items():
        d = REGRESSIONS / target
        d.mkdir(parents=True, exist_ok=True)
        for name, (data, why) in files.items():
            (d / name).write_bytes(data)
            (d / name).with_suffix(".txt").write_text(why + "\n")
            n += 1
    for target, files in seeds().items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
            n += 1
    return n


def corpus(target: str) -> list[bytes]:
    """Seed files of a target (tests/corpus/<target>/*.bin), sorted by name for reproducibility."""
    d = CORPUS / target
    return [p.read_bytes() for p in sorted(d.glob("*.bin"))] if d.is_dir() else []


def regressions(target: str | None = None) -> Iterator[tuple[str, Path]]:
    """(target, file) of every kept failing input."""
    if not REGRESSIONS.is_dir():
        return
    for d in sorted(REGRESSIONS.iterdir()):
        if d.is_dir() and d.name in TARGETS and (target is None or d.name == target):
            for p in sorted(d.iterdir()):
                if p.is_file() and p.suffix == ".bin":
                    yield d.name, p


def keep_regression(target: str, data: bytes, why: BaseException) -> Path:
    d = REGRESSIONS / target
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
    p.write_bytes(data)
    (d / f"{p.stem}.txt").write_text(f"{type(why).__name__}: {why}\n")
    return p


# -- mutation (hypothesis fallback and the tests) --------------------------------------------------------------------
def mutate(data: bytes, rng: random.Random, rounds: int = 4) -> bytes:
    """Byte flips, interesting values, 16-bit length fields, insertions, deletions, truncation, splices."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, rounds)):
        if not buf:
            buf += rng.randbytes(rng.randint(1, 16))
            continue
        at = rng.randrange(len(buf))
        op = rng.randrange(7)
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at] = rng.choice((0, 1, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFE, 0xFF))
        elif op == 2:
            buf[at:at + 2] = rng.choice((0, 1, 0x3FFF, 0x4000, 0x7FFF, 0xFFFF, len(buf) - at)).to_bytes(2, "big")
        elif op == 3:
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 4:
            del buf[at:at + rng.randint(1, 8)]
        elif op == 5:
            del buf[at:]
        else:
            j = rng.randrange(len(buf))
            buf[at:at] = buf[j:j + rng.randint(1, 32)]
    return bytes(buf)


def _hypothesis_campaign(target: str, seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    pool = corpus(target) or [b""]
    deadline = time.monotonic() + seconds
    n = found = 0
    kinds: dict[str, int] = {}
    while time.monotonic() < deadline:
        data = mutate(rng.choice(pool), rng, rounds=8)
        n += 1
        try:
            run_one(target, data, trace=n % 16 == 0)
        except BaseException as e:  # noqa: BLE001 - every failure is a finding
            if isinstance(e, KeyboardInterrupt):
                raise
            found += 1
            # one bug tends to fail many inputs: keep a few of each kind, not thousands
            kind = f"{type(e).__name__}: {str(e)[:80]}"
            kinds[kind] = kinds.get(kind, 0) + 1
            if kinds[kind] <= 3:
                print(f"{target}: {kind} -> {keep_regression(target, data, e)}", flush=True)
    print(f"{target}: {n} inputs, {found} failures of {len(kinds)} kinds", flush=True)
    return found


def _bucket(n: int) -> int:
    return 0 if n <= 0 else 1 if n == 1 else 2 if n < 4 else 3 if n < 16 else 4 if n < 256 else 5


def _feedback(target: str, data: bytes) -> int:
    """Outcomes of the compiled parsers as Python branches (instrumented by atheris), so that libFuzzer's coverage
    sees what the uninstrumented C did: statuses, which fields were found, bucketed counts and lengths."""
    from dpi import _core
    from dpi import _extract as x
    seen = 0
    if target in ("tls", "censor"):
        ch = x.parse_tls_client_hello(data, True, True)
        for s in range(5):
            if ch.status == s:
                seen += s
        for k in range(6):
            if _bucket(len(ch.extensions)) == k:
                seen += k
            if _bucket(ch.record_count) == k:
                seen += k
        if ch.sni:
            seen += 1
        if ch.alpn:
            seen += 1
        if ch.has_esni or ch.has_ech:
            seen += 1
    if target == "http":
        r = x.parse_http_request(data)
        for s in range(5):
            if r.status == s:
                seen += s
        if r.host:
            seen += 1
        if r.port is not None:
            seen += 1
        if r.headers_complete:
            seen += 1
    if target == "dns":
        m = x.parse_dns(data)
        for s in range(5):
            if m.status == s:
                seen += s
        for k in range(6):
            if _bucket(len(m.qname or "")) == k:
                seen += k
        if m.status == x.OK and m.is_response:
            seen += 1
    if target in ("packet", "censor"):
        info = _core.parse_packet(data[1:] if target == "censor" else data)
        if info:
            for v in (4, 6):
                if info.get("version") == v:
                    seen += v
            for proto in (6, 17):
                if info.get("proto") == proto:
                    seen += proto
            if info.get("fragment"):
                seen += 1
            for k in range(6):
                if _bucket(info.get("payload_len", 0)) == k:
                    seen += k
    return seen


def _atheris_campaign(target: str, seconds: float, extra: list[str]) -> int:
    import atheris  # type: ignore[import-not-found]

    with atheris.instrument_imports():
        import dpi.engine  # noqa: F401
        import dpi.forge  # noqa: F401
        import dpi.match  # noqa: F401
        import dpi.quic  # noqa: F401
    feedback = atheris.instrument_func(_feedback)
    corpus_dir = ROOT / "out" / "fuzz" / target
    corpus_dir.mkdir(parents=True, exist_ok=True)

    def one(data: bytes) -> None:
        feedback(target, data)
        try:
            run_one(target, data, trace=False)
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt):
                keep_regression(target, data, e)
            raise

    argv = [sys.argv[0], str(corpus_dir), str(CORPUS / target), f"-max_total_time={int(seconds)}",
            f"-timeout={int(TIME_BUDGET) + 1}", "-rss_limit_mb=4096", "-max_len=4096", *extra]
    atheris.Setup(argv, one)
    atheris.Fuzz()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.fuzz", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("seed", help="write tests/corpus/<target>/ from real stacks, and the hostile regression inputs")
    r = sub.add_parser("run", help="a fuzzing campaign")
    r.add_argument("--target", default="all", choices=["all", *TARGETS])
    r.add_argument("--seconds", type=float, default=600.0, help="per target")
    r.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("libfuzzer", nargs=argparse.REMAINDER, help="extra libFuzzer flags (atheris)")
    sub.add_parser("replay", help="run every kept regression input once")
    args = p.parse_args(argv)
    if args.cmd == "seed":
        print(f"wrote {write_seeds()} seed files under {CORPUS}")
        return 0
    if args.cmd == "replay":
        bad = 0
        for target, path in regressions():
            try:
                run_one(target, path.read_bytes())
            except Exception as e:  # noqa: BLE001
                bad += 1
                print(f"{target} {path.name}: {type(e).__name__}: {e}")
        print(f"{bad} regression inputs still fail")
        return 1 if bad else 0
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # type: ignore[import-not-found]  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    targets = list(TARGETS) if args.target == "all" else [args.target]
    if engine == "atheris":
        if len(targets) > 1:  # libFuzzer owns the process: one target per process
            import subprocess
            rc = 0
            for t in targets:
                rc |= subprocess.run([sys.executable, "-m", "bench.fuzz", "run", "--target", t, "--seconds",
                                      str(args.seconds), "--engine", "atheris"], cwd=str(ROOT)).returncode
            return rc
        return _atheris_campaign(targets[0], args.seconds, [a for a in args.libfuzzer if a != "--"])
    return 1 if sum(_hypothesis_campaign(t, args.seconds, args.seed) for t in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
