"""The compiled core: header parsing, flow table bounds, first-flight reassembly, per-flow actions.

A small recording policy stands in for the engine so each mechanism is tested on its own; the engine's own
tests drive the same core with real profiles.
"""
from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings, strategies as st

from dpi import _core
from dpi.forge import TCP_ACK, TCP_PSH, TCP_RST, TCP_SYN, tcp_packet, udp_packet
from dpi.traffic import TcpConversation, client_hello

C, S = "10.0.0.2", "192.0.2.10"


class Recorder:
    """Policy that records what the core shows it and answers with a scripted decision."""

    def __init__(self, answer=None):
        self.calls: list[dict] = []
        self.answer = answer

    def inspect(self, ctx):
        """Scripted answers apply to payload events only; new-flow events are just recorded."""
        self.calls.append({"event": ctx.event, "data": ctx.data, "from_client": ctx.from_client,
                           "first": ctx.first, "direction": ctx.direction, "flow": ctx.flow_id,
                           "client_port": ctx.client_port, "server_port": ctx.server_port})
        if self.answer and ctx.event == 0:
            self.answer(ctx)


def payload_calls(rec: Recorder) -> list[dict]:
    return [c for c in rec.calls if c["event"] == 0]


def test_parse_ipv4_and_ipv6_tcp_udp():
    p = _core.parse_packet(tcp_packet(C, S, 1234, 443, 7, 9, TCP_ACK, payload=b"abc"))
    assert (p["version"], p["proto"], p["sport"], p["dport"], p["seq"], p["ack"]) == (4, 6, 1234, 443, 7, 9)
    assert p["payload_len"] == 3 and p["tcp_header_len"] == 20
    assert socket.inet_ntop(socket.AF_INET, p["src"]) == C
    p6 = _core.parse_packet(udp_packet("fd00::1", "fd00::2", 5353, 53, b"x" * 10))
    assert (p6["version"], p6["proto"], p6["dport"], p6["payload_len"]) == (6, 17, 53, 10)


def test_ipv6_extension_headers_are_walked():
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
    raw = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
                / TCP(sport=1, dport=443, flags="PA") / b"hello")
    p = _core.parse_packet(raw)
    assert p["proto"] == 6 and p["dport"] == 443 and p["payload_len"] == 5


def test_fragments_are_flagged_not_parsed():
    from scapy.layers.inet import IP, TCP, fragment
    frags = fragment(IP(src=C, dst=S) / TCP(sport=1, dport=443) / (b"A" * 3000), fragsize=1000)
    first, later = bytes(frags[0]), bytes(frags[1])
    assert _core.parse_packet(first)["fragment"] is True
    assert _core.parse_packet(later) == {"fragment": True}


def test_ipv4_options_are_skipped():
    from scapy.layers.inet import IP, IPOption_RR, TCP
    raw = bytes(IP(src=C, dst=S, options=[IPOption_RR()]) / TCP(sport=5, dport=80) / b"GET /")
    p = _core.parse_packet(raw)
    assert p["dport"] == 80 and p["payload_len"] == 5


def test_first_data_packet_reaches_policy_once_per_flow_with_direction():
    rec = Recorder(lambda ctx: setattr(ctx, "result", _core.RESULT_RELEASE))
    core = _core.Core(rec, reassembly=False)
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(b"hello").server_send(b"x" * 5000)
    for ts, pkt in conv.packets:
        core.process(pkt, ts)
    calls = payload_calls(rec)
    assert len(calls) == 1 and calls[0]["data"] == b"hello" and calls[0]["from_client"] == 1
    assert calls[0]["client_port"] == 40000 and calls[0]["server_port"] == 443
    # released flows are offloaded to the kernel: the mark says accept
    assert core.process(conv.packets[-1][1], 10.0) >> 1 == 1


def test_no_syn_seen_means_never_censored_when_required():
    rec = Recorder()
    core = _core.Core(rec, require_syn=True)
    core.process(tcp_packet(C, S, 40000, 443, 1, 1, TCP_ACK | TCP_PSH, payload=b"data"), 0.0)
    assert payload_calls(rec) == []
    core2 = _core.Core(rec, require_syn=False, reassembly=False)
    core2.process(tcp_packet(C, S, 40000, 443, 1, 1, TCP_ACK | TCP_PSH, payload=b"data"), 0.0)
    assert payload_calls(rec)[-1]["data"] == b"data"


