"""Property tests: no input makes an extractor raise, hang or read past its buffer.

Every input is placed so that it ends exactly at a PROT_NONE guard page: a read one byte out of bounds (the
module is compiled with boundscheck=False) kills the test run with SIGSEGV instead of passing silently. Inputs
are arbitrary bytes and real first flights (Python ssl, aioquic, dnslib, an HTTP request) with their length
fields mutated, as evasion tools and attackers do.
"""
from __future__ import annotations

import ctypes
import mmap
import subprocess
import sys

import dnslib
from aioquic.buffer import Buffer
from aioquic.quic.packet import pull_quic_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpi._extract import (
    FRAGMENTED,
    MALFORMED,
    NEED_MORE,
    NOT_THIS,
    OK,
    fet_features,
    parse_dns,
    parse_handshake_client_hello,
    parse_http_request,
    parse_quic_long_header,
    parse_tls_client_hello,
)
from tests.realstack import aioquic_client_hello, aioquic_initial_datagram, dnslib_query, python_ssl_client_hello
from tests.realstack.craft import split_tls_records, tls_record
from tests.realstack.quic import VERSION_1, VERSION_2
from tests.test_extract_fet import reference

STATUSES = {OK, NEED_MORE, NOT_THIS, MALFORMED}
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


class GuardedBuffer:
    """A writable region followed by an inaccessible page; `view(data)` returns `data` ending at the guard."""

    def __init__(self, size: int = 1 << 17) -> None:
        page = mmap.PAGESIZE
        self.size = (size + page - 1) // page * page
        self.region = mmap.mmap(-1, self.size + page)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self.region))
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mprotect(ctypes.c_void_p(address + self.size), ctypes.c_size_t(page), 0) != 0:  # PROT_NONE
            raise OSError(ctypes.get_errno(), "mprotect")

    def view(self, data: bytes) -> memoryview:
        start = self.size - len(data)
        self.region[start:self.size] = data
        return memoryview(self.region)[start:self.size]


GUARD = GuardedBuffer()


def test_guard_page_catches_an_overread() -> None:
    code = "from tests.test_extract_fuzz import GUARD; v = GUARD.view(b'ab'); print(GUARD.region[GUARD.size])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -11, proc  # SIGSEGV: the guard works, so a passing fuzz run means something


# --- samples and mutations --------------------------------------------------------------------------------------

CLIENT_HELLO = python_ssl_client_hello("fuzz.example", ["h2", "http/1.1"])
TLS_SAMPLES = [
    CLIENT_HELLO,
    python_ssl_client_hello("legacy.example", tls_version="1.2"),
    split_tls_records(CLIENT_HELLO, [3, 60]),
    tls_record(b"\x01", content_type=0x14) + CLIENT_HELLO,
]
HANDSHAKE_SAMPLES = [aioquic_client_hello("fuzz.example"), CLIENT_HELLO[5:]]
HTTP_SAMPLES = [b"GET /index.html HTTP/1.1\r\nHost: fuzz.example:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
                b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nhost: [2001:db8::1]:443\r\n\r\n"]
DNS_SAMPLES = [dnslib_query("www.fuzz.example", "A"), dnslib_query("fuzz.example", "HTTPS"),
               dnslib.DNSRecord.question("x.fuzz.example").reply().pack()]
QUIC_SAMPLES = [aioquic_initial_datagram("fuzz.example"), aioquic_initial_datagram("fuzz.example", version=VERSION_2)]


@st.composite
def mutated(draw: st.DrawFn, samples: list[bytes]) -> bytes:
    """A real sample with a few byte flips, overwritten 16-bit fields, insertions, deletions or truncation."""
    data = bytearray(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "byte", "u16", "insert", "delete", "truncate"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFE, 0xFF]))
        elif op == "u16":
            data[at:at + 2] = draw(st.sampled_from([0, 1, 2, 3, 4, 0x3FFF, 0x4000, 0x4801, 0x7FFF, 0xFFFF,
                                                    len(data) - at, len(data) - at + 1])).to_bytes(2, "big")
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


def inputs(samples: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=600), mutated(samples))


# --- TLS --------------------------------------------------------------------------------------------------------

def check_client_hello(data: bytes, reassemble: bool, skip: bool) -> None:
    ch = parse_tls_client_hello(GUARD.view(data), reassemble_records=reassemble, skip_leading_records=skip)
    assert ch.status in STATUSES | {FRAGMENTED}
    assert all(isinstance(name, str) for name in ch.sni + ch.alpn)
    if ch.status == OK:
        assert 9 <= ch.end <= len(data)
        assert ch.record_count >= 1 and (reassemble or ch.record_count == 1)
        assert skip or ch.records_before == 0
    if ch.status == FRAGMENTED:
        assert not reassemble and ch.record_count >= 2


@FUZZ
@given(inputs(TLS_SAMPLES), st.booleans(), st.booleans())
def test_tls_never_raises(data: bytes, reassemble: bool, skip: bool) -> None:
    check_client_hello(data, reassemble, skip)


@FUZZ
@given(st.binary(max_size=300).map(lambda b: b"\x16\x03\x01" + b), st.booleans(), st.booleans())
def test_tls_never_raises_behind_a_record_header(data: bytes, reassemble: bool, skip: bool) -> None:
    check_client_hello(data, reassemble, skip)


