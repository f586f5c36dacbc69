"""Forged packets (dpi.forge): injector fingerprints (G-3, H-2) and forged DNS answers (GD-1, GD-2).

Every packet is parsed back by an independent implementation (scapy for IP/TCP/UDP, dnslib for DNS) and its
checksums are compared with scapy's own recomputation, so a field written at the wrong offset or a wrong
checksum fails here rather than being silently dropped by a real stack.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import random
import statistics
import struct

import dnslib
import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.dns import DNS
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.packet import Raw

from dpi.config import INJECTOR_PRESETS, Injector
from dpi.forge import (
    TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, AddressPool, draw_delay, draw_ip_id, forge_dns_response,
    forge_rsts, tcp_packet, udp_packet,
)

V4 = (("10.1.0.5", 51000), ("93.184.216.34", 443))
V6 = (("fd00:1::5", 51000), ("2606:2800:220:1::1", 443))
CLIENT_SEQ, SERVER_SEQ = 0x1A2B3C4D, 0xF0E0D0C0
GFW_DELAY = (0.011, 0.445)  # G-3: first RST 11-445 ms after the trigger, mean 18 ms
HENAN_PAYLOAD = bytes([1, 2, 3, 4, 5, 6, 7, 8, 9, 0])  # H-2


def _parse(packet: bytes) -> IP | IPv6:
    return IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)


def _assert_checksums_valid(packet: bytes) -> None:
    """scapy recomputes every checksum from scratch; the bytes must not change."""
    parsed = _parse(packet)
    if isinstance(parsed, IP):
        del parsed.chksum
    l4 = parsed[TCP] if TCP in parsed else parsed[UDP]
    del l4.chksum
    assert bytes(parsed) == packet


def _rsts(name: str, family: tuple, to: str, seed: int = 7) -> list[tuple[float, bytes]]:
    client, server = family
    return forge_rsts(client=client, server=server, client_seq=CLIENT_SEQ, server_seq=SERVER_SEQ,
                      injector=INJECTOR_PRESETS[name], to=to, rng=random.Random(seed))


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints common to every preset: addressing, seq/ack, copies, checksums


@pytest.mark.parametrize("family", [V4, V6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("name", ["gfw-type1", "gfw-type2", "gfw-type3", "henan"])
@pytest.mark.parametrize("to", ["client", "server", "both"])
def test_g3_h2_rst_addressing_seq_ack_and_copies(name: str, family: tuple, to: str) -> None:
    injector = INJECTOR_PRESETS[name]
    client, server = family
    out = _rsts(name, family, to)
    directions = {"client": ["client"], "server": ["server"], "both": ["client", "server"]}[to]
    assert len(out) == injector.count * len(directions)
    for i, direction in enumerate(directions):
        copies = out[i * injector.count:(i + 1) * injector.count]
        # G-3 type II: the copies of one RST are byte-identical and leave together.
        assert len({packet for _, packet in copies}) == 1
        assert len({delay for delay, _ in copies}) == 1
        packet = copies[0][1]
        _assert_checksums_valid(packet)
        parsed = _parse(packet)
        tcp = parsed[TCP]
        src, dst = (server, client) if direction == "client" else (client, server)
        assert (parsed.src, tcp.sport) == (str(ipaddress.ip_address(src[0])), src[1])
        assert (parsed.dst, tcp.dport) == (str(ipaddress.ip_address(dst[0])), dst[1])
        seq, ack = (SERVER_SEQ, CLIENT_SEQ) if direction == "client" else (CLIENT_SEQ, SERVER_SEQ)
        assert tcp.seq == seq
        assert tcp.ack == (ack if injector.flags == "RA" else 0)
        assert int(tcp.flags) == (TCP_RST | TCP_ACK if injector.flags == "RA" else TCP_RST)
        assert tcp.dataofs == 5 and tcp.options == [] and tcp.urgptr == 0 and tcp.reserved == 0
        assert tcp.window == injector.window
        assert bytes(tcp.payload) == injector.payload


@pytest.mark.parametrize("name", ["gfw-type1", "gfw-type2", "gfw-type3", "henan"])
def test_g3_h2_ipv6_uses_hop_limit_and_has_no_ip_id(name: str) -> None:
    injector = INJECTOR_PRESETS[name]
    for seed in range(50):
        (_, packet), *_ = _rsts(name, V6, "client", seed)
        parsed = IPv6(packet)
        assert parsed.version == 6 and parsed.nh == 6 and parsed.tc == 0 and parsed.fl == 0
        assert injector.ttl[0] <= parsed.hlim <= injector.ttl[1]
        assert parsed.plen == 20 + len(injector.payload)
        assert len(packet) == 40 + 20 + len(injector.payload)  # no extension header carries an ID or DF


def test_seq_and_ack_wrap_modulo_2_32() -> None:
    (_, packet), = forge_rsts(client=V4[0], server=V4[1], client_seq=2**32 + 5, server_seq=-1,
                              injector=INJECTOR_PRESETS["henan"], to="client", rng=random.Random(1))
    assert struct.unpack_from("!II", packet, 24) == (0xFFFFFFFF, 5)


# ----------------------------------------------------------------------------------------------------------------
# Each injector's own fingerprint, byte for byte (G-3 types I/II/III, H-2)


def _ipv4_fields(packet: bytes) -> dict[str, int]:
    return {"ip_id": struct.unpack_from("!H", packet, 4)[0], "frag": struct.unpack_from("!H", packet, 6)[0],
            "ttl": packet[8], "tcp_flags": packet[33], "window": struct.unpack_from("!H", packet, 34)[0],
            "ack": struct.unpack_from("!I", packet, 28)[0]}


def _many(name: str, n: int = 400) -> list[bytes]:
    return [_rsts(name, V4, "client", seed)[0][1] for seed in range(n)]


def test_g3_type1_single_rst_no_ack_df0_ipid0_ttl_55_118() -> None:
    packets = _many("gfw-type1")
    assert len(_rsts("gfw-type1", V4, "client")) == 1
    ttls = set()
    for packet in packets:
        f = _ipv4_fields(packet)
        assert f["tcp_flags"] == 0x04  # RST only
        assert f["ack"] == 0
        assert f["ip_id"] == 0
        assert f["frag"] == 0x0000  # DF=0
        assert f["window"] == 0
        assert 55 <= f["ttl"] <= 118
        ttls.add(f["ttl"])
    assert {55, 118} <= ttls  # inclusive range, both ends reachable
    assert len(ttls) > 40


def test_g3_type2_three_identical_rst_acks_df1_random_ipid_ttl_39_238() -> None:
    ids, ttls = set(), set()
    for seed in range(400):
        out = _rsts("gfw-type2", V4, "client", seed)
        assert len(out) == 3
        assert out[0][1] == out[1][1] == out[2][1]
        f = _ipv4_fields(out[0][1])
        assert f["tcp_flags"] == 0x14  # RST+ACK
        assert f["ack"] == CLIENT_SEQ
        assert f["frag"] == 0x4000  # DF=1
        assert 39 <= f["ttl"] <= 238
        ids.add(f["ip_id"])
        ttls.add(f["ttl"])
    assert len(ids) > 380  # random per RST, not a constant
    assert len(ttls) > 150


def test_g3_type3_one_rst_ack_df0_ipid_9916_9933_ttl_248() -> None:
    ids = set()
    for packet in _many("gfw-type3"):
        f = _ipv4_fields(packet)
        assert f["tcp_flags"] == 0x14
        assert f["frag"] == 0x0000
        assert f["ttl"] == 248
        assert 0x9916 <= f["ip_id"] <= 0x9933
        ids.add(f["ip_id"])
    assert ids == set(range(0x9916, 0x9934))  # the whole inclusive range, nothing outside


def test_h2_henan_rst_ack_df0_ipid1_ttl58_ten_byte_payload() -> None:
    (_, packet), = _rsts("henan", V4, "client")
    f = _ipv4_fields(packet)
    assert f["tcp_flags"] == 0x14 and f["frag"] == 0 and f["ttl"] == 58 and f["ip_id"] == 1
    assert struct.unpack_from("!H", packet, 2)[0] == 50 == len(packet)
    assert packet[40:] == HENAN_PAYLOAD
    (_, packet6), = _rsts("henan", V6, "client")
    assert packet6[60:] == HENAN_PAYLOAD


def test_other_injector_fields_window_df_payload_count_are_honoured() -> None:
    injector = Injector(name="custom", flags="RA", count=2, ttl=(30, 30), ip_id="0x10", df=True, window=1234,
                        payload=b"xyz")
    out = forge_rsts(client=V4[0], server=V4[1], client_seq=1, server_seq=2, injector=injector, to="server",
                     rng=random.Random(3))
    assert len(out) == 2 and out[0][1] == out[1][1]
    parsed = IP(out[0][1])
    assert parsed.id == 16 and parsed.flags == "DF" and parsed.ttl == 30
    assert parsed[TCP].window == 1234 and bytes(parsed[TCP].payload) == b"xyz"
    _assert_checksums_valid(out[0][1])


def test_forge_rsts_rejects_bad_direction() -> None:
    with pytest.raises(ValueError):
        forge_rsts(client=V4[0], server=V4[1], client_seq=1, server_seq=2, injector=INJECTOR_PRESETS["henan"],
                   to="sideways", rng=random.Random(1))


def test_forge_rsts_is_deterministic_for_a_seed() -> None:
    assert _rsts("gfw-type2", V4, "both", 99) == _rsts("gfw-type2", V4, "both", 99)


# ----------------------------------------------------------------------------------------------------------------
# IP ID rules and delays


def test_draw_ip_id_rules() -> None:
    rng = random.Random(5)
    assert draw_ip_id("zero", rng) == 0
    assert draw_ip_id("1", rng) == 1
    assert draw_ip_id("0x9916", rng) == 0x9916
    assert draw_ip_id(" 0X10 ", rng) == 16
    assert {draw_ip_id("7-9", rng) for _ in range(200)} == {7, 8, 9}
    assert {draw_ip_id("0x9916-0x9933", rng) for _ in range(2000)} == set(range(0x9916, 0x9934))
    randoms = [draw_ip_id("random", rng) for _ in range(2000)]
    assert all(0 <= v <= 0xFFFF for v in randoms) and len(set(randoms)) > 1900


@pytest.mark.parametrize("spec", ["", "abc", "9-3", "70000", "0x10000", "-1", "1-", "0x-0x5", "1.5"])
def test_draw_ip_id_rejects_malformed_rules(spec: str) -> None:
    with pytest.raises(ValueError):
        draw_ip_id(spec, random.Random(1))


class _FixedRandom(random.Random):
    """A Random whose uniform draw is pinned, to reach the ends of the inverse CDF."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_g3_delay_distribution_bounds_and_mean_18ms() -> None:
    injector = dataclasses.replace(INJECTOR_PRESETS["gfw-type1"], delay=GFW_DELAY)
    rng = random.Random(2024)
    draws = [draw_delay(injector, rng) for _ in range(40000)]
    assert min(draws) >= 0.011 and max(draws) <= 0.445
    # Mean 11 + 434/60 = 18.2 ms (G-3: 18 ms); the standard error over 40 000 draws is ~0.04 ms.
    assert statistics.fmean(draws) == pytest.approx(0.0182, abs=0.0005)
    # Skewed towards the minimum like the measurements: median 11 + 7.23 * ln 2 = 16.0 ms, and a long tail.
    assert statistics.median(draws) == pytest.approx(0.0160, abs=0.0005)
    assert max(draws) > 0.06
    assert draw_delay(injector, _FixedRandom(0.0)) == 0.011
    assert draw_delay(injector, _FixedRandom(1.0 - 2**-53)) <= 0.445