def reassembled(segments: list[tuple[int, bytes]], **kw) -> list[bytes]:
    """Feed client segments (relative seq, payload) after a handshake; return what the policy saw."""
    rec = Recorder()
    core = _core.Core(rec, reassembly=True, **kw)
    core.process(tcp_packet(C, S, 40000, 443, 999, 0, TCP_SYN), 0.0)
    core.process(tcp_packet(S, C, 443, 40000, 5000, 1000, TCP_SYN | TCP_ACK), 0.001)
    for i, (rel, data) in enumerate(segments):
        core.process(tcp_packet(C, S, 40000, 443, 1000 + rel, 5001, TCP_ACK | TCP_PSH, payload=data), 0.01 + i * 0.001)
    return [c["data"] for c in payload_calls(rec)]


def test_reassembly_in_order_grows_the_first_flight():
    assert reassembled([(0, b"abc"), (3, b"def")]) == [b"abc", b"abcdef"]


def test_reassembly_out_of_order_waits_for_the_hole():
    assert reassembled([(3, b"def"), (0, b"abc")]) == [b"abcdef"]


def test_reassembly_overlap_first_received_byte_wins():
    # the second segment rewrites bytes 2..5: the censor keeps what it saw first (deterministic)
    assert reassembled([(0, b"abcd"), (2, b"XXYY")]) == [b"abcd", b"abcdYY"]


def test_reassembly_budget_releases_the_flow():
    seen = reassembled([(0, b"a" * 100), (100, b"b" * 100), (200, b"c" * 100)], budget=150)
    assert seen == [b"a" * 100, b"a" * 100 + b"b" * 50]


def test_window_counts_inspected_packets_then_releases():
    rec = Recorder()
    core = _core.Core(rec, reassembly=False, window=3)
    conv = TcpConversation(C, S, 40000, 443).handshake()
    for i in range(6):
        conv.client_send(b"p%d" % i)
    for ts, pkt in conv.packets:
        core.process(pkt, ts)
    assert [c["data"] for c in payload_calls(rec)] == [b"p0", b"p1", b"p2"]


def test_tcp_header_exact_skips_segments_with_options():
    from scapy.layers.inet import IP, TCP
    rec = Recorder()
    core = _core.Core(rec, reassembly=False, tcp_header_exact=20, require_syn=False)
    with_ts = bytes(IP(src=C, dst=S) / TCP(sport=40000, dport=443, flags="PA", options=[("Timestamp", (1, 0))]) / b"x")
    core.process(with_ts, 0.0)
    assert payload_calls(rec) == []
    core.process(tcp_packet(C, S, 40000, 443, 1, 1, TCP_ACK | TCP_PSH, payload=b"y"), 0.1)
    assert [c["data"] for c in payload_calls(rec)] == [b"y"]


def test_inside_networks_give_flow_direction():
    rec = Recorder()
    inside = [(4, socket.inet_aton("10.0.0.0"), 8)]
    core = _core.Core(rec, inside=inside, triggers_both=True)
    core.process(tcp_packet(C, S, 40000, 443, 1, 0, TCP_SYN), 0.0)            # outbound
    core.process(tcp_packet(S, C, 40001, 443, 1, 0, TCP_SYN), 0.0)            # inbound
    core.process(tcp_packet(C, "10.1.1.1", 40002, 443, 1, 0, TCP_SYN), 0.0)   # domestic
    assert [c["direction"] for c in rec.calls] == [_core.DIR_OUTBOUND, _core.DIR_INBOUND, _core.DIR_DOMESTIC]


def _decide(state, **attrs):
    def answer(ctx):
        if ctx.event == 0:
            ctx.result, ctx.state = _core.RESULT_DECIDE, state
            for k, v in attrs.items():
                setattr(ctx, k, v)
    return answer


def test_policer_drops_over_the_bucket_and_refills_with_time():
    """T21-4: a token bucket per direction; packets over it are dropped, never delayed."""
    core = _core.Core(Recorder(_decide(_core.STATE_THROTTLE, rate=10_000.0, burst=3000.0)), reassembly=False)
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(b"hello")
    for ts, pkt in conv.packets:
        core.process(pkt, ts)
    big = tcp_packet(S, C, 443, 40000, 1, 1, TCP_ACK, payload=b"z" * 960)  # 1000 bytes on the wire
    verdicts = [core.process(big, 1.0) & 1 for _ in range(5)]
    assert verdicts == [0, 0, 0, 1, 1]          # 3000-byte bucket: three pass, the rest drop
    assert core.process(big, 1.1) & 1 == 0      # 0.1 s * 10 kB/s = 1000 bytes refilled
    assert core.process(big, 1.1) & 1 == 1
    # the other direction has its own bucket
    up = tcp_packet(C, S, 40000, 443, 1, 1, TCP_ACK, payload=b"u" * 960)
    assert core.process(up, 1.1) & 1 == 0


