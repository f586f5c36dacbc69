"""Offline IP reassembly (dpi.defrag) and what it means for `redweb classify`: a profile that reassembles
(`flows.fragments: reassemble`, the default, what the kernel does in front of the live censor) reads a
ClientHello sent as IP fragments; one that forwards fragments uninspected (tspu-2022, T22-5) does not."""
from __future__ import annotations

import io
import struct
from pathlib import Path

from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment

from dpi.classify import classify_bytes
from dpi.defrag import MAX_PENDING, TIMEOUT, reassemble, reassemble_capture
from dpi.pcap import PcapWriter, iter_packets
from dpi.profile import load_profile
from dpi.strategies.rawtcp import ip_fragments
from dpi.traffic import TcpConversation, client_hello

C, S = "10.0.1.2", "198.51.100.7"


def udp(size: int, ident: int = 7) -> bytes:
    """An IPv4 UDP datagram with `size` bytes of payload."""
    return bytes(IP(src=C, dst=S, id=ident) / UDP(sport=5000, dport=9) / (bytes(range(256)) * 8)[:size])


def timed(packets: list[bytes], t0: float = 0.0) -> list[tuple[float, bytes]]:
    return [(t0 + i * 0.001, p) for i, p in enumerate(packets)]


def test_fragments_in_any_order_give_back_the_datagram_and_others_pass_through() -> None:
    whole = udp(1000)
    frags = ip_fragments(whole, 200)
    other = udp(10, ident=9)
    out = list(reassemble(timed([other, *reversed(frags), other])))
    assert [p for _, p in out] == [other, whole, other]
    assert out[1][0] == 0.001 * len(frags)  # at the time of the fragment that completed it
    assert IP(out[1][1]).chksum == IP(whole).chksum and IP(out[1][1]).flags == 0


def test_holes_overlaps_timeouts_and_the_pending_bound() -> None:
    frags = ip_fragments(udp(1000), 200)
    assert list(reassemble(timed(frags[:2] + frags[3:]))) == []  # a hole: never emitted
    dup = frags[:2] + [frags[1]] + frags[2:]
    assert [p for _, p in reassemble(timed(dup))] == [udp(1000)]  # an exact duplicate is harmless
    overlapping = bytes(IP(src=C, dst=S, id=7, flags="MF", frag=3, proto=17) / (b"X" * 64))
    assert list(reassemble(timed(frags[:2] + [overlapping] + frags[2:]))) == []  # Linux drops the datagram
    late = [(0.0, frags[0]), *[(TIMEOUT + 1.0, f) for f in frags[1:]]]
    assert list(reassemble(late)) == []  # the first fragment was forgotten after ipfrag_time
    firsts = [ip_fragments(udp(100, ident=i), 64)[0] for i in range(MAX_PENDING + 1)]
    last_of_0 = ip_fragments(udp(100, ident=0), 64)[1]
    assert list(reassemble(timed([*firsts, last_of_0]))) == []  # datagram 0 was pushed out by the bound


def test_ipv6_fragments_after_an_extension_header() -> None:
    base = IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2) / (b"v6" * 400)
    whole = bytes(base)
    head = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrDestOpt(nh=44))  # next header: Fragment
    body = bytes(base[UDP])
    frags = []
    for off in range(0, len(body), 256):
        more = int(off + 256 < len(body))
        fh = bytes(IPv6ExtHdrFragment(nh=17, offset=off // 8, m=more, id=99))
        pkt = bytearray(head + fh + body[off:off + 256])
        struct.pack_into("!H", pkt, 4, len(pkt) - 40)
        frags.append(bytes(pkt))
    (out,) = [p for _, p in reassemble(timed(frags))]
    assert out == whole  # the Destination Options header points at UDP again, payload length fixed


def _fragmented_hello_capture(tmp: Path) -> tuple[bytes, bytes]:
    """A real ClientHello for twitter.com on one TCP connection, recorded once whole and once with its
    segment cut into IP fragments (as `redweb probe --strategy ip-fragment` sends it)."""
    conv = TcpConversation(C, S, 40000, 443, ts=1.0)
    conv.handshake()
    at = len(conv.packets)
    conv.client_send(client_hello("twitter.com"))
    conv.server_send(bytes(3000))
    packets = list(conv.packets)
    ts, segment = packets[at]
    pieces = [(ts, bytes(f)) for f in fragment(IP(segment), fragsize=64)]
    captures = []
    for pkts in (packets, packets[:at] + pieces + packets[at + 1:]):
        buf = io.BytesIO()
        with PcapWriter(buf) as w:
            for t, p in pkts:
                w.write(p, t)
        captures.append(buf.getvalue())
    return captures[0], captures[1]


def test_classify_reassembles_for_profiles_that_reassemble_and_not_for_T22_5(tmp_path: Path) -> None:
    whole, fragmented = _fragmented_hello_capture(tmp_path)
    gfw, tspu = load_profile("gfw"), load_profile("tspu-2022")
    assert tspu.flows.fragments == "forward" and gfw.flows.fragments == "reassemble"
    for capture in (whole, fragmented):  # G-1: the GFW reads the SNI either way
        (rec,) = classify_bytes(capture, gfw, seed=1)
        assert rec.rule == "sni-reset" and rec.action == "rst", rec
    (rec,) = classify_bytes(whole, tspu, seed=1)
    assert rec.rule == "sni-block", rec  # T22-2: control, the whole ClientHello is blocked
    (rec,) = classify_bytes(fragmented, tspu, seed=1)
    assert rec.rule is None, rec  # T22-5: fragments pass uninspected
    # The reassembled capture is the whole one, packet for packet.
    assert [p for _, p in iter_packets(reassemble_capture(fragmented))] == [p for _, p in iter_packets(whole)]