def test_delay_fixed_when_range_is_degenerate() -> None:
    rng = random.Random(1)
    assert draw_delay(Injector(delay=(0.0, 0.0)), rng) == 0.0
    assert draw_delay(Injector(delay=(0.05, 0.05)), rng) == 0.05
    assert draw_delay(Injector(delay=(0.2, 0.1)), rng) == 0.2


def test_general_delay_mean_is_min_plus_one_sixtieth_of_span() -> None:
    injector = Injector(delay=(1.0, 7.0))
    rng = random.Random(11)
    draws = [draw_delay(injector, rng) for _ in range(40000)]
    assert 1.0 <= min(draws) and max(draws) <= 7.0
    assert statistics.fmean(draws) == pytest.approx(1.1, abs=0.003)


def test_rsts_to_both_share_delay_within_a_direction_and_carry_it() -> None:
    injector = dataclasses.replace(INJECTOR_PRESETS["gfw-type2"], delay=GFW_DELAY)
    out = forge_rsts(client=V4[0], server=V4[1], client_seq=1, server_seq=2, injector=injector, to="both",
                     rng=random.Random(4))
    delays = [d for d, _ in out]
    assert len(set(delays[:3])) == 1 and len(set(delays[3:])) == 1
    assert all(0.011 <= d <= 0.445 for d in delays)