def test_freeze_after_n_server_bytes():
    """T25-1: silent drop once ~16 KB of server-to-client data passed."""
    core = _core.Core(Recorder(_decide(_core.STATE_FREEZE, freeze_after=4000)), reassembly=False)
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(b"hello").server_send(b"d" * 1000 * 6, segment=1000)
    verdicts = [core.process(pkt, ts) & 1 for ts, pkt in conv.packets]
    assert verdicts[-6:] == [0, 0, 0, 0, 1, 1]


def test_blackhole_offloads_drop_mark():
    core = _core.Core(Recorder(_decide(_core.STATE_DROP, verdict=1)), reassembly=False)
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(b"hello").server_send(b"x")
    codes = [core.process(pkt, ts) for ts, pkt in conv.packets]
    assert codes[3] == 1                      # the trigger, dropped by the policy's verdict
    assert codes[4] == 1 | (2 << 1)           # later packets: drop + MARK_DROP for the kernel fast path


def test_server_syn_unblocks_split_handshake():
    """T22-1: a SYN from the server side un-blocks the connection."""
    core = _core.Core(Recorder(_decide(_core.STATE_DROP, verdict=1)), reassembly=False, server_syn_unblocks=True)
    core.process(tcp_packet(C, S, 40000, 443, 1, 0, TCP_SYN), 0.0)
    core.process(tcp_packet(C, S, 40000, 443, 2, 0, TCP_ACK | TCP_PSH, payload=b"x"), 0.1)
    assert core.process(tcp_packet(S, C, 443, 40000, 9, 0, TCP_SYN), 0.2) & 1 == 0
    assert core.process(tcp_packet(C, S, 40000, 443, 3, 0, TCP_ACK, payload=b"y"), 0.3) & 1 == 0


def test_lru_eviction_keeps_memory_bounded():
    core = _core.Core(Recorder(), max_flows=100)
    for i in range(1000):
        core.process(tcp_packet(C, S, 10000 + i, 443, 1, 0, TCP_SYN), i * 0.001)
    assert core.active_flows == 100 and core.n_evicted == 900 and core.n_flows == 1000
    mem = core.memory_bytes()
    for i in range(1000, 5000):
        core.process(tcp_packet(C, S, 10000 + i, 443, 1, 0, TCP_SYN), i * 0.001)
    assert core.memory_bytes() == mem


def test_idle_timeout_forgets_flow():
    rec = Recorder(lambda ctx: setattr(ctx, "result", _core.RESULT_RELEASE))
    core = _core.Core(rec, tcp_idle=10.0, reassembly=False)
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(b"one")
    for ts, pkt in conv.packets:
        core.process(pkt, ts)
    core.process(tcp_packet(C, S, 40000, 443, 1, 0, TCP_SYN), 100.0)
    assert core.n_expired == 1


def test_stray_rst_creates_no_state():
    core = _core.Core(Recorder())
    core.process(tcp_packet(C, S, 40000, 443, 1, 0, TCP_RST), 0.0)
    assert core.active_flows == 0


def test_real_clienthello_reaches_policy_whole_with_reassembly():
    rec = Recorder()
    core = _core.Core(rec, reassembly=True)
    hello = client_hello("example.org")
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(hello, segment=100)
    for ts, pkt in conv.packets:
        core.process(pkt, ts)
    assert payload_calls(rec)[-1]["data"] == hello


def test_pcap_replay_matches_per_packet_processing(tmp_path):
    from dpi.pcap import PcapWriter, read_header
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(client_hello("a.test")).server_send(b"x" * 9000)
    path = tmp_path / "c.pcap"
    with PcapWriter(path) as w:
        for ts, pkt in conv.packets:
            w.write(pkt, ts)
    data = path.read_bytes()
    hdr = read_header(data)
    a, b = Recorder(), Recorder()
    count, _ = _core.Core(a).process_pcap(data, hdr.linktype, hdr.offset, hdr.nanosecond, hdr.swapped)
    core = _core.Core(b)
    for ts, pkt in conv.packets:
        core.process(pkt, ts)
    assert count == len(conv.packets)
    assert [c["data"] for c in a.calls] == [c["data"] for c in b.calls]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_fuzz_any_bytes_never_crash_and_memory_stays_bounded(packets):
    core = _core.Core(Recorder(), max_flows=8, budget=64)
    for i, p in enumerate(packets):
        assert core.process(p, float(i)) in range(8)
    assert core.active_flows <= 8


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=40, max_size=120), st.integers(0, 119), st.integers(0, 255))
def test_fuzz_mutated_real_packets(extra, pos, val):
    base = bytearray(tcp_packet(C, S, 40000, 443, 1, 0, TCP_ACK | TCP_PSH, payload=extra))
    base[pos % len(base)] = val
    core = _core.Core(Recorder(), require_syn=False, reassembly=True, budget=256)
    core.process(bytes(base), 0.0)
    core.process(bytes(base), 0.1)


