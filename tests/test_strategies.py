"""Each strategy's bytes are what it claims, checked with the censor's own parser (dpi._extract).

The ClientHellos come from the probe's real stack (Python's ssl over MemoryBIO, `tcpclient.client_hello`); QUIC
datagrams from aioquic driven by `quicclient`; fetches run against a real TLS server (Python's ssl, i.e.
OpenSSL) on loopback, which shows which re-framings a server accepts. Crafted packets (fakes, the server-side
SYN) are checked field by field with scapy as an independent parser. No root needed except where marked.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from scapy.layers.inet import IP, TCP, defragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, defragment6

from dpi import _extract
from dpi.probe import UsageError, classify, make_target, parse_resolve
from dpi.strategies import CATALOGUE, StrategyError, build, parse_args
from dpi.strategies.base import Flight, cut, inside_sni, sni_offset
from dpi.strategies.quic import QUIC_V2
from dpi.strategies import rawtcp
from dpi.strategies.rawtcp import ACK, PSH, SYN, checksum, tcp_packet
from dpi.strategies.server import bare_syn
from dpi.strategies.tcpclient import Target, client_hello, fetch_tls, hostname_matches, tls_context
from dpi.strategies.tls import CCS_RECORD, EMPTY_HANDSHAKE_RECORD, PAD_PREFIX, records
from dpi.strategies.trace import Trace

ROOT = Path(__file__).resolve().parent.parent
NAME = "twitter.com"


def hello_for(name: str = NAME, ctx: ssl.SSLContext | None = None) -> bytes:
    return client_hello(ctx or tls_context(None, True), name)[3]


def flight(name: str = NAME) -> Flight:
    ctx = tls_context(None, True)
    return Flight(hello_for(name, ctx), name, make_hello=lambda n: hello_for(n, ctx))


def ch(data: bytes, **kw: bool) -> _extract.ClientHello:
    return _extract.parse_tls_client_hello(data, **kw)


# -- catalogue and parameters ------------------------------------------------------------------------------------
def test_catalogue_names_transports_and_targets() -> None:
    assert list(CATALOGUE)[0] == "none"
    expected = {"none", "tcp-segment", "tls-record-frag", "ccs-first", "padding", "fake-first", "trailing-dot",
                "sni-case", "tcp-timestamps", "drop-rst", "quic-dummy-first", "quic-low-sport", "quic-v2",
                "quic-crypto-split", "server-window", "split-handshake", "tcb-teardown", "idle-wait", "ip-fragment"}
    assert set(CATALOGUE) == expected
    for name, cls in CATALOGUE.items():
        assert cls.name == name and cls.summary(), name
        assert cls.transport in ("tcp", "quic", "any", "server")
        assert name == "none" or name == "sni-case" or cls.targets, name  # every evasion says what it targets


@pytest.mark.parametrize("name,args,message", [
    ("bogus", {}, "unknown strategy"),
    ("tcp-segment", {"offset": "5"}, "unknown parameter"),
    ("tcp-segment", {"at": "40,5"}, "increasing"),
    ("tcp-segment", {"at": "x"}, "byte offsets"),
    ("tcp-segment", {"delay_ms": "-1"}, ">= 0"),
    ("fake-first", {"via": "magic"}, "one of checksum, ttl"),
    ("fake-first", {"ttl": "0"}, ">= 1"),
    ("padding", {"size": "big"}, "not an integer"),
    ("quic-low-sport", {"port": "70000"}, "1-65535"),
    ("drop-rst", {"payload": "xyz"}, "hex"),
    ("quic-crypto-split", {"order": "sideways"}, "forward, reverse"),
    ("tcb-teardown", {"flags": "syn"}, "one of rst, rst-ack, fin"),
    ("tcb-teardown", {"when": "during"}, "one of after, before"),
    ("idle-wait", {"seconds": "-1"}, ">= 0"),
])
def test_bad_parameters_are_usage_errors(name: str, args: dict[str, str], message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        build(name, args)


def test_parse_args() -> None:
    assert parse_args(["at=5,40", "delay_ms = 3"]) == {"at": "5,40", "delay_ms": "3"}
    for bad in (["at"], ["=5"], ["at=1", "at=2"]):
        with pytest.raises(StrategyError):
            parse_args(bad)


def test_cut_and_sni_offsets() -> None:
    assert cut(b"abcdef", (2, 4)) == (b"ab", b"cd", b"ef")
    assert cut(b"abc", (0, 3, 9)) == (b"abc",)
    hello = hello_for()
    at = sni_offset(hello, NAME)
    assert at is not None and hello[at:at + len(NAME)] == NAME.encode()
    mid = inside_sni(hello, NAME)
    assert mid is not None and at < mid < at + len(NAME)


# -- TLS over TCP ------------------------------------------------------------------------------------------------
def test_none_is_the_stacks_own_first_flight() -> None:
    f = flight()
    plan = build("none").plan(f)
    assert plan.writes == (f.hello,) and not plan.fakes and not plan.tcp_timestamps
    assert ch(f.hello).status == _extract.OK and ch(f.hello).sni == (NAME,)


def test_tcp_segment_default_cuts_inside_the_sni_T21_2_H_E() -> None:
    f = flight()
    writes = build("tcp-segment").plan(f).writes
    assert len(writes) == 2 and b"".join(writes) == f.hello
    assert NAME.encode() not in writes[0] and NAME.encode() not in writes[1]  # the name is split, H-E
    assert ch(writes[0]).status == _extract.NEED_MORE  # T21-2: not whole in the first segment
    assert ch(b"".join(writes)).sni == (NAME,)  # a reassembling censor (G-1) still reads it


def test_tcp_segment_explicit_offsets_and_delay() -> None:
    f = flight()
    plan = build("tcp-segment", {"at": "5,40", "delay_ms": "20"}).plan(f)
    assert [len(w) for w in plan.writes] == [5, 35, len(f.hello) - 40]
    assert plan.gap == pytest.approx(0.02)


def test_tls_record_frag_parses_back_to_the_same_clienthello_G_E() -> None:
    f = flight()
    out = build("tls-record-frag").plan(f).writes
    assert len(out) == 1  # one write: the records share one segment
    recs = records(out[0])
    assert len(recs) == 2 and all(t == 0x16 and v == records(f.hello)[0][1] for t, v, _ in recs)
    assert b"".join(p for _, _, p in recs) == records(f.hello)[0][2]  # the same handshake message
    assert NAME.encode() not in out[0]  # the record boundary falls inside the name
    assert ch(out[0]).status == _extract.FRAGMENTED  # G-1: the GFW does not reassemble records
    whole = ch(out[0], reassemble_records=True)
    assert whole.status == _extract.OK and whole.sni == (NAME,) and whole.record_count == 2


def test_tls_record_frag_offsets() -> None:
    f = flight()
    out = build("tls-record-frag", {"at": "4,100"}).plan(f).writes[0]
    assert [len(p) for _, _, p in records(out)] == [4, 96, len(f.hello) - 5 - 100]
    assert ch(out, reassemble_records=True).sni == (NAME,)


@pytest.mark.parametrize("record,prefix", [("ccs", CCS_RECORD), ("empty-handshake", EMPTY_HANDSHAKE_RECORD)])
def test_ccs_first_puts_another_record_before_the_clienthello_T21_E(record: str, prefix: bytes) -> None:
    f = flight()
    (data,) = build("ccs-first", {"record": record}).plan(f).writes
    assert data == prefix + f.hello  # one write, one segment
    assert ch(data).status == _extract.NOT_THIS  # the first record is not a ClientHello (T21-2, T22-E)
    assert ch(data, skip_leading_records=True).sni == (NAME,)  # a censor that skipped records would find it


def test_padding_makes_the_clienthello_larger_than_one_packet_T21_2() -> None:
    ctx = tls_context(None, True)
    strategy = build("padding")
    strategy.configure(ctx, lambda c: len(hello_for(NAME, c)))
    hello = hello_for(NAME, ctx)
    assert len(hello) >= 1800 > 1500
    parsed = ch(hello)
    assert parsed.status == _extract.OK and parsed.sni == (NAME,) and parsed.record_count == 1
    assert parsed.alpn[0] == "http/1.1" and all(a.startswith(PAD_PREFIX) for a in parsed.alpn[1:])
    ctx = tls_context(None, True)
    build("padding", {"size": "5000"}).configure(ctx, lambda c: len(hello_for(NAME, c)))
    assert 5000 <= len(hello_for(NAME, ctx)) < 5300


def test_fake_first_random_parses_as_nothing_T21_3() -> None:
    f = flight()
    plan = build("fake-first").plan(f)
    (fake,) = plan.fakes
    assert len(fake.payload) == 120 and fake.payload[0] >= 0x80
    assert fake.bad_checksum and fake.ttl is None
    assert ch(fake.payload).status == _extract.NOT_THIS
    assert _extract.parse_http_request(fake.payload).status != _extract.OK
    assert plan.writes == (f.hello,)  # the real first flight follows, unchanged


def test_fake_first_decoy_is_a_real_clienthello_for_the_innocuous_name_via_ttl() -> None:
    plan = build("fake-first", {"kind": "decoy", "via": "ttl", "ttl": "3"}).plan(flight())
    (fake,) = plan.fakes
    assert ch(fake.payload).sni == ("example.org",)
    assert fake.ttl == 3 and not fake.bad_checksum
    assert ch(plan.writes[0]).sni == (NAME,)


@pytest.mark.parametrize("flags,bits", [("rst", "R"), ("rst-ack", "RA"), ("fin", "FA")])
def test_tcb_teardown_after_the_clienthello_T21_6(flags: str, bits: str) -> None:
    f = flight()
    plan = build("tcb-teardown", {"flags": flags}).plan(f)
    assert plan.writes == (f.hello,) and plan.fakes == ()  # the ClientHello goes out untouched, first
    (segment,) = plan.after
    assert segment.payload == b"" and segment.bad_checksum and segment.ttl is None
    wire = IP(tcp_packet("10.0.0.1", "10.0.0.2", 40000, 443, 1, 2, segment.payload, flags=segment.flags))
    assert wire[TCP].flags == bits


def test_tcb_teardown_before_the_clienthello_via_ttl() -> None:
    plan = build("tcb-teardown", {"when": "before", "via": "ttl", "ttl": "3", "flags": "fin"}).plan(flight())
    (segment,) = plan.fakes
    assert plan.after == () and segment.ttl == 3 and not segment.bad_checksum
    assert segment.describe() == "FIN/ACK segment of 0 bytes (ttl 3)"


def test_idle_wait_plans_a_silence_and_says_so_to_callers_T21_6() -> None:
    strategy = build("idle-wait")
    assert strategy.idle_seconds() == 610 and strategy.plan(flight()).idle == 610  # T21-6: ~10 min, plus margin
    assert build("idle-wait", {"seconds": "3"}).plan(flight()).idle == 3
    assert build("none").idle_seconds() == 0 and build("none").plan(flight()).idle == 0


def test_sni_changes_trailing_dot_and_case() -> None:
    dot, case = build("trailing-dot"), build("sni-case")
    assert dot.server_name(NAME) == "twitter.com." and dot.server_name("a.b.") == "a.b."
    assert case.server_name(NAME) == "TwItTeR.CoM"
    assert build("sni-case", {"pattern": "upper"}).server_name(NAME) == "TWITTER.COM"
    for strategy, sent in ((dot, "twitter.com."), (case, "TwItTeR.CoM")):  # the real stack sends them as given
        assert ch(hello_for(strategy.server_name(NAME))).sni == (sent,)


def test_tcp_timestamps_plan() -> None:
    plan = build("tcp-timestamps").plan(flight())
    assert plan.tcp_timestamps and len(plan.writes) == 1


def test_drop_rst_plan_and_rule_H_E() -> None:
    from dpi.strategies.firewall import DropRst
    assert build("drop-rst").plan(flight()).drop_rst == bytes.fromhex("01020304050607080900")  # H-2's payload
    assert build("drop-rst", {"payload": "any"}).plan(flight()).drop_rst == b""
    rule = DropRst(("10.9.1.2", 40000), ("10.9.2.2", 443), bytes.fromhex("0102"))
    assert rule.binary == "iptables" and "|0102|" in rule.spec and rule.spec[-2:] == ["-j", "DROP"]
    assert ["--sport", "443"] == rule.spec[5:7] and ["--dport", "40000"] == rule.spec[9:11]
    assert DropRst(("fd09:1::2", 1), ("fd09:2::2", 443)).binary == "ip6tables"


def test_hostname_check_follows_the_url_not_the_sni(certs: ModuleType) -> None:
    der = ssl.PEM_cert_to_DER_cert(Path(certs.server_cert).read_text().split("-----END CERTIFICATE-----")[0]
                                   + "-----END CERTIFICATE-----\n")
    assert hostname_matches(der, "twitter.com") and hostname_matches(der, "twitter.com.")
    assert hostname_matches(der, "TWITTER.com") and not hostname_matches(der, "evil.com")


# -- crafted packets ---------------------------------------------------------------------------------------------
def test_fake_segment_v4_fields_and_checksums() -> None:
    good = tcp_packet("10.0.0.1", "10.0.0.2", 40000, 443, 1000, 2000, b"x" * 120, window=83, ttl=3)
    bad = tcp_packet("10.0.0.1", "10.0.0.2", 40000, 443, 1000, 2000, b"x" * 120, window=83, ttl=3,
                     bad_checksum=True)
    for pkt in (good, bad):
        ip = IP(pkt)
        assert ip.ttl == 3 and ip.flags.DF and ip[TCP].seq == 1000 and ip[TCP].ack == 2000
        assert ip[TCP].flags == "PA" and ip[TCP].window == 83 and bytes(ip[TCP].payload) == b"x" * 120
        assert checksum(pkt[:20]) == 0  # IP header checksum
    assert _tcp_checksum_ok(IP(good)) and not _tcp_checksum_ok(IP(bad))


def test_fake_segment_v6_with_timestamp_option() -> None:
    opt = b"\x01\x01\x08\x0a" + struct.pack("!II", 7, 0)
    for bad in (False, True):
        pkt = tcp_packet("fd09:1::2", "fd09:2::2", 40000, 443, 5, 6, b"hi", ttl=2, options=opt, bad_checksum=bad)
        ip = IPv6(pkt)
        assert ip.hlim == 2 and ip[TCP].dataofs == 8 and dict(ip[TCP].options)["Timestamp"] == (7, 0)
        assert _tcp_checksum_ok(ip) is not bad


def _tcp_checksum_ok(pkt: IP | IPv6) -> bool:
    sent = pkt[TCP].chksum
    clone = pkt.copy()
    del clone[TCP].chksum
    return (IPv6 if pkt.version == 6 else IP)(bytes(clone))[TCP].chksum == sent


@pytest.mark.parametrize("src,dst", [("10.9.2.2", "10.9.1.2"), ("fd09:2::2", "fd09:1::2")])
def test_split_handshake_bare_syn_T22_1(src: str, dst: str) -> None:
    mss = b"\x02\x04\x05\xb4\x01\x01\x04\x02"
    syn_ack = tcp_packet(src, dst, 443, 40000, 777, 12345, flags=SYN | ACK, options=mss)
    syn = bare_syn(syn_ack)
    assert syn is not None
    pkt = (IPv6 if ":" in src else IP)(syn)
    assert pkt[TCP].flags == "S" and pkt[TCP].ack == 0 and pkt[TCP].seq == 777  # the SYN/ACK's own ISN
    assert (pkt[TCP].sport, pkt[TCP].dport) == (443, 40000) and dict(pkt[TCP].options)["MSS"] == 1460
    assert _tcp_checksum_ok(pkt)
    assert bare_syn(tcp_packet(src, dst, 443, 40000, 1, 1, b"data", flags=PSH | ACK)) is None
    assert bare_syn(b"\x45" + b"\x00" * 10) is None and bare_syn(bytes(60)) is None
    udp = bytearray(syn_ack)
    udp[9 if ":" not in src else 6] = 17
    assert bare_syn(bytes(udp)) is None


# -- QUIC --------------------------------------------------------------------------------------------------------
def _first_datagrams(strategy: str, args: dict[str, str] | None = None) -> list[tuple[bytes, int]]:
    """What aioquic sends for `strategy` to a UDP socket that never answers: [(datagram, source port)]."""
    from dpi.strategies.quicclient import fetch_h3
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        trace = fetch_h3(Target(NAME, port, "/", "127.0.0.1"), build(strategy, args).quic_plan(port),
                         insecure=True, timeout=0.3)
        assert trace.ending == "timeout" and trace.handshake is None
        listener.setblocking(False)
        out = []
        while True:
            try:
                data, addr = listener.recvfrom(65536)
            except BlockingIOError:
                return out
            out.append((data, addr[1]))


def _long_header(data: bytes) -> _extract.QuicLongHeader:
    return _extract.parse_quic_long_header(data, 0)


def test_quic_none_sends_a_v1_initial_with_the_sni_first() -> None:
    data, _ = _first_datagrams("none")[0]
    hdr = _long_header(data)
    assert hdr.status == _extract.OK and hdr.is_initial and hdr.version == 1 and len(data) >= 1200
    from dpi.quic import parse_initial
    assert parse_initial(data).sni == (NAME,)


def test_quic_dummy_first_datagram_is_not_quic_GQ_E_T22_4() -> None:
    sent = _first_datagrams("quic-dummy-first", {"size": "80"})
    (dummy, sport), (initial, sport2) = sent[0], sent[1]
    assert len(dummy) == 80 and dummy[0] < 0x40 and _long_header(dummy).status != _extract.OK
    assert sport == sport2  # same socket, same 4-tuple
    assert _long_header(initial).is_initial and _long_header(initial).version == 1


def test_quic_low_sport_uses_a_port_at_or_below_the_destination_GQ_1() -> None:
    sent = _first_datagrams("quic-low-sport")
    (data, sport) = sent[0]
    # the listener holds the destination port on this host, so the next free one below it is used
    assert _long_header(data).is_initial
    assert {p for _, p in sent} == {sport}
    plan = build("quic-low-sport").quic_plan(443)
    assert plan.source_ports[0] == 443 and all(p <= 443 for p in plan.source_ports)
    assert build("quic-low-sport", {"port": "500"}).quic_plan(443).notes  # a port above dport is flagged


def test_quic_v2_first_initial_is_version_2_GQ_3_T22_4() -> None:
    data, _ = _first_datagrams("quic-v2")[0]
    hdr = _long_header(data)
    assert hdr.status == _extract.OK and hdr.is_initial and hdr.version == QUIC_V2
    from dpi.quic import parse_initial
    assert parse_initial(data).sni == (NAME,)  # a v2-aware censor could still read it; GQ-1 does not


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_quic_crypto_split_two_crypto_frames_same_datagram_size_GQ_3(order: str) -> None:
    from aioquic.buffer import Buffer
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import pull_quic_header

    from dpi.quic import parse_initial
    data, _ = _first_datagrams("quic-crypto-split", {"order": order})[0]
    info = parse_initial(data)
    assert len(data) == 1200 and info.status == "ok" and info.version == 1
    assert info.crypto_frames == 2 and info.frames == ("CRYPTO", "CRYPTO")  # GQ-3: not one whole frame
    assert info.sni == (NAME,)  # a parser that reassembles CRYPTO frames reads the same ClientHello
    buf = Buffer(data=data)
    header = pull_quic_header(buf)
    pair = CryptoPair()
    pair.setup_initial(header.destination_cid, is_client=False, version=1)
    _, payload, _ = pair.decrypt_packet(data[:header.packet_length], buf.tell(), 0)
    frames = Buffer(data=payload)
    offsets = []
    for _ in range(2):
        assert frames.pull_uint_var() == 0x06
        offsets.append(frames.pull_uint_var())
        frames.pull_bytes(frames.pull_uint_var())
    assert (offsets[0] == 0) == (order == "forward") and 0 in offsets
    assert NAME.encode() not in payload  # the cut falls inside the name


# -- fetches against a real TLS server on loopback ---------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    spec = importlib.util.spec_from_file_location("labca", ROOT / "topologies" / "labca.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.get("labca") or importlib.util.module_from_spec(spec)
    if "labca" not in sys.modules:
        sys.modules["labca"] = module
        spec.loader.exec_module(module)
    return module.make_lab_ca(tmp_path_factory.mktemp("ca"), [NAME, "example.org"])


BODY = os.urandom(50_000)


@pytest.fixture(scope="module")
def tls_server(certs: ModuleType) -> Iterator[int]:
    """A threaded HTTPS server (Python's ssl = OpenSSL) on loopback: one response of BODY per connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    ctx.set_alpn_protocols(["http/1.1"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    listener.close()


def _fetch(port: int, certs: ModuleType, strategy: str, args: dict[str, str] | None = None) -> Trace:
    return fetch_tls(Target(NAME, port, "/", "127.0.0.1"), build(strategy, args), cafile=str(certs.ca_cert),
                     timeout=5)


@pytest.mark.parametrize("strategy,args", [
    ("none", None), ("tcp-segment", None), ("tcp-segment", {"at": "1,2,3,200"}), ("tls-record-frag", None),
    ("tls-record-frag", {"at": "4,50,100"}), ("ccs-first", {"record": "empty-handshake"}), ("padding", None),
    ("trailing-dot", None), ("sni-case", None),
])
def test_openssl_server_accepts_the_reshaped_first_flight(tls_server: int, certs: ModuleType, strategy: str,
                                                         args: dict[str, str] | None) -> None:
    trace = _fetch(tls_server, certs, strategy, args)
    assert trace.ending == "done" and trace.http_status == 200 and trace.body == len(BODY), trace
    assert trace.handshake is not None and trace.connected is not None and trace.handshake > trace.connected
    assert classify(trace, timeout=5) == ("ok", "HTTP 200")


def test_openssl_server_rejects_a_ccs_before_the_clienthello(tls_server: int, certs: ModuleType) -> None:
    """Why `ccs-first` reports `error`/server_rejected against OpenSSL: RFC 8446 allows CCS only after a hello."""
    trace = _fetch(tls_server, certs, "ccs-first")
    assert trace.ending == "tls-error" and trace.server_rejected and "unexpected_message" in trace.reason
    outcome, reason = classify(trace, timeout=5)
    assert outcome == "error" and "alert" in reason


def test_wrong_certificate_name_is_an_error(tls_server: int, certs: ModuleType) -> None:
    trace = fetch_tls(Target("evil.example", tls_server, "/", "127.0.0.1"), build("none"),
                      cafile=str(certs.ca_cert), timeout=5)
    assert trace.ending == "tls-error" and "certificate" in trace.reason


def test_nothing_listening_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    trace = fetch_tls(Target(NAME, port, "/", "127.0.0.1"), build("none"), insecure=True, timeout=2)
    assert trace.ending == "refused" and classify(trace, timeout=2)[0] == "error"


def _fetch_on_the_wire(tls_server: int, certs: ModuleType, strategy: str, args: dict[str, str]
                       ) -> tuple[Trace, list[IP]]:
    """A fetch with `strategy`, and the IPv4 TCP packets (and IP fragments) it sent to the server, as a capture on
    loopback saw them."""
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    cap.bind(("lo", 0))
    try:
        trace = _fetch(tls_server, certs, strategy, args)
        sport = trace.local[1] if trace.local else 0
        sent: list[IP] = []
        cap.setblocking(False)
        while True:
            try:
                frame, addr = cap.recvfrom(65536)
            except BlockingIOError:
                break
            if addr[2] == socket.PACKET_OUTGOING and frame[12:14] == b"\x08\x00":
                ip = IP(frame[14:])
                if ip.flags.MF or ip.frag:
                    sent.append(ip)  # a fragment (only the client sends any here)
                elif TCP in ip and ip[TCP].sport == sport and ip[TCP].dport == tls_server:
                    sent.append(ip)
    finally:
        cap.close()
    return trace, sent


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to capture on loopback (AF_PACKET)")
def test_each_write_leaves_as_its_own_segment_on_the_wire(tls_server: int, certs: ModuleType) -> None:
    """TCP_NODELAY plus waiting for the send queue: the segments on the wire are the strategy's writes."""
    trace, sent = _fetch_on_the_wire(tls_server, certs, "tcp-segment", {"at": "5,40"})
    assert trace.ending == "done"
    sizes = [len(ip[TCP].payload) for ip in sent if TCP in ip and len(ip[TCP].payload)]
    hello_len = len(hello_for())
    assert sizes[:3] == [5, 35, hello_len - 40], sizes


def test_idle_wait_silence_is_not_counted_against_the_timeout(tls_server: int, certs: ModuleType) -> None:
    trace = fetch_tls(Target(NAME, tls_server, "/", "127.0.0.1"), build("idle-wait", {"seconds": "2"}),
                      cafile=str(certs.ca_cert), timeout=1.5)
    assert trace.ending == "done" and trace.body == len(BODY), trace
    assert trace.handshake is not None and trace.request is not None and trace.request - trace.handshake >= 2
    assert "connection silent for 2 s after the handshake" in trace.notes


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (TCP_REPAIR, raw socket, AF_PACKET capture)")
@pytest.mark.parametrize("flags,bits", [("rst", "R"), ("fin", "FA")])
def test_tcb_teardown_leaves_after_the_clienthello_and_the_server_ignores_it(tls_server: int, certs: ModuleType,
                                                                            flags: str, bits: str) -> None:
    """On the wire: the teardown segment follows the ClientHello at the next sequence number, with a wrong
    checksum, so the server's stack drops it and the fetch completes (it is meant for the censor only)."""
    trace, sent = _fetch_on_the_wire(tls_server, certs, "tcb-teardown", {"flags": flags})
    assert trace.ending == "done" and trace.body == len(BODY), trace  # the server never saw the teardown
    hello = next(i for i, p in enumerate(sent) if bytes(p[TCP].payload)[:1] == b"\x16")
    teardown = [p for p in sent if "R" in str(p[TCP].flags) or "F" in str(p[TCP].flags)][0]
    assert str(teardown[TCP].flags) == bits and not bytes(teardown[TCP].payload)
    assert teardown[TCP].seq == sent[hello][TCP].seq + len(sent[hello][TCP].payload)
    assert sent.index(teardown) > hello and not _tcp_checksum_ok(teardown)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (TCP_REPAIR, raw socket, AF_PACKET capture)")
def test_ip_fragment_sends_the_clienthello_only_as_fragments_and_the_server_reassembles_T22_5(
        tls_server: int, certs: ModuleType) -> None:
    """On the wire the ClientHello exists only as IP fragments of 64 bytes (DF clear, one IP ID, contiguous
    offsets, MF on all but the last); reassembled they are one TCP segment carrying the whole ClientHello, and
    the fetch completes: the server's stack put them back together and TCP never retransmitted them whole."""
    trace, sent = _fetch_on_the_wire(tls_server, certs, "ip-fragment", {"size": "64"})
    assert trace.ending == "done" and trace.body == len(BODY), trace
    frags = [p for p in sent if p.flags.MF or p.frag]
    whole = [p for p in sent if p not in frags]
    assert not any(bytes(p[TCP].payload)[:1] == b"\x16" for p in whole), "the ClientHello also left unfragmented"
    assert len({p.id for p in frags}) == 1 and not any(p.flags.DF for p in frags)
    offsets = [p.frag * 8 for p in frags]
    assert offsets == list(range(0, 64 * len(frags), 64)) and [bool(p.flags.MF) for p in frags] == \
        [True] * (len(frags) - 1) + [False]
    assert all(len(bytes(p.payload)) == 64 for p in frags[:-1])
    segment = TCP(b"".join(bytes(p.payload) if p.frag else bytes(p[TCP]) for p in frags))
    hello = bytes(segment.payload)
    assert hello[:1] == b"\x16" and ch(hello).sni == (NAME,)
    assert len(frags) == -(-len(segment) // 64)  # ceil: every byte of the segment in exactly one fragment
    assert any(f"sent as {len(frags)} IP fragments" in n for n in trace.notes), trace.notes


def test_ip_fragments_of_ipv4_and_ipv6_packets_reassemble_to_the_original() -> None:
    v4 = tcp_packet("10.0.0.1", "10.0.0.2", 40000, 443, 7, 9, bytes(range(256)) * 2)
    frags = rawtcp.ip_fragments(v4, 100, ident=0x4242)  # rounded down to 96
    assert [len(f) - 20 for f in frags] == [96] * 5 + [len(v4) - 20 - 480]
    parsed = [IP(f) for f in frags]
    assert all(p.id == 0x4242 and not p.flags.DF and p.chksum == IP(bytes(p)).chksum for p in parsed)
    assert bytes(defragment(parsed)[0])[20:] == v4[20:]
    v6 = tcp_packet("fd00::1", "fd00::2", 40000, 443, 7, 9, b"x" * 300)
    frags6 = [IPv6(f) for f in rawtcp.ip_fragments(v6, 128, ident=7)]
    assert [f[IPv6ExtHdrFragment].offset * 8 for f in frags6] == [0, 128, 256]
    assert [f[IPv6ExtHdrFragment].m for f in frags6] == [1, 1, 0] and {f[IPv6ExtHdrFragment].id for f in frags6} == {7}
    whole = defragment6(frags6)
    assert bytes(whole[TCP]) == v6[40:]
    with pytest.raises(ValueError):
        rawtcp.ip_fragments(v4, 7)


def test_ip_fragment_plan_and_parameters() -> None:
    f = flight()
    plan = build("ip-fragment", {"size": "8"}).plan(f)
    assert plan.writes == (f.hello,) and plan.fragment_size == 8 and plan.fakes == ()
    assert build("ip-fragment").plan(f).fragment_size == 64
    with pytest.raises(StrategyError, match="multiple of 8"):
        build("ip-fragment", {"size": "20"})


# -- probe: target and outcome -----------------------------------------------------------------------------------
def test_resolve_forms() -> None:
    assert parse_resolve("twitter.com:10.9.2.2") == ("twitter.com", None, "10.9.2.2")
    assert parse_resolve("Twitter.com:8443:10.9.2.2") == ("twitter.com", 8443, "10.9.2.2")
    assert parse_resolve("twitter.com:fd09:2::2") == ("twitter.com", None, "fd09:2::2")
    assert parse_resolve("twitter.com:443:[fd09:2::2]") == ("twitter.com", 443, "fd09:2::2")
    for bad in ("twitter.com", "twitter.com:nowhere", ":1.2.3.4"):
        with pytest.raises(UsageError):
            parse_resolve(bad)
    t = make_target("https://twitter.com:8443/a?b=1", ["twitter.com:443:10.0.0.1", "twitter.com:10.0.0.2"], False)
    assert (t.host, t.port, t.path, t.address) == ("twitter.com", 8443, "/a?b=1", "10.0.0.2")
    with pytest.raises(UsageError):
        make_target("http://twitter.com/", [], False)


def _trace(ending: str, *, body: int = 0, request: float | None = 0.01, last: float | None = None,
           ended: float = 2.5) -> Trace:
    t = Trace("tls")
    t.request, t.body, t.last_byte = request, body, last
    t.ending, t.ended, t.reason = ending, ended, ending  # type: ignore[assignment]
    return t


def test_classify_outcomes() -> None:
    # T21-4: still receiving slowly when the time ran out
    assert classify(_trace("timeout", body=60_000, last=2.45), timeout=2.5)[0] == "throttled"
    # T25-1 / a blackhole after some data: nothing for over a second
    outcome, reason = classify(_trace("timeout", body=16_384, last=0.2), timeout=2.5)
    assert outcome == "timeout" and "stalled" in reason
    assert classify(_trace("timeout"), timeout=2.5)[0] == "timeout"
    assert classify(_trace("reset"), timeout=2.5)[0] == "reset"
    # a completed download is judged on its goodput only when --download asked for a measurement
    slow = _trace("done", body=20_000, last=2.0, ended=2.0)
    assert classify(slow, timeout=5, download=20_000)[0] == "throttled"
    assert classify(slow, timeout=5)[0] == "ok"
    fast = _trace("done", body=1_000_000, last=0.02, ended=0.02)
    assert classify(fast, timeout=5, download=1_000_000)[0] == "ok"
    for ending in ("closed", "tls-error", "refused", "unreachable", "error"):
        assert classify(_trace(ending), timeout=2.5)[0] == "error"


# -- server side -------------------------------------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_server_window_helper_sets_and_restores_routes_T22_E() -> None:
    """`server-side window`: new routes get `window N` and go away; an existing exact route is restored."""
    import subprocess
    import uuid
    ns = f"rws{uuid.uuid4().hex[:6]}"

    def ip(*args: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, "ip", *args], check=True, text=True,
                              capture_output=True).stdout

    subprocess.run(["ip", "netns", "add", ns], check=True)
    helper: subprocess.Popen[str] | None = None
    try:
        ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
        ip("addr", "add", "10.77.0.1/24", "dev", "d0")
        ip("link", "set", "d0", "up")
        ip("link", "set", "d1", "up")
        ip("route", "add", "default", "via", "10.77.0.254")
        ip("route", "add", "10.88.0.0/24", "via", "10.77.0.2", "dev", "d0", "metric", "5")  # another metric
        ip("route", "add", "10.66.0.0/24", "via", "10.77.0.3", "dev", "d0")  # the same (default) metric
        before = ip("route", "show")
        helper = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "dpi.probe", "server-side",
                                   "window", "--client", "10.88.0.0/24", "--client", "10.99.0.0/24",
                                   "--client", "10.66.0.0/24", "--bytes", "100"],
                                  cwd=str(ROOT), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert helper.stdout is not None and '"ready"' in helper.stdout.readline()
        during = ip("route", "show")
        lines = [line.strip() for line in during.splitlines()]
        assert "10.99.0.0/24 via 10.77.0.254 dev d0 window 100" in lines  # new: the path the traffic takes
        assert "10.88.0.0/24 via 10.77.0.2 dev d0 window 100" in lines  # at metric 0, preferred over ...
        assert "10.88.0.0/24 via 10.77.0.2 dev d0 metric 5" in lines  # ... the metric-5 route, left alone
        assert [line for line in lines if line.startswith("10.66.0.0/24")] == [
            "10.66.0.0/24 via 10.77.0.3 dev d0 window 100"]  # the same metric: replaced
        helper.terminate()
        _, err = helper.communicate(timeout=20)
        assert helper.returncode == 0, err
        assert ip("route", "show") == before
    finally:
        if helper is not None and helper.poll() is None:
            helper.kill()
            helper.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