# ----------------------------------------------------------------------------------------------------------------
# Generic TCP/UDP building


@pytest.mark.parametrize("addrs", [("192.0.2.1", "198.51.100.7"), ("2001:db8::1", "2001:db8::2")])
@pytest.mark.parametrize("payload", [b"", b"a", b"hello world!!", bytes(range(256)) * 5])
def test_tcp_and_udp_packets_parse_with_valid_checksums(addrs: tuple[str, str], payload: bytes) -> None:
    src, dst = addrs
    flags = TCP_SYN | TCP_FIN | TCP_PSH
    packet = tcp_packet(src, dst, 1, 65535, 10, 20, flags, ttl=3, ip_id=77, df=True, window=999, payload=payload)
    _assert_checksums_valid(packet)
    tcp = _parse(packet)[TCP]
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, int(tcp.flags), tcp.window) == (1, 65535, 10, 20, flags, 999)
    assert bytes(tcp.payload) == payload
    datagram = udp_packet(src, dst, 53, 40000, payload, ttl=9, ip_id=5)
    _assert_checksums_valid(datagram)
    parsed = _parse(datagram)
    assert (parsed[UDP].sport, parsed[UDP].dport, parsed[UDP].len) == (53, 40000, 8 + len(payload))
    assert bytes(parsed[UDP].payload) == payload
    if isinstance(parsed, IP):
        assert (parsed.id, parsed.ttl, parsed.flags, parsed.len) == (5, 9, 0, len(datagram))