def test_empty_and_short_packets_are_counted_unparsed_and_pass():
    rec = Recorder()
    core = _core.Core(rec)
    for pkt in (b"", b"\x45", b"\x60" + bytes(10)):
        assert core.process(pkt, 0.0) == 0
    assert (core.n_packets, core.n_unparsed, rec.calls) == (3, 3, [])


def test_pcap_truncated_and_garbage_is_safe():
    core = _core.Core(Recorder())
    assert core.process_pcap(b"\x00" * 7, 101, 24, False, False) == (0, 0)
    rec = b"\x00" * 8 + (1000).to_bytes(4, "little") * 2 + b"abc"
    assert core.process_pcap(b"\x00" * 24 + rec, 1, 24, False, False) == (0, 0)


@pytest.mark.parametrize("link", ["ethernet", "vlan", "sll", "sll2", "raw"])
def test_pcap_link_types_reach_the_same_ip_packets(tmp_path, link):
    """pcap files as tcpdump writes them: Ethernet (with VLAN tags), Linux cooked v1/v2, raw IP."""
    from scapy.layers.l2 import CookedLinux, Dot1Q, Ether
    from scapy.utils import PcapWriter as ScapyWriter
    from dpi.pcap import iter_packets
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(client_hello("a.test"))
    path = tmp_path / f"{link}.pcap"
    linktype = {"ethernet": 1, "vlan": 1, "sll": 113, "sll2": 276, "raw": 101}[link]
    w = ScapyWriter(str(path), linktype=linktype, sync=True)
    for ts, pkt in conv.packets:
        if link == "ethernet":
            frame = bytes(Ether(type=0x0800)) + pkt
        elif link == "vlan":
            frame = bytes(Ether(type=0x8100) / Dot1Q(vlan=7, type=0x0800)) + pkt
        elif link == "sll":
            frame = bytes(CookedLinux(proto=0x0800)) + pkt
        elif link == "sll2":
            frame = (0x0800).to_bytes(2, "big") + b"\x00" * 18 + pkt
        else:
            frame = pkt
        w.write(frame)
    w.close()
    assert [p for _, p in iter_packets(path.read_bytes())] == [p for _, p in conv.packets]


def test_fragment_count_limit_drops_past_the_limit_per_ip_packet():
    """T22-5: packets of more than N fragments are dropped; other packets' fragments are unaffected."""
    from scapy.layers.inet import IP, TCP, fragment
    core = _core.Core(Recorder(), max_fragments=3)
    big = [bytes(f) for f in fragment(IP(src=C, dst=S, id=7) / TCP(sport=1, dport=443) / (b"A" * 2000), fragsize=400)]
    small = [bytes(f) for f in fragment(IP(src=C, dst=S, id=8) / TCP(sport=1, dport=443) / (b"B" * 600), fragsize=400)]
    assert len(big) == 6 and len(small) == 2
    assert [core.process(f, 0.0) & 1 for f in big] == [0, 0, 0, 1, 1, 1]
    assert [core.process(f, 0.0) & 1 for f in small] == [0, 0]
    assert core.n_fragments == 8


def test_first_flight_memory_is_bounded_under_a_flood_of_half_sent_requests():
    """All reassembly buffers together stay under max_buffer_bytes; flows past it are released uninspected."""
    rec = Recorder()
    core = _core.Core(rec, max_flows=10_000, budget=1024, max_buffer_bytes=100 * 2048)
    base = core.memory_bytes()
    for i in range(1000):
        conv = TcpConversation(C, S, 10000 + i, 443).handshake().client_send(b"\x16\x03\x01\x02\x00" + b"x" * 10)
        for ts, pkt in conv.packets:
            core.process(pkt, ts)
    assert core.memory_bytes() - base == 100 * 2048  # exactly the bound: 100 flows hold a 1 KB buffer + fill map
    assert core.n_buffer_full == 900
    assert core.active_flows == 1000  # the others are tracked, released: never buffered