@FUZZ
@given(inputs(HANDSHAKE_SAMPLES))
def test_handshake_message_never_raises(data: bytes) -> None:
    ch = parse_handshake_client_hello(GUARD.view(data))
    assert ch.status in STATUSES
    if ch.status == OK:
        assert ch.end == 4 + ch.handshake_length <= len(data)


@FUZZ
@given(st.lists(st.integers(1, 200), max_size=8))
def test_any_record_split_reassembles_to_the_same_hello_G_E(sizes: list[int]) -> None:
    data = split_tls_records(CLIENT_HELLO, sizes)
    ref = parse_tls_client_hello(CLIENT_HELLO)
    ch = parse_tls_client_hello(GUARD.view(data), reassemble_records=True)
    assert ch.status == OK and ch.end == len(data)
    assert (ch.sni, ch.alpn, ch.extensions, ch.supported_versions) == (ref.sni, ref.alpn, ref.extensions,
                                                                         ref.supported_versions)
    records = ch.record_count
    assert parse_tls_client_hello(data).status == (OK if records == 1 else FRAGMENTED)


@FUZZ
@given(st.binary(max_size=200))
def test_what_follows_a_client_hello_does_not_change_it(tail: bytes) -> None:
    ch = parse_tls_client_hello(GUARD.view(CLIENT_HELLO + tail))
    assert ch.status == OK and ch.end == len(CLIENT_HELLO) and ch.sni == ("fuzz.example",)


# --- HTTP, DNS --------------------------------------------------------------------------------------------------

@FUZZ
@given(st.one_of(inputs(HTTP_SAMPLES), st.binary(max_size=200).map(lambda b: b"GET / HTTP/1.1\r\n" + b)))
def test_http_never_raises(data: bytes) -> None:
    req = parse_http_request(GUARD.view(data))
    assert req.status in STATUSES
    if req.status == OK:
        assert isinstance(req.method, str) and isinstance(req.path, str) and req.version.startswith("HTTP/")
        assert req.host is not None or req.headers_complete
        assert req.port is None or 0 <= req.port <= 65535


@FUZZ
@given(inputs(DNS_SAMPLES), st.booleans())
def test_dns_never_raises(data: bytes, tcp: bool) -> None:
    if tcp:
        data = len(data).to_bytes(2, "big") + data
    msg = parse_dns(GUARD.view(data), tcp=tcp)
    assert msg.status in STATUSES
    if msg.status == OK:
        assert 12 < msg.question_end <= len(data) - (2 if tcp else 0)
        assert len(msg.qname) <= 253 and ".." not in msg.qname


@FUZZ
@given(st.binary(max_size=300).map(lambda b: b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b))
def test_dns_names_never_raise(data: bytes) -> None:
    assert parse_dns(GUARD.view(data)).status in STATUSES


# --- QUIC -------------------------------------------------------------------------------------------------------

@FUZZ
@given(inputs(QUIC_SAMPLES), st.integers(-2, 40))
def test_quic_never_raises(data: bytes, offset: int) -> None:
    hdr = parse_quic_long_header(GUARD.view(data), offset)
    assert hdr.status in STATUSES
    if hdr.status == OK:
        assert offset < hdr.packet_end <= len(data)
        assert hdr.pn_offset == 0 or offset < hdr.pn_offset < hdr.packet_end


@FUZZ
@given(mutated(QUIC_SAMPLES))
def test_quic_agrees_with_aioquic(data: bytes) -> None:
    # Differential check against aioquic's own header parser, where both apply (v1/v2, fixed bit set; aioquic
    # does not reject a zero Length, we do).
    if len(data) < 5 or not data[0] & 0x80 or not data[0] & 0x40 \
            or int.from_bytes(data[1:5], "big") not in (VERSION_1, VERSION_2):
        return
    hdr = parse_quic_long_header(GUARD.view(data))
    try:
        ref = pull_quic_header(Buffer(data=data), host_cid_length=8)
    except Exception:  # aioquic signals bad headers with ValueError / BufferReadError
        assert hdr.status == MALFORMED
        return
    if hdr.status == MALFORMED and hdr.length == 0 and hdr.pn_offset:
        return
    assert hdr.status == OK
    assert (hdr.dcid, hdr.scid, hdr.token, hdr.packet_end) == (ref.destination_cid, ref.source_cid, ref.token,
                                                               ref.packet_length)


# --- FET --------------------------------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=400))
def test_fet_matches_the_reference(data: bytes) -> None:
    f = fet_features(GUARD.view(data))
    pop, first6, frac, run, prefix = reference(data)
    assert abs(f.popcount_avg - pop) < 1e-9 and abs(f.printable_fraction - frac) < 1e-9
    assert (f.first6_printable, f.max_printable_run, f.protocol_prefix) == (first6, run, prefix)
    assert f.exempt in (None, "Ex1", "Ex2", "Ex3", "Ex4", "Ex5")
    assert (f.exempt is None) == (not (pop <= 3.4 + 1e-12 or pop >= 4.6 - 1e-12) and not first6 and frac <= 0.5
                                  and run <= 20 and not prefix)