def test_udp_checksum_that_computes_to_zero_is_sent_as_ffff() -> None:
    probe = udp_packet("192.0.2.1", "192.0.2.2", 1000, 2000, b"\x00\x00")
    word = struct.unpack_from("!H", probe, 26)[0]  # with this payload word, the sum becomes 0xffff
    packet = udp_packet("192.0.2.1", "192.0.2.2", 1000, 2000, struct.pack("!H", word))
    assert packet[26:28] == b"\xff\xff"
    _assert_checksums_valid(packet)


def test_tcp_packet_rejects_mixed_families_and_bad_fields() -> None:
    with pytest.raises(ValueError):
        tcp_packet("192.0.2.1", "2001:db8::1", 1, 2, 0, 0, TCP_RST)
    with pytest.raises(ValueError):
        tcp_packet("192.0.2.1", "192.0.2.2", 70000, 2, 0, 0, TCP_RST)
    with pytest.raises(ValueError):
        tcp_packet("192.0.2.1", "192.0.2.2", 1, 2, 0, 0, TCP_RST, ttl=256)


# ----------------------------------------------------------------------------------------------------------------
# Forged DNS answers (GD-1, GD-2)

A_POOL = ["31.13.64.1", "108.160.166.9", "199.59.148.20"]
TEREDO = ["2001::1f0d:4001", "2001::6ca0:a609", "2001::c73b:9414"]
CLIENT4, RESOLVER4 = "10.1.0.5", "8.8.8.8"
CLIENT6, RESOLVER6 = "fd00:1::5", "2001:4860:4860::8888"


def _query(name: str = "www.twitter.com", qtype: str = "A", *, v6: bool = False, rd: bool = True,
           edns: bool = False, sport: int = 34567) -> tuple[bytes, dnslib.DNSRecord]:
    record = dnslib.DNSRecord.question(name, qtype)
    record.header.rd = int(rd)
    if edns:
        record.add_ar(dnslib.EDNS0(udp_len=1232))
    dns = bytes(record.pack())
    ip = IPv6(src=CLIENT6, dst=RESOLVER6) if v6 else IP(src=CLIENT4, dst=RESOLVER4, id=4321)
    return bytes(ip / UDP(sport=sport, dport=53) / Raw(dns)), record


def _answer(packet: bytes) -> tuple[IP | IPv6, dnslib.DNSRecord]:
    _assert_checksums_valid(packet)
    parsed = _parse(packet)
    return parsed, dnslib.DNSRecord.parse(bytes(parsed[UDP].payload))


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("rd", [True, False])
def test_gd1_forged_a_answer_mirrors_the_query(v6: bool, rd: bool) -> None:
    packet, query = _query(v6=v6, rd=rd)
    forged = forge_dns_response(packet, a_pool=AddressPool(A_POOL), aaaa_pool=None, ttl=123, ip_ttl=77,
                                rng=random.Random(1))
    assert forged is not None
    ip, answer = _answer(forged)
    assert (ip.src, ip.dst) == ((RESOLVER6, CLIENT6) if v6 else (RESOLVER4, CLIENT4))
    assert (ip[UDP].sport, ip[UDP].dport) == (53, 34567)
    assert (ip.hlim if v6 else ip.ttl) == 77
    h = answer.header
    assert h.id == query.header.id
    assert (h.qr, h.aa, h.tc, h.rd, h.ra, h.rcode, h.opcode) == (1, 0, 0, int(rd), 1, 0, 0)
    assert (h.q, h.a, h.auth, h.ar) == (1, 1, 0, 0)
    assert answer.q == query.q
    (rr,) = answer.rr
    assert rr.rname == query.q.qname and rr.rtype == dnslib.QTYPE.A and rr.rclass == 1 and rr.ttl == 123
    assert str(rr.rdata) == A_POOL[0]
    dns = bytes(ip[UDP].payload)
    question_end = len(bytes(query.pack()))  # the query has no other section
    assert dns[question_end:question_end + 2] == b"\xc0\x0c"  # answer name by pointer to the question


def test_gd1_question_copied_verbatim_including_0x20_case_and_edns_dropped() -> None:
    packet, query = _query("wWw.TwItTeR.cOm", edns=True)
    forged = forge_dns_response(packet, a_pool=AddressPool(A_POOL), aaaa_pool=None)
    assert forged is not None
    _, answer = _answer(forged)
    assert str(answer.q.qname) == "wWw.TwItTeR.cOm."
    assert b"\x03wWw\x07TwItTeR\x03cOm\x00\x00\x01\x00\x01" in forged
    assert answer.header.ar == 0 and answer.ar == []


def test_gd2_pool_cycles_in_order_across_queries() -> None:
    pool = AddressPool(A_POOL, order="cycle")
    seen = []
    for i in range(7):
        packet, _ = _query(f"n{i}.example.com", sport=40000 + i)
        forged = forge_dns_response(packet, a_pool=pool, aaaa_pool=None)
        assert forged is not None
        seen.append(str(_answer(forged)[1].rr[0].rdata))
    assert seen == A_POOL * 2 + A_POOL[:1]


def test_gd2_random_pool_draws_from_the_pool_reproducibly() -> None:
    def run(seed: int) -> list[str]:
        pool = AddressPool(A_POOL, order="random", rng=random.Random(seed))
        return [pool.next() for _ in range(300)]
    draws = run(8)
    assert set(draws) == set(A_POOL)
    assert draws == run(8)
    assert draws != A_POOL * 100  # not the cycling order


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_gd2_forged_aaaa_answer_is_teredo(v6: bool) -> None:
    packet, query = _query("www.facebook.com", "AAAA", v6=v6)
    pool = AddressPool(TEREDO)
    forged = forge_dns_response(packet, a_pool=AddressPool(A_POOL), aaaa_pool=pool)
    assert forged is not None
    _, answer = _answer(forged)
    (rr,) = answer.rr
    assert rr.rtype == dnslib.QTYPE.AAAA and rr.rname == query.q.qname
    address = ipaddress.IPv6Address(str(rr.rdata))
    assert address in ipaddress.IPv6Network("2001::/32")
    assert str(address) == TEREDO[0]


def test_dns_ip_id_comes_from_rng() -> None:
    packet, _ = _query()
    pool = AddressPool(A_POOL)
    a = forge_dns_response(packet, a_pool=pool, aaaa_pool=None, rng=random.Random(3))
    b = forge_dns_response(packet, a_pool=AddressPool(A_POOL), aaaa_pool=None, rng=random.Random(3))
    assert a == b
    assert IP(forge_dns_response(packet, a_pool=pool, aaaa_pool=None)).id == 0


def test_dns_query_behind_ipv6_hop_by_hop_header_is_answered() -> None:
    dns = bytes(dnslib.DNSRecord.question("example.org", "AAAA").pack())
    packet = bytes(IPv6(src=CLIENT6, dst=RESOLVER6) / IPv6ExtHdrHopByHop() / UDP(sport=5353, dport=53) / Raw(dns))
    forged = forge_dns_response(packet, a_pool=None, aaaa_pool=AddressPool(TEREDO))
    assert forged is not None
    ip, answer = _answer(forged)
    assert ip.nh == 17 and ip[UDP].dport == 5353 and str(answer.rr[0].rdata) == TEREDO[0]


@pytest.mark.parametrize("qtype", ["TXT", "MX", "HTTPS", "ANY", "NS"])
def test_other_qtypes_get_no_answer(qtype: str) -> None:
    packet, _ = _query(qtype=qtype)
    assert forge_dns_response(packet, a_pool=AddressPool(A_POOL), aaaa_pool=AddressPool(TEREDO)) is None


def test_missing_pool_gets_no_answer() -> None:
    a_packet, _ = _query(qtype="A")
    aaaa_packet, _ = _query(qtype="AAAA")
    assert forge_dns_response(a_packet, a_pool=None, aaaa_pool=AddressPool(TEREDO)) is None
    assert forge_dns_response(aaaa_packet, a_pool=AddressPool(A_POOL), aaaa_pool=None) is None


def _with_dns(dns: bytes) -> bytes:
    return bytes(IP(src=CLIENT4, dst=RESOLVER4) / UDP(sport=1111, dport=53) / Raw(dns))


def _malformed() -> dict[str, bytes]:
    good, _ = _query()
    dns = bytes(dnslib.DNSRecord.question("example.com", "A").pack())
    response = dnslib.DNSRecord.question("example.com", "A").reply()
    two_questions = bytearray(dns)
    two_questions[5] = 2
    pointer = dns[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    long_label = dns[:12] + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"
    long_name = dns[:12] + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01"  # 256 bytes of name
    notify = bytearray(dns)
    notify[2] |= 0x20  # opcode 4 (NOTIFY)
    chaos = dns[:-2] + b"\x00\x03"
    return {
        "empty": b"",
        "garbage": b"\x00" * 40,
        "version-5": b"\x50" + good[1:],
        "tcp": bytes(IP(src=CLIENT4, dst=RESOLVER4) / TCP(sport=1111, dport=53) / Raw(dns)),
        "fragment": bytes(IP(src=CLIENT4, dst=RESOLVER4, flags="MF") / UDP(sport=1111, dport=53) / Raw(dns)),
        "ip-total-length-too-big": good[:2] + struct.pack("!H", len(good) + 10) + good[4:],
        "udp-length-too-big": good[:24] + struct.pack("!H", len(good) - 20 + 4) + good[26:],
        "dns-header-short": _with_dns(dns[:11]),
        "response": _with_dns(bytes(response.pack())),
        "two-questions": _with_dns(bytes(two_questions)),
        "compression-pointer-in-question": _with_dns(pointer),
        "label-over-63": _with_dns(long_label),
        "name-over-255": _with_dns(long_name),
        "opcode-notify": _with_dns(bytes(notify)),
        "class-chaos": _with_dns(chaos),
        "qtype-missing": _with_dns(dns[:-4]),
        "ipv6-fragment": bytes(IPv6(src=CLIENT6, dst=RESOLVER6, nh=44) / Raw(b"\x11\x00\x00\x01\x00\x00\x00\x01")
                               / UDP(sport=1, dport=53) / Raw(dns)),
    }


@pytest.mark.parametrize("case", sorted(_malformed()))
def test_malformed_queries_get_no_answer(case: str) -> None:
    pools = {"a_pool": AddressPool(A_POOL), "aaaa_pool": AddressPool(TEREDO)}
    assert forge_dns_response(_malformed()[case], **pools) is None


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_every_truncation_of_a_query_gets_no_answer(v6: bool) -> None:
    packet, _ = _query(v6=v6)
    pools = {"a_pool": AddressPool(A_POOL), "aaaa_pool": AddressPool(TEREDO)}
    assert forge_dns_response(packet, **pools) is not None
    for end in range(len(packet)):
        assert forge_dns_response(packet[:end], **pools) is None


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_queries_never_raise(data: st.DataObject) -> None:
    packet = bytearray(_query(v6=data.draw(st.booleans()))[0])
    for _ in range(data.draw(st.integers(1, 6))):
        packet[data.draw(st.integers(0, len(packet) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(packet)))
    forged = forge_dns_response(bytes(packet[:cut]), a_pool=AddressPool(A_POOL), aaaa_pool=AddressPool(TEREDO))
    if forged is not None:
        _assert_checksums_valid(forged)
        # scapy's parser, not dnslib's: a mutated label may hold any octet, which DNS allows (RFC 2181 11) and
        # the injector copies verbatim, but dnslib refuses (b"\x80ww": "Invalid label").
        answer = DNS(bytes(_parse(forged)[UDP].payload))
        assert answer.qr == 1 and answer.ancount == 1 and len(answer.an) == 1 and answer.an[0].type in (1, 28)


def test_a_query_whose_label_holds_a_non_ascii_octet_is_answered_with_its_question_verbatim() -> None:
    """The case hypothesis found: `www` turned into b"\\x80ww" (legal DNS, RFC 2181 11; dnslib rejects it)."""
    packet = bytearray(_query()[0])
    at = packet.index(b"\x03www") + 1
    packet[at] = 0x80
    forged = forge_dns_response(bytes(packet), a_pool=AddressPool(A_POOL), aaaa_pool=None)
    assert forged is not None
    query, answer = DNS(bytes(IP(bytes(packet))[UDP].payload)), DNS(bytes(_parse(forged)[UDP].payload))
    assert answer.qr == 1 and answer.id == query.id and answer.ancount == 1
    assert bytes(answer.qd[0]) == bytes(query.qd[0]) and answer.qd[0].qname.startswith(b"\x80ww.")


@given(st.binary(max_size=120))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_raise(blob: bytes) -> None:
    forge_dns_response(blob, a_pool=AddressPool(A_POOL), aaaa_pool=AddressPool(TEREDO))


def test_address_pool_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        AddressPool([])
    with pytest.raises(ValueError):
        AddressPool(["1.2.3.4"], order="shuffle")
    with pytest.raises(ValueError):
        AddressPool(["not-an-address"])
    packet, _ = _query()
    with pytest.raises(ValueError):  # a profile error, not packet input: loud
        forge_dns_response(packet, a_pool=AddressPool(TEREDO), aaaa_pool=None)
