"""The censor catalogue, proved offline: every bundled profile (rules/*.yaml) against the behaviours it claims.

Each behaviour ID a profile `implements` has a test named after it (test_T22_4_..., test_GQ_2_...), and every
"must evade" / "must NOT evade" line of T21-E, T22-E, G-E, GQ-E and H-E is a test against its profile. First
flights come from real stacks (OpenSSL via Python ssl, curl, aioquic, dnslib, a Shadowsocks-AEAD packet sealed by
`cryptography`); evasions re-shape those bytes as the tools do (tests/catalogue/tls.py); scapy builds only the
crafted cases (TCP options, IP fragments) and the expected injector packets. Profiles are loaded from the YAML
files themselves; timers are scaled down with `dataclasses.replace` and checked on both sides of the edge, with
synthetic timestamps only.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from pathlib import Path

import dnslib
import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.packet import Raw

from dpi.config import INJECTOR_PRESETS, Profile
from dpi.decision import ACCEPT, DROP, MARK_DROP
from dpi.forge import TCP_ACK, TCP_FIN, TCP_RST, tcp_packet, udp_packet
from dpi.profile import BEHAVIOUR_IDS, RULES_DIR, bundled_profiles, check_profile, load_profile
from dpi.traffic import TcpConversation
from tests.catalogue.fet import EXEMPT_RECIPES, blockable_first_packet, exempt_payload, exemptions
from tests.catalogue.replay import (Outcome, bundled, censor, replay, scaled, small_window_handshake,
                                    split_handshake, tcp_flow)
from tests.catalogue.tls import EXT_ECH, ccs_record, insert_extension, pad_client_hello, tls12_first_flights, with_esni
from tests.realstack import (aioquic_client_hello, aioquic_initial_datagram, curl_client_hello, curl_http_request,
                             dnslib_query, python_ssl_client_hello)
from tests.realstack.craft import split_tls_records
from tests.realstack.quic import DRAFT_29, PING, V2, aioquic_initial_datagrams, crypto_frame, protect_initial

# Addresses. Inside = the censored network. Servers sit in the documentation ranges the example IP lists use.
C = "10.1.0.2"                 # a client inside
INSIDE = ("10.1.0.0/16",)
OUTSIDE_CLIENT = "192.0.2.99"  # a client outside, for inbound connections
INSIDE_SERVER = "10.1.0.80"
S = "192.0.2.10"               # a foreign server on no IP list
S_REGISTRY = "203.0.113.7"     # rules/lists/tspu-2022-ip.txt (T22-3)
S_HOSTING = "198.51.100.20"    # rules/lists/tspu-2025-hosting.txt (T25-1) and gfw-fet-servers.txt (GF-2)
RESOLVER = "192.0.2.53"

OWNED = ["tspu-2022", "tspu-2025", "gfw-esni", "gfw-fet", "gfw-quic", "gfw-dns", "henan", "redweb"]


def hello(name: str) -> bytes:
    """A real OpenSSL ClientHello (Python ssl) for `name`."""
    return python_ssl_client_hello(name)


def quic(name: str) -> bytes:
    """The first datagram of a real aioquic client (v1, 1200 bytes) for `name`."""
    return aioquic_initial_datagram(name)


def http_request(name: str) -> bytes:
    """The request curl sends for http://NAME/ (its own headers, Host: NAME)."""
    return curl_http_request(name, headers=(f"Host: {name}",))


def later_datagram() -> bytes:
    """A short-header QUIC datagram, as a client sends after the handshake."""
    return b"\x40" + bytes(range(60))


def blackholed_after(out: Outcome, trigger: int) -> bool:
    """The packet `trigger` passed and every later one was dropped (silently: nothing injected)."""
    return (out.decisions[trigger].verdict == ACCEPT and out.dropped() == list(range(trigger + 1, len(out.packets)))
            and not out.injected)


# ================================================================================================================
# The catalogue as a whole


@pytest.mark.parametrize("name", [n for n, _, _ in bundled_profiles()])
def test_every_bundled_profile_checks_clean(name: str) -> None:
    assert check_profile(RULES_DIR / f"{name}.yaml") == []


@pytest.mark.parametrize("name", [n for n, _, _ in bundled_profiles()])
def test_rule_implements_are_within_the_profile_implements(name: str) -> None:
    profile = load_profile(name)
    assert profile.implements, "a bundled profile names the behaviours it implements"
    for rule in profile.rules:
        assert set(rule.implements) <= set(profile.implements), rule.name


@pytest.mark.parametrize("name", OWNED)
def test_owned_profiles_document_what_they_model(name: str) -> None:
    profile = load_profile(name)
    text = (RULES_DIR / f"{name}.yaml").read_text()
    header = text.split("\nname:", 1)[0]
    assert header.startswith("# ") and "Sources:" in header and "evade" in header.lower()
    assert profile.summary and profile.year and profile.sources and profile.evasions
    for rule in profile.rules:
        assert rule.implements, f"{name}: rule {rule.name} cites no behaviour ID"


def test_every_implemented_id_has_a_test_named_after_it() -> None:
    tests = [n for n in globals() if n.startswith("test_")]
    missing = []
    for name, _, _ in bundled_profiles():
        for bid in load_profile(name).implements:
            token = bid.replace("-", "_")
            if not any(re.search(rf"(^|_){token}(_|$)", t) for t in tests):
                missing.append(f"{name}:{bid}")
    assert not missing
    assert {b for n, _, _ in bundled_profiles() for b in load_profile(n).implements} <= BEHAVIOUR_IDS


def test_example_server_addresses_are_where_the_lists_say() -> None:
    """The addresses these tests use must stay in (or out of) the example IP lists."""
    def nets(profile: str, lst: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        spec = bundled(profile).lists[lst]
        return [ipaddress.ip_network(line.split("#")[0].strip()) for f in spec.files
                for line in f.read_text().splitlines() if line.split("#")[0].strip()]

    def inside(addr: str, networks: list) -> bool:
        return any(ipaddress.ip_address(addr) in n for n in networks)

    assert inside(S_REGISTRY, nets("tspu-2022", "registry-ip")) and not inside(S, nets("tspu-2022", "registry-ip"))
    hosting = nets("tspu-2025", "hosting-networks")
    assert inside(S_HOSTING, hosting) and not inside(S, hosting)
    assert inside(S_HOSTING, nets("gfw-fet", "fet-servers")) and not inside(S, nets("gfw-fet", "fet-servers"))


# ================================================================================================================
# TSPU-2021 (T21-*): the throttling rule also lives on in redweb (T21-1, T21-4, T21-5, T21-6)

THROTTLERS = ["tspu-2021", "redweb"]


def throttled(out: Outcome) -> bool:
    return any(action == "throttle" for _, action in out.fired)


@pytest.mark.parametrize("profile", THROTTLERS)
@pytest.mark.parametrize("name, expected", [
    ("twitter.com", True), ("www.twitter.com", True), ("nottwitter.com", True),  # raw suffix `twitter.com`
    ("abs.twimg.com", True), ("twimg.com", False),                              # raw suffix `.twimg.com`
    ("t.co", True), ("reddit.com", True), ("microsoft.com", True),              # substring `t.co`: collateral
    ("example.org", False), ("wikipedia.org", False),
])
def test_T21_1_sni_patterns_of_march_2021(profile: str, name: str, expected: bool) -> None:
    out = replay(censor(profile), tcp_flow(C, S, hello(name)).conv.packets)
    assert throttled(out) == expected


@pytest.mark.parametrize("profile", THROTTLERS)
def test_T21_1_server_certificate_never_triggers(profile: str) -> None:
    client_hello, server_flight = tls12_first_flights("example.org", "twitter.com")
    assert b"twitter.com" in server_flight  # the fixture: TLS 1.2 shows the certificate in the clear
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(client_hello).server_send(server_flight)
    out = replay(censor(profile), conv.server_send(bytes(8000)).packets)
    assert out.all_passed


def test_T21_2_clienthello_must_sit_whole_in_the_first_packet() -> None:
    ch = hello("twitter.com")
    whole = replay(censor("tspu-2021"), tcp_flow(C, S, ch).conv.packets)
    with_data = replay(censor("tspu-2021"), tcp_flow(C, S, ch + b"\x17\x03\x03\x00\x05hello").conv.packets)
    split = replay(censor("tspu-2021"), tcp_flow(C, S, ch, segment=len(ch) // 2).conv.packets)
    records = replay(censor("tspu-2021"), tcp_flow(C, S, split_tls_records(ch, [100])).conv.packets)
    assert throttled(whole) and throttled(with_data)  # record length < TCP payload: fine
    assert not throttled(split) and not throttled(records)  # no TCP and no TLS-record reassembly


@pytest.mark.parametrize("size, expected", [(100, True), (101, False)])
def test_T21_3_unparsable_first_packet_of_101_bytes_releases(size: int, expected: bool) -> None:
    out = replay(censor("tspu-2021"), tcp_flow(C, S, [bytes(size), hello("twitter.com")]).conv.packets)
    assert throttled(out) == expected


@pytest.mark.parametrize("first", ["fake-clienthello", "ccs-record", "http-connect", "socks5"])
def test_T21_3_other_first_packets_keep_the_flow_under_inspection(first: str) -> None:
    payload = {
        "fake-clienthello": hello("example.org"),
        "ccs-record": ccs_record(),
        "http-connect": b"CONNECT twitter.com:443 HTTP/1.1\r\nHost: twitter.com:443\r\n\r\n",
        "socks5": b"\x05\x01\x00",
    }[first]
    out = replay(censor("tspu-2021"), tcp_flow(C, S, [payload, hello("twitter.com")]).conv.packets)
    assert throttled(out)


@pytest.mark.parametrize("junk, expected", [(16, True), (17, False)])
def test_T21_3_inspection_window_of_17_packets_both_edges(junk: int, expected: bool) -> None:
    """[uncertain: 15-20 more packets; the profile says window: 17]: the 17th data packet is still read."""
    assert bundled("tspu-2021").tcp.window == 17
    out = replay(censor("tspu-2021"), tcp_flow(C, S, [bytes(20)] * junk + [hello("twitter.com")]).conv.packets)
    assert throttled(out) == expected


def _policed_transfer(profile: str, total: int, rate_bps: float) -> tuple[Outcome, int, float]:
    """A throttled connection, then `total` bytes from the server at `rate_bps`, then the same from the client.
    Returns (outcome, index of the first bulk packet, duration of the server burst)."""
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(hello("twitter.com"))
    start = len(conv.packets)
    conv.step = 1448 * 8 / rate_bps
    t0 = conv.ts
    conv.server_send(bytes(total))
    duration = conv.ts - conv.step - t0
    conv.client_send(bytes(total))
    return replay(censor(profile), conv.packets), start, duration


@pytest.mark.parametrize("profile", THROTTLERS)
def test_T21_4_policing_per_direction_at_140_kbps(profile: str) -> None:
    action = next(r.action for r in bundled(profile).rules if r.action.type == "throttle")
    assert 130_000 <= action.rate_bps <= 150_000 and action.burst_bytes == 16384  # [uncertain: 130-150 kbit/s]
    out, start, duration = _policed_transfer(profile, 1448 * 600, 1_000_000)
    server = [(p, d) for p, d in zip(out.packets[start:], out.decisions[start:]) if IP(p).src == S]
    client = [(p, d) for p, d in zip(out.packets[start:], out.decisions[start:]) if IP(p).src == C]
    passed = sum(len(p) for p, d in server if d.verdict == ACCEPT)
    budget = action.burst_bytes + action.rate_bps / 8 * duration
    assert budget - 1500 <= passed <= budget  # a token bucket: burst + rate x time, to within one packet
    assert any(d.verdict == DROP for _, d in server)  # policing drops, it never queues
    # the client's bucket is its own: its first 16 KB pass although the server's bucket is empty
    first_client = [d.verdict for _, d in client[: action.burst_bytes // 1488]]
    assert first_client and all(v == ACCEPT for v in first_client)
    assert all(d.mark == 0 for d in out.decisions[start:])  # policed flows stay in user space


@pytest.mark.parametrize("profile", THROTTLERS)
def test_T21_5_only_outbound_connections_but_either_direction_triggers(profile: str) -> None:
    outbound = replay(censor(profile, inside=INSIDE), tcp_flow(C, S, hello("twitter.com")).conv.packets)
    inbound = replay(censor(profile, inside=INSIDE),
                     tcp_flow(OUTSIDE_CLIENT, INSIDE_SERVER, hello("twitter.com")).conv.packets)
    server_side = TcpConversation(C, S, 40001, 443).handshake().server_send(hello("twitter.com"))
    from_server = replay(censor(profile, inside=INSIDE), server_side.server_send(bytes(4000)).packets)
    assert throttled(outbound) and not throttled(inbound) and throttled(from_server)


@pytest.mark.parametrize("profile", THROTTLERS)
@pytest.mark.parametrize("gap, still_throttled", [(5.9, True), (6.1, False)])
def test_T21_6_released_after_idle_timeout_both_edges(profile: str, gap: float, still_throttled: bool) -> None:
    """~10 min idle releases the flow (scaled to 6 s); the state is kept for hours while the flow is active."""
    assert bundled(profile).flows.idle_timeout == 600
    c = censor(scaled(bundled(profile), idle=6.0))
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(hello("twitter.com"))
    replay(c, conv.packets)
    conv.packets.clear()
    conv.ts += gap
    conv.step = 0.0001  # then 64 KB at once: far over the bucket
    out = replay(c, conv.server_send(bytes(1448 * 45)).packets)
    assert bool(out.dropped()) == still_throttled


@pytest.mark.parametrize("profile", THROTTLERS)
def test_T21_6_fin_and_rst_do_not_clear_the_state(profile: str) -> None:
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(hello("twitter.com"))
    conv.packets.append((conv.ts, tcp_packet(C, S, 40000, 443, conv.cseq, conv.sseq, TCP_FIN | TCP_ACK)))
    conv.packets.append((conv.ts, tcp_packet(C, S, 40000, 443, conv.cseq + 1, 0, TCP_RST)))
    start = len(conv.packets)
    conv.step = 0.0001
    out = replay(censor(profile), conv.server_send(bytes(1448 * 45)).packets)
    assert out.dropped(start)


@pytest.mark.parametrize("evasion", ["split-two-segments", "padded-past-one-packet", "random-101-bytes-first",
                                     "ccs-before-clienthello", "trailing-dot"])
def test_T21_E_must_evade(evasion: str) -> None:
    ch = hello("twitter.com")
    first = {
        "split-two-segments": [ch[:len(ch) // 2], ch[len(ch) // 2:]],
        "padded-past-one-packet": [pad_client_hello(ch, 2000)],
        "random-101-bytes-first": [bytes(range(101)), ch],
        "ccs-before-clienthello": [ccs_record() + ch],
        "trailing-dot": [hello("twitter.com.")],
    }[evasion]
    control = replay(censor("tspu-2021"), tcp_flow(C, S, ch).conv.packets)
    out = replay(censor("tspu-2021"), tcp_flow(C, S, first).conv.packets)
    assert throttled(control) and not throttled(out)


@pytest.mark.parametrize("gap, evades", [(599.0, False), (601.0, True)])
def test_T21_E_must_evade_waiting_out_the_idle_timeout(gap: float, evades: bool) -> None:
    c = censor("tspu-2021")
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(hello("twitter.com"))
    replay(c, conv.packets)
    conv.packets.clear()
    conv.ts += gap
    conv.step = 0.0001
    assert bool(replay(c, conv.server_send(bytes(1448 * 45)).packets).dropped()) != evades


def test_T21_E_must_not_evade_a_single_fake_clienthello() -> None:
    out = replay(censor("tspu-2021"), tcp_flow(C, S, [hello("example.org"), hello("twitter.com")]).conv.packets)
    assert throttled(out)


def test_T21_E_must_not_evade_injected_rst_or_fin() -> None:
    c = censor("tspu-2021")
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(hello("twitter.com"))
    # a third party (or the client's evasion tool) injects a RST and a FIN with the server's address
    conv.packets.append((conv.ts, tcp_packet(S, C, 443, 40000, conv.sseq, conv.cseq, TCP_RST | TCP_ACK)))
    conv.packets.append((conv.ts, tcp_packet(S, C, 443, 40000, conv.sseq, conv.cseq, TCP_FIN | TCP_ACK)))
    start = len(conv.packets)
    conv.step = 0.0001
    out = replay(c, conv.server_send(bytes(1448 * 45)).packets)
    assert throttled(out) and out.dropped(start)


# ================================================================================================================
# TSPU-2022 (T22-*), also inside tspu-2025 through `include:`

T22 = ["tspu-2022", "tspu-2025"]
ALLOWED_T22 = "wikipedia.org"  # on no T22 list, and not on tspu-2025's freeze allow-list either


def t22_blocked(profile: str, first_flight: bytes | list[bytes], **kw) -> bool:
    flow = tcp_flow(C, S, first_flight, **kw)
    out = replay(censor(profile, inside=INSIDE), flow.conv.packets)
    return bool(out.dropped(flow.marks["after"]))


@pytest.mark.parametrize("profile", T22)
def test_T22_1_only_outbound_connections_are_censored(profile: str) -> None:
    outbound = replay(censor(profile, inside=INSIDE), tcp_flow(C, S, hello("twitter.com")).conv.packets)
    inbound = replay(censor(profile, inside=INSIDE),
                     tcp_flow(OUTSIDE_CLIENT, INSIDE_SERVER, hello("twitter.com")).conv.packets)
    assert outbound.dropped() and inbound.all_passed


@pytest.mark.parametrize("profile", T22)
def test_T22_1_sequence_starting_from_the_remote_side_never_blocks(profile: str) -> None:
    """The censor first sees the server's SYN/ACK (the client's SYN went another way): never censored."""
    packets = tcp_flow(C, S, hello("twitter.com")).conv.packets[1:]
    assert replay(censor(profile, inside=INSIDE), packets).all_passed


@pytest.mark.parametrize("profile", T22)
def test_T22_1_server_syn_split_handshake_unblocks(profile: str) -> None:
    conv = split_handshake(C, S, 40000, 443).client_send(hello("twitter.com")).server_send(bytes(4000))
    conv.client_send(bytes(100))
    assert replay(censor(profile, inside=INSIDE), conv.packets).all_passed
    assert t22_blocked(profile, hello("twitter.com"))  # the same without the split handshake


@pytest.mark.parametrize("profile", T22)
def test_T22_2_registry_sni_drops_the_rest_of_the_flow_silently(profile: str) -> None:
    flow = tcp_flow(C, S, hello("twitter.com"))
    out = replay(censor(profile, inside=INSIDE), flow.conv.packets)
    assert blackholed_after(out, flow.marks["data"])
    assert out.fired == [("sni-block", "blackhole")]
    assert out.decisions[-1].mark == MARK_DROP  # decided: the kernel fast path drops the rest
    assert not t22_blocked(profile, hello(ALLOWED_T22))


def test_T22_2_rst_variant_in_the_profile_comment_works(tmp_path: Path) -> None:
    """The commented-out RST variant of T22-2, uncommented, loads and sends one RST/ACK to the client."""
    text = (RULES_DIR / "tspu-2022.yaml").read_text()
    default = "    action:\n      type: blackhole\n      include_trigger: false\n"
    assert text.count(default) == 1 and "    #   action:\n" in text
    variant = text.replace(default, "").replace("    #   ", "    ")
    (tmp_path / "lists").symlink_to(RULES_DIR / "lists")
    (tmp_path / "tspu-2022-rst.yaml").write_text(variant.replace("name: tspu-2022", "name: tspu-2022-rst"))
    profile = load_profile(tmp_path / "tspu-2022-rst.yaml")
    assert next(r for r in profile.rules if r.name == "sni-block").action.type == "rst"
    flow = tcp_flow(C, S, hello("twitter.com"))
    out = replay(censor(profile, inside=INSIDE), flow.conv.packets)
    (rst,) = out.injected
    assert (IP(rst).src, IP(rst).dst, str(IP(rst)[TCP].flags)) == (S, C, "RA")
    assert out.dropped() == list(range(flow.marks["data"], len(out.packets)))  # the trigger is dropped too


@pytest.mark.parametrize("profile", T22)
@pytest.mark.parametrize("server, blocked", [(S_REGISTRY, True), ("2001:db8:bad::7", True), (S, False)])
def test_T22_3_listed_server_addresses_dropped_from_the_syn(profile: str, server: str, blocked: bool) -> None:
    client = "fd00:1::2" if ":" in server else C
    tcp = replay(censor(profile), tcp_flow(client, server, hello(ALLOWED_T22)).conv.packets)
    udp = replay(censor(profile), [(0.0, udp_packet(client, server, 50000, 443, quic("example.org")[:900]))])
    if blocked:
        assert tcp.dropped() == list(range(len(tcp.packets))) and udp.dropped() == [0]
        assert tcp.fired == [("ip-block", "blackhole")]
    else:
        assert tcp.all_passed and udp.all_passed


def _quic_outcome(profile: str, datagrams: list[bytes], sport: int = 50000, dport: int = 443,
                  server: str = S) -> Outcome:
    packets = [(i * 0.01, udp_packet(C, server, sport, dport, d)) for i, d in enumerate(datagrams)]
    return replay(censor(profile), packets)


@pytest.mark.parametrize("profile", T22)
def test_T22_4_quic_v1_large_initial_dropped(profile: str) -> None:
    out = _quic_outcome(profile, [quic("example.org"), later_datagram()])
    assert out.dropped() == [0, 1] and out.fired == [("quic-v1", "blackhole")]


@pytest.mark.parametrize("profile", T22)
def test_T22_4_header_rule_without_decryption(profile: str) -> None:
    """Bytes 1-4 and the size decide: an Initial whose protected payload is garbage is dropped all the same."""
    real = quic("example.org")
    garbage = real[:60] + bytes(len(real) - 60)
    assert _quic_outcome(profile, [garbage]).dropped() == [0]


@pytest.mark.parametrize("profile", T22)
@pytest.mark.parametrize("size, dropped", [(1000, False), (1001, True)])
def test_T22_4_size_threshold_both_edges(profile: str, size: int, dropped: bool) -> None:
    datagram = protect_initial(crypto_frame(0, aioquic_client_hello(ALLOWED_T22)), dcid=bytes(range(8)), pad_to=size)
    assert len(datagram) == size
    assert bool(_quic_outcome(profile, [datagram]).dropped()) == dropped


@pytest.mark.parametrize("profile", T22)
def test_T22_4_only_destination_port_443(profile: str) -> None:
    assert _quic_outcome(profile, [quic("example.org"), later_datagram()], dport=8443).all_passed


@pytest.mark.parametrize("profile", T22)
def test_T22_4_first_datagram_decides_the_flow(profile: str) -> None:
    assert _quic_outcome(profile, [bytes(40), quic("example.org"), later_datagram()]).all_passed


def _fragmented_clienthello_flow(fragsize: int) -> tuple[list[tuple[float, bytes]], int, int]:
    """A flow whose ClientHello segment is sent as IP fragments; returns (packets, first fragment, fragments)."""
    flow = tcp_flow(C, S, pad_client_hello(hello("twitter.com"), 1400))
    packets = list(flow.conv.packets)
    at = flow.marks["data"]
    ts, segment = packets[at]
    pieces = [(ts, bytes(f)) for f in fragment(IP(segment), fragsize=fragsize)]
    return packets[:at] + pieces + packets[at + 1:], at, len(pieces)


@pytest.mark.parametrize("profile", T22)
def test_T22_5_ip_fragments_forwarded_without_inspection(profile: str) -> None:
    packets, at, count = _fragmented_clienthello_flow(512)
    c = censor(profile)
    out = replay(c, packets)
    assert count == 3 and out.all_passed
    assert c.counters_snapshot()["fragments"] >= count


def test_T22_5_more_than_45_fragments_dropped() -> None:
    packets, at, count = _fragmented_clienthello_flow(24)
    assert count > 45
    out = replay(censor("tspu-2022"), packets)
    assert out.dropped()
    # exactly the fragments past the 45th are dropped; the first 45 and the rest of the flow pass
    dropped = [i for i, d in enumerate(out.decisions) if d.verdict]
    assert dropped == list(range(at + 45, at + count))


@pytest.mark.parametrize("profile", T22)
@pytest.mark.parametrize("evasion", ["ip-fragments", "tcp-segments", "tls-padding", "record-before",
                                     "server-window-shrinking", "split-handshake"])
def test_T22_E_must_evade_tcp(profile: str, evasion: str) -> None:
    ch = hello("twitter.com")
    assert t22_blocked(profile, ch)  # control: the plain ClientHello is blocked
    if evasion == "ip-fragments":
        packets, _, _ = _fragmented_clienthello_flow(512)
    elif evasion == "server-window-shrinking":
        conv = small_window_handshake(C, S, 40000, 443, window=64).client_send(ch, segment=64)
        packets = conv.server_send(bytes(4000)).client_send(bytes(100)).packets
    elif evasion == "split-handshake":
        packets = split_handshake(C, S, 40000, 443).client_send(ch).server_send(bytes(4000)).packets
    else:
        first = {"tcp-segments": [ch[:200], ch[200:]], "tls-padding": [pad_client_hello(ch, 2000)],
                 "record-before": [ccs_record() + ch]}[evasion]
        packets = tcp_flow(C, S, first).conv.packets
    assert replay(censor(profile, inside=INSIDE), packets).all_passed


@pytest.mark.parametrize("profile", T22)
@pytest.mark.parametrize("evasion", ["non-quic-first-datagram", "draft-29", "quic-v2"])
def test_T22_E_must_evade_quic(profile: str, evasion: str) -> None:
    datagrams = {
        "non-quic-first-datagram": [bytes(40), quic("example.org")],
        "draft-29": [protect_initial(crypto_frame(0, aioquic_client_hello(ALLOWED_T22)), dcid=bytes(range(8)),
                                     version=DRAFT_29, pad_to=1200)],
        "quic-v2": [aioquic_initial_datagrams("example.org", version=V2)[0]],
    }[evasion]
    assert all(len(d) >= 1001 for d in datagrams[-1:])
    assert _quic_outcome(profile, datagrams + [later_datagram()]).all_passed


# ================================================================================================================
# TSPU-2025 (T25-1)


def _freeze_outcome(profile: Profile | str, name: str, server: str = S_HOSTING,
                    first: bytes | None = None) -> tuple[Outcome, int]:
    flow = tcp_flow(C, server, first if first is not None else hello(name), server_bytes=1448 * 28)
    return replay(censor(profile, inside=INSIDE), flow.conv.packets), flow.marks["after"]


@pytest.mark.parametrize("after_bytes", [16384, 4000])
def test_T25_1_tls_to_hosting_networks_freezes_after_16kb(after_bytes: int) -> None:
    """Frozen once `after_bytes` came from the server: the packet crossing the line passes, nothing after it."""
    profile = bundled("tspu-2025") if after_bytes == 16384 else scaled(bundled("tspu-2025"), after_bytes=after_bytes)
    out, after = _freeze_outcome(profile, "wikipedia.org")
    passed = out.passed_payload(S_HOSTING, after)
    assert after_bytes <= passed < after_bytes + 1448
    first_drop = out.dropped()[0]
    assert out.dropped() == list(range(first_drop, len(out.packets)))  # both directions, to the end
    assert not out.injected and out.fired == [("freeze-hosting", "freeze")]  # silent: no RST


def test_T25_1_allow_listed_sni_is_exempt() -> None:
    out, _ = _freeze_outcome("tspu-2025", "example.org")
    assert not out.dropped() and out.fired == [("freeze-allow", "accept")]


@pytest.mark.parametrize("case", ["other-network", "plain-http"])
def test_T25_1_only_tls_to_listed_networks(case: str) -> None:
    if case == "other-network":
        out, _ = _freeze_outcome("tspu-2025", "wikipedia.org", server=S)
    else:
        out, _ = _freeze_outcome("tspu-2025", "wikipedia.org", first=http_request("wikipedia.org"))
    assert out.all_passed


def test_T25_1_registry_names_are_still_blocked_first() -> None:
    out, after = _freeze_outcome("tspu-2025", "twitter.com")
    assert out.fired == [("sni-block", "blackhole")] and out.dropped() == list(range(after, len(out.packets)))


# ================================================================================================================
# GFW (G-*): rules/gfw.yaml and the GFW pieces of redweb

GFW_LIKE = [("gfw", "twitter.com"), ("redweb", "www.youtube.com")]


def reset(out: Outcome) -> bool:
    return any(str(IP(p)[TCP].flags) in ("R", "RA") for p in out.injected)


@pytest.mark.parametrize("profile, name", GFW_LIKE)
def test_G_1_sni_and_host_on_any_port_in_both_directions(profile: str, name: str) -> None:
    def run(flow_packets, inside=INSIDE) -> Outcome:
        return replay(censor(profile, inside=inside), flow_packets)

    assert reset(run(tcp_flow(C, S, hello(name)).conv.packets))
    assert reset(run(tcp_flow(C, S, hello(name), sport=8443).conv.packets))
    assert reset(run(tcp_flow(C, S, http_request(name), sport=80).conv.packets))
    assert reset(run(tcp_flow(C, S, http_request(name), sport=8080).conv.packets))
    # both directions: an inbound connection, and a ClientHello sent by the server side
    assert reset(run(tcp_flow(OUTSIDE_CLIENT, INSIDE_SERVER, hello(name)).conv.packets))
    assert reset(run(TcpConversation(C, S, 40000, 443).handshake().server_send(hello(name)).packets))
    assert not reset(run(tcp_flow(C, S, hello("example.org")).conv.packets))


@pytest.mark.parametrize("profile, name", GFW_LIKE)
def test_G_1_client_syn_must_have_been_seen(profile: str, name: str) -> None:
    packets = tcp_flow(C, S, hello(name)).conv.packets[1:]  # from the SYN/ACK on
    assert replay(censor(profile), packets).all_passed


@pytest.mark.parametrize("name, tls_blocked, http_blocked", [
    ("googleapis.com", True, False),   # only on the TLS list
    ("archive.org", False, True),      # only on the HTTP list
    ("www.google.com", True, True),
])
def test_G_1_http_and_tls_use_separate_lists(name: str, tls_blocked: bool, http_blocked: bool) -> None:
    tls = replay(censor("gfw"), tcp_flow(C, S, hello(name)).conv.packets)
    http = replay(censor("gfw"), tcp_flow(C, S, http_request(name), sport=80).conv.packets)
    assert (reset(tls), reset(http)) == (tls_blocked, http_blocked)


@pytest.mark.parametrize("proto, name, blocked", [
    ("tls", "www.google.com", True), ("tls", "google.com", True), ("tls", "notgoogle.com", False),  # ^(.*\.)?kw$
    ("tls", "www.bbc.com", True), ("tls", "news.www.bbc.com", False),                            # ^kw$
    ("tls", "googlevideo.com.example.net", True), ("tls", "notgooglevideo.com", False),           # ^(.*\.)?kw
    ("http", "notnytimes.com", True), ("http", "nytimes.com.example", False),                     # kw$
    ("http", "www.torproject.org.example", True),                                                 # kw
])
def test_G_2_pattern_forms(proto: str, name: str, blocked: bool) -> None:
    first, port = (hello(name), 443) if proto == "tls" else (http_request(name), 80)
    assert reset(replay(censor("gfw"), tcp_flow(C, S, first, sport=port).conv.packets)) == blocked


def _expected_rst(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, preset: str,
                  ttl: int, ip_id: int) -> bytes:
    inj = INJECTOR_PRESETS[preset]
    with_ack = inj.flags == "RA"
    return bytes(IP(src=src, dst=dst, ttl=ttl, id=ip_id, flags="DF" if inj.df else 0)
                 / TCP(sport=sport, dport=dport, seq=seq, ack=ack if with_ack else 0, flags=inj.flags,
                       window=inj.window) / (Raw(inj.payload) if inj.payload else b""))


def _id_in(spec: str, ip_id: int) -> bool:
    if spec == "random":
        return True
    if spec == "zero":
        return ip_id == 0
    lo, _, hi = spec.partition("-")
    return int(lo, 0) <= ip_id <= int(hi or lo, 0)


@pytest.mark.parametrize("profile, name, preset, as_bundled", [
    ("gfw", "twitter.com", "gfw-type2", True), ("redweb", "www.youtube.com", "gfw-type2", True),
    ("gfw", "twitter.com", "gfw-type1", False), ("gfw", "twitter.com", "gfw-type3", False),  # the other G-3 types
])
def test_G_3_rsts_to_both_sides_carry_the_injector_fingerprint_byte_for_byte(profile: str, name: str, preset: str,
                                                                            as_bundled: bool) -> None:
    prof = bundled(profile)
    rule = next(r for r in prof.rules if r.name == "sni-reset")
    if as_bundled:
        assert rule.action.injector == INJECTOR_PRESETS[preset] and rule.action.rst_to == "both"
    else:
        prof = scaled(prof, action={"sni-reset": replace(rule.action, injector=INJECTOR_PRESETS[preset])})
    inj = INJECTOR_PRESETS[preset]
    ch = hello(name)
    flow = tcp_flow(C, S, ch)
    out = replay(censor(prof), flow.conv.packets)
    client_next, server_next = 1001 + len(ch), 500001
    to_client = [p for p in out.injected if IP(p).dst == C]
    to_server = [p for p in out.injected if IP(p).dst == S]
    assert len(to_client) == len(to_server) == inj.count and len(set(to_client)) == len(set(to_server)) == 1
    for pkt, (src, dst, sport, dport, seq, ack) in [(to_client[0], (S, C, 443, 40000, server_next, client_next)),
                                                    (to_server[0], (C, S, 40000, 443, client_next, server_next))]:
        ip = IP(pkt)
        assert inj.ttl[0] <= ip.ttl <= inj.ttl[1] and _id_in(inj.ip_id, ip.id)
        assert pkt == _expected_rst(src, dst, sport, dport, seq, ack, preset, ip.ttl, ip.id)
    assert out.decisions[flow.marks["data"]].verdict == ACCEPT  # on-path: the trigger itself is not dropped


@pytest.mark.parametrize("profile, name", GFW_LIKE)
@pytest.mark.parametrize("gap, blocked", [(9.9, True), (10.1, False)])
def test_G_4_residual_resets_the_3_tuple_both_edges(profile: str, name: str, gap: float, blocked: bool) -> None:
    """180 s (scaled to 10 s) of resets for every new connection on (client IP, server IP, server port)."""
    assert all(r.residual.seconds == 180 for r in bundled(profile).rules if r.name in ("sni-reset", "host-reset"))
    c = censor(scaled(bundled(profile), residual=10.0))
    replay(c, tcp_flow(C, S, hello(name), cport=40000, t0=0.0).conv.packets)
    again = replay(c, tcp_flow(C, S, hello("example.org"), cport=40001, t0=gap).conv.packets)
    other_port = replay(c, tcp_flow(C, S, hello("example.org"), cport=40002, sport=8443, t0=gap).conv.packets)
    if blocked:
        assert again.decisions[0].verdict == DROP and again.events[0]["event"] == "residual"
        to_client = [p for p in again.injected if IP(p).dst == C]
        assert to_client and len(set(to_client)) == 1 and len(to_client) == INJECTOR_PRESETS["gfw-type2"].count
        assert (str(IP(to_client[0])[TCP].flags), IP(to_client[0])[TCP].ack) == ("RA", 1001)  # answers the SYN
    else:
        assert again.all_passed
    assert other_port.all_passed


@pytest.mark.parametrize("profile, name", GFW_LIKE)
def test_G_E_must_evade_tls_record_fragmentation(profile: str, name: str) -> None:
    ch = hello(name)
    assert reset(replay(censor(profile), tcp_flow(C, S, ch).conv.packets))
    assert replay(censor(profile), tcp_flow(C, S, split_tls_records(ch, [40])).conv.packets).all_passed


@pytest.mark.parametrize("profile, name", GFW_LIKE)
def test_G_E_must_not_evade_tcp_segmentation(profile: str, name: str) -> None:
    assert reset(replay(censor(profile), tcp_flow(C, S, hello(name), segment=50).conv.packets))


# ================================================================================================================
# GFW-ESNI (GE-1)


@pytest.mark.parametrize("port", [443, 8443, 5555])
def test_GE_1_esni_clienthello_dropped_silently_on_any_port(port: int) -> None:
    flow = tcp_flow(C, S, with_esni(hello("example.org")), sport=port)
    out = replay(censor("gfw-esni"), flow.conv.packets)
    from_client = [i for i, pkt in enumerate(out.packets) if IP(pkt).src == C]
    # only client-to-server packets are dropped, from the trigger on; the server's packets still arrive
    assert out.dropped() == [i for i in from_client if i >= flow.marks["data"]] and not out.injected
    assert any(IP(out.packets[i]).src == S for i in range(flow.marks["data"], len(out.packets)))
    assert out.fired == [("esni-drop", "blackhole")]


def test_GE_1_either_direction_and_segmentation_does_not_help() -> None:
    esni = with_esni(hello("example.org"))
    from_server = TcpConversation(C, S, 40000, 443).handshake().server_send(esni).client_send(bytes(10))
    assert replay(censor("gfw-esni"), from_server.packets).dropped()
    inbound = tcp_flow(OUTSIDE_CLIENT, INSIDE_SERVER, esni).conv.packets  # a connection opened from outside
    assert replay(censor("gfw-esni", inside=INSIDE), inbound).dropped()
    assert replay(censor("gfw-esni"), tcp_flow(C, S, esni, segment=100).conv.packets).dropped()
    # TLS records are not reassembled (G-1): record fragmentation evades
    assert replay(censor("gfw-esni"), tcp_flow(C, S, split_tls_records(esni, [60])).conv.packets).all_passed


@pytest.mark.parametrize("first", ["plain-sni", "ech"])
def test_GE_1_only_the_esni_extension_triggers(first: str) -> None:
    ch = hello("example.org")
    payload = ch if first == "plain-sni" else insert_extension(ch, EXT_ECH, bytes(200))
    assert replay(censor("gfw-esni"), tcp_flow(C, S, payload).conv.packets).all_passed


@pytest.mark.parametrize("gap, blocked", [(9.9, True), (10.1, False)])
def test_GE_1_residual_drops_the_3_tuple_both_edges(gap: float, blocked: bool) -> None:
    """[uncertain: 120-180 s] (scaled to 10 s): later connections on the 3-tuple dropped from their SYN, silently."""
    assert bundled("gfw-esni").rules[0].residual.seconds == 180
    c = censor(scaled(bundled("gfw-esni"), residual=10.0))
    replay(c, tcp_flow(C, S, with_esni(hello("example.org")), cport=40000).conv.packets)
    again = replay(c, tcp_flow(C, S, hello("example.org"), cport=40001, t0=gap).conv.packets)
    other_port = replay(c, tcp_flow(C, S, hello("example.org"), cport=40002, sport=8443, t0=gap).conv.packets)
    if blocked:
        assert again.dropped() == list(range(len(again.packets))) and not again.injected
    else:
        assert again.all_passed
    assert other_port.all_passed


# ================================================================================================================
# GFW-FET (GF-*)


def fet_flow(payload: bytes, client: str = C, server: str = S_HOSTING, cport: int = 40000, sport: int = 8388,
             t0: float = 0.0):
    return tcp_flow(client, server, payload, cport=cport, sport=sport, t0=t0)


def fet_always() -> Profile:
    """gfw-fet with the GF-2 probability raised to 1, so exemptions and ranges can be tested deterministically."""
    return scaled(bundled("gfw-fet"), probability=1.0)


def test_GF_1_fully_encrypted_first_packet_is_blocked() -> None:
    payload = blockable_first_packet()
    assert exemptions(payload) == set()  # the fixture: a real Shadowsocks-AEAD packet that meets no exemption
    flow = fet_flow(payload)
    out = replay(censor(fet_always()), flow.conv.packets)
    assert blackholed_after(out, flow.marks["data"]) and out.fired == [("fet-block", "blackhole")]


@pytest.mark.parametrize("case", list(EXEMPT_RECIPES))
def test_GF_1_each_exemption_alone_exempts(case: str) -> None:
    payload = exempt_payload(case)
    assert exemptions(payload) == {case.split("-")[0]}  # the fixture meets exactly this exemption
    assert replay(censor(fet_always()), fet_flow(payload).conv.packets).all_passed


@pytest.mark.parametrize("first", ["tls", "http"])
def test_GF_1_real_tls_and_http_first_packets_are_exempt(first: str) -> None:
    payload = hello("example.org") if first == "tls" else http_request("example.org")
    assert replay(censor(fet_always()), fet_flow(payload).conv.packets).all_passed


def test_GF_1_only_the_first_client_data_packet_counts() -> None:
    flow = fet_flow([http_request("example.org"), blockable_first_packet()])
    assert replay(censor(fet_always()), flow.conv.packets).all_passed


def test_GF_2_blocks_about_26_percent_only_towards_listed_ranges() -> None:
    assert bundled("gfw-fet").rules[0].probability == pytest.approx(0.263)
    payload = blockable_first_packet()

    def blocked_flows(seed: int, server: str, profile: Profile | None = None) -> list[bool]:
        c = censor(profile or bundled("gfw-fet"), seed=seed)
        out = []
        for i in range(300):  # one client address each, so that no residual (GF-3) carries over
            flow = fet_flow(payload, client=f"10.1.{i // 200}.{i % 200 + 2}", server=server, t0=i * 0.01)
            out.append(bool(replay(c, flow.conv.packets).dropped()))
        return out

    first, again = blocked_flows(7, S_HOSTING), blocked_flows(7, S_HOSTING)
    assert first == again  # seeded: reproducible
    assert 0.18 < sum(first) / len(first) < 0.35  # 26.3 % of 300; 99.9 % interval about +-0.085
    assert not any(blocked_flows(7, S, fet_always()))  # never towards unlisted servers, even at p = 1


@pytest.mark.parametrize("gap, blocked", [(9.9, True), (10.1, False)])
def test_GF_3_residual_on_the_3_tuple_both_edges_other_ports_open(gap: float, blocked: bool) -> None:
    assert bundled("gfw-fet").rules[0].residual.seconds == 180
    c = censor(scaled(fet_always(), residual=10.0))
    replay(c, fet_flow(blockable_first_packet(), cport=40000).conv.packets)
    again = replay(c, fet_flow(http_request("example.org"), cport=40001, t0=gap).conv.packets)
    other_port = replay(c, fet_flow(http_request("example.org"), cport=40002, sport=8389, t0=gap).conv.packets)
    if blocked:
        assert again.dropped() == list(range(len(again.packets))) and not again.injected
    else:
        assert again.all_passed
    assert other_port.all_passed


# ================================================================================================================
# GFW-QUIC (GQ-*): rules/gfw-quic.yaml and redweb's QUIC piece

QUIC_LIKE = [("gfw-quic", "www.youtube.com"), ("redweb", "www.youtube.com")]


def quic_blocked(out: Outcome) -> bool:
    """GQ-2: the first datagram passed and every later one was dropped."""
    return blackholed_after(out, 0) and len(out.packets) > 1


@pytest.mark.parametrize("profile, name", QUIC_LIKE)
def test_GQ_1_decrypts_the_v1_initial_and_reads_the_sni(profile: str, name: str) -> None:
    out = _quic_outcome(profile, [quic(name), later_datagram(), later_datagram()])
    assert quic_blocked(out) and out.events[0]["names"]["quic_sni"] == [name]
    assert _quic_outcome(profile, [quic("example.org"), later_datagram()]).all_passed


def test_GQ_1_separate_blocklist_from_tls() -> None:
    """dropbox.com is on the GFW's TLS list but not on its QUIC list, x.com the other way round."""
    assert _quic_outcome("gfw-quic", [quic("dropbox.com"), later_datagram()]).all_passed
    assert quic_blocked(_quic_outcome("gfw-quic", [quic("x.com"), later_datagram()]))
    assert not reset(replay(censor("gfw"), tcp_flow(C, S, hello("x.com")).conv.packets))


@pytest.mark.parametrize("profile, name", QUIC_LIKE)
@pytest.mark.parametrize("sport, blocked", [(442, False), (443, False), (444, True)])
def test_GQ_1_only_when_source_port_is_greater_both_edges(profile: str, name: str, sport: int, blocked: bool) -> None:
    assert quic_blocked(_quic_outcome(profile, [quic(name), later_datagram()], sport=sport)) == blocked


@pytest.mark.parametrize("gap, blocked", [(5.9, False), (6.1, True)])
def test_GQ_1_flow_state_lasts_60_seconds_both_edges(gap: float, blocked: bool) -> None:
    """After a dummy first datagram the 4-tuple is released; the censor forgets it after 60 s (scaled to 6 s)."""
    assert bundled("gfw-quic").flows.udp_idle_timeout == 60
    c = censor(scaled(bundled("gfw-quic"), udp_idle=6.0))
    out = replay(c, [(0.0, udp_packet(C, S, 50000, 443, bytes(40))),
                     (gap, udp_packet(C, S, 50000, 443, quic("www.youtube.com"))),
                     (gap + 0.01, udp_packet(C, S, 50000, 443, later_datagram()))])
    assert bool(out.dropped()) == blocked


@pytest.mark.parametrize("profile, name", QUIC_LIKE)
@pytest.mark.parametrize("gap, blocked", [(9.9, True), (10.1, False)])
def test_GQ_2_trigger_passes_later_dropped_residual_across_source_ports(profile: str, name: str, gap: float,
                                                                       blocked: bool) -> None:
    assert next(r for r in bundled(profile).rules if r.name == "quic-sni").residual.seconds == 180
    c = censor(scaled(bundled(profile), residual=10.0))
    first = replay(c, [(0.0, udp_packet(C, S, 50000, 443, quic(name))),
                       (0.1, udp_packet(C, S, 50000, 443, later_datagram())),
                       (0.2, udp_packet(S, C, 443, 50000, later_datagram()))])
    assert [d.verdict for d in first.decisions] == [ACCEPT, DROP, DROP]
    new_port = replay(c, [(gap, udp_packet(C, S, 50001, 443, quic("example.org")))])
    other_server_port = replay(c, [(gap, udp_packet(C, S, 50002, 8443, quic("example.org")))])
    assert bool(new_port.dropped()) == blocked and other_server_port.all_passed


def _initial_packet_end(datagram: bytes) -> int:
    """Where the first long-header packet of a datagram ends (RFC 9000 17.2), read without dpi's parsers."""
    i = 5
    i += 1 + datagram[i]  # DCID
    i += 1 + datagram[i]  # SCID
    assert datagram[i] == 0  # no token: one-byte varint 0
    i += 1
    assert datagram[i] >> 6 == 1  # aioquic writes the Length as a two-byte varint
    return i + 2 + (int.from_bytes(datagram[i:i + 2], "big") & 0x3FFF)


def _crafted(frames: bytes, **kw) -> bytes:
    return protect_initial(frames, dcid=kw.pop("dcid", bytes(range(8))), pad_to=kw.pop("pad_to", 1200), **kw)


@pytest.mark.parametrize("profile, name", QUIC_LIKE)
@pytest.mark.parametrize("shape", ["pn-1-byte", "empty-source-cid", "empty-cids"])
def test_GQ_3_parser_accepts_short_packet_numbers_and_empty_cids(profile: str, name: str, shape: str) -> None:
    frames = crypto_frame(0, aioquic_client_hello(name))
    datagram = {"pn-1-byte": _crafted(frames, pn_length=1, scid=bytes(8)),
                "empty-source-cid": _crafted(frames, scid=b""),
                "empty-cids": _crafted(frames, dcid=b"", scid=b"", pn_length=1)}[shape]
    assert quic_blocked(_quic_outcome(profile, [datagram, later_datagram()]))


@pytest.mark.parametrize("profile, name", QUIC_LIKE)
@pytest.mark.parametrize("shape", ["truncated", "version-2", "unknown-version", "sni-only-in-alpn",
                                   "crypto-mixed-with-ping", "split-crypto-frames", "split-across-initials"])
def test_GQ_3_parser_gives_up(profile: str, name: str, shape: str) -> None:
    ch = aioquic_client_hello(name)
    assert quic_blocked(_quic_outcome(profile, [_crafted(crypto_frame(0, ch)), later_datagram()]))  # control
    if shape == "truncated":  # cut inside the Initial (aioquic pads the datagram with zeros after the packet)
        datagram = quic(name)[:_initial_packet_end(quic(name)) - 50]
    elif shape == "version-2":
        datagram = aioquic_initial_datagrams(name, version=V2)[0]
    elif shape == "unknown-version":
        real = quic(name)
        datagram = real[:1] + bytes.fromhex("1a2a3a4a") + real[5:]
    elif shape == "sni-only-in-alpn":
        datagram = _crafted(crypto_frame(0, aioquic_client_hello(None, alpn=[name])))
    elif shape == "crypto-mixed-with-ping":
        datagram = _crafted(PING + crypto_frame(0, ch))
    elif shape == "split-crypto-frames":
        datagram = _crafted(crypto_frame(0, ch[:120]) + crypto_frame(120, ch[120:]))
    else:  # two Initials coalesced in one datagram, the ClientHello cut between them
        first = protect_initial(crypto_frame(0, ch[:120]), dcid=bytes(range(8)), pn=0)
        datagram = first + protect_initial(crypto_frame(120, ch[120:]), dcid=bytes(range(8)), pn=1,
                                           pad_to=1200 - len(first))
    assert _quic_outcome(profile, [datagram, later_datagram()]).all_passed


@pytest.mark.parametrize("profile, name", QUIC_LIKE)
@pytest.mark.parametrize("evasion", ["dummy-datagram-first", "sport-not-greater", "quic-v2", "sni-split-crypto"])
def test_GQ_E_must_evade(profile: str, name: str, evasion: str) -> None:
    ch = aioquic_client_hello(name)
    sport = 443 if evasion == "sport-not-greater" else 50000
    datagrams = {
        "dummy-datagram-first": [bytes(40), quic(name)],
        "sport-not-greater": [quic(name)],
        "quic-v2": [aioquic_initial_datagrams(name, version=V2)[0]],
        "sni-split-crypto": [_crafted(crypto_frame(0, ch[:ch.index(name.encode()) + 3])
                                      + crypto_frame(ch.index(name.encode()) + 3, ch[ch.index(name.encode()) + 3:]))],
    }[evasion]
    assert quic_blocked(_quic_outcome(profile, [quic(name), later_datagram()]))  # control
    assert _quic_outcome(profile, datagrams + [later_datagram()], sport=sport).all_passed


# ================================================================================================================
# GFW-DNS (GD-*): rules/gfw-dns.yaml and redweb's DNS piece


def dns_answer(profile: str | Profile, name: str, qtype: str = "A", *, client: str = C, resolver: str = RESOLVER,
               inside=None, c=None, qid: int = 0x1234, sport: int = 33000,
               ) -> tuple[int, dnslib.DNSRecord | None, bytes | None]:
    """(verdict of the query, the forged answer parsed by dnslib or None, the forged packet)."""
    c = c or censor(profile, inside=inside)
    d = c.process(udp_packet(client, resolver, sport, 53, dnslib_query(name, qtype, query_id=qid)), 0.0)
    if not d.inject:
        return d.verdict, None, None
    assert all(delay == 0.0 for delay, _ in d.inject)  # GD-1: sent at once, so they beat the resolver's answer
    pkt = d.inject[0][1]  # the first injector's answer is the one the client takes
    return d.verdict, dnslib.DNSRecord.parse(bytes(IP(pkt)[UDP].payload)), pkt


def test_GD_1_several_injectors_each_with_its_own_fingerprint() -> None:
    """Every injector of gfw-dns answers the same query; their IP TTLs fall in their own ranges."""
    c = censor("gfw-dns")
    injectors = [r for r in bundled("gfw-dns").rules if r.action.type == "dns-inject"]
    assert len(injectors) >= 2
    for i in range(20):
        d = c.process(udp_packet(C, RESOLVER, 36000 + i, 53, dnslib_query("facebook.com", query_id=i)), float(i))
        assert len(d.inject) == len(injectors) and d.verdict == ACCEPT
        for rule, (_, pkt) in zip(injectors, d.inject):
            lo, hi = rule.action.injector.ttl
            assert lo <= IP(pkt).ttl <= hi
            assert dnslib.DNSRecord.parse(bytes(IP(pkt)[UDP].payload)).header.id == i
    assert [e["rule"] for e in d.events] == [r.name for r in injectors]


@pytest.mark.parametrize("profile, name", [("gfw-dns", "www.facebook.com"), ("redweb", "facebook.com")])
def test_GD_1_on_path_forged_answer_races_the_real_one(profile: str, name: str) -> None:
    verdict, answer, pkt = dns_answer(profile, name, qid=0xBEEF)
    assert verdict == ACCEPT  # on-path: the query still reaches the resolver
    ip = IP(pkt)
    assert (ip.src, ip.dst, ip[UDP].sport, ip[UDP].dport) == (RESOLVER, C, 53, 33000)
    assert answer.header.id == 0xBEEF and answer.header.qr == 1 and str(answer.q.qname) == name + "."
    assert answer.rr and answer.rr[0].rtype == dnslib.QTYPE.A
    assert dns_answer(profile, "example.org")[1] is None


@pytest.mark.parametrize("profile", ["gfw-dns", "redweb"])
def test_GD_1_both_directions_trigger(profile: str) -> None:
    _, answer, _ = dns_answer(profile, "facebook.com", client=OUTSIDE_CLIENT, resolver="10.1.0.53", inside=INSIDE)
    assert answer is not None  # a query from outside to a resolver inside is poisoned too


@pytest.mark.parametrize("profile", ["gfw-dns", "redweb"])
def test_GD_2_pool_cycles_in_order_and_aaaa_is_teredo(profile: str) -> None:
    action = next(r.action for r in bundled(profile).rules if r.action.type == "dns-inject")
    assert action.pool_order == "cycle" and action.dns_mode == "on-path"
    c = censor(profile)
    seen = [str(dns_answer(profile, "facebook.com", c=c, qid=i, sport=34000 + i)[1].rr[0].rdata)
            for i in range(2 * len(action.pool_a))]
    assert seen == list(action.pool_a) * 2
    teredo = ipaddress.ip_network("2001::/32")
    aaaa = [dns_answer(profile, "facebook.com", "AAAA", c=c, qid=i, sport=35000 + i)[1]
            for i in range(len(action.pool_aaaa) + 1)]
    addresses = [ipaddress.ip_address(str(a.rr[0].rdata)) for a in aaaa]
    assert all(a in teredo for a in addresses) and len(set(addresses)) == len(action.pool_aaaa)


@pytest.mark.parametrize("profile, name, poisoned", [
    ("gfw-dns", "notfacebook.com", True), ("gfw-dns", "nottwitter.com", True),  # raw suffixes over-block
    ("gfw-dns", "www.facebook.com", True), ("gfw-dns", "facebook.org", False),
    ("gfw-dns", "notgoogle.com", False), ("gfw-dns", "www.google.com", True),   # name-and-subdomains does not
    ("redweb", "notfacebook.com", True), ("redweb", "example.org", False),
])
def test_GD_3_patterns_over_block_innocent_names(profile: str, name: str, poisoned: bool) -> None:
    assert (dns_answer(profile, name)[1] is not None) == poisoned


# ================================================================================================================
# Henan (H-*)


def henan_rsts(out: Outcome) -> list[bytes]:
    return [p for p in out.injected if bytes(IP(p)[TCP].payload) == bytes.fromhex("01020304050607080900")]


@pytest.mark.parametrize("kind, port", [("tls", 443), ("tls", 8443), ("http", 80), ("http", 8080)])
def test_H_1_sni_and_host_share_one_list_on_any_port(kind: str, port: int) -> None:
    first = hello if kind == "tls" else http_request
    blocked = replay(censor("henan"), tcp_flow(C, S, first("facebook.com"), sport=port).conv.packets)
    allowed = replay(censor("henan"), tcp_flow(C, S, first("example.org"), sport=port).conv.packets)
    assert len(henan_rsts(blocked)) == 1 and allowed.all_passed
    specs = bundled("henan").rules
    assert {r.match.tls_sni or r.match.http_host for r in specs} == {"henan"}  # one shared list


def test_H_1_no_handshake_needed_and_outbound_only() -> None:
    no_syn = tcp_flow(C, S, hello("facebook.com"), handshake=False).conv.packets
    assert len(henan_rsts(replay(censor("henan"), no_syn))) == 1
    inbound = tcp_flow(OUTSIDE_CLIENT, INSIDE_SERVER, hello("facebook.com")).conv.packets
    assert replay(censor("henan", inside=INSIDE), inbound).all_passed


def test_H_2_one_rst_ack_to_the_client_with_the_henan_fingerprint_byte_for_byte() -> None:
    ch = hello("facebook.com")
    flow = tcp_flow(C, S, ch, cport=41234)
    out = replay(censor("henan"), flow.conv.packets)
    expected = bytes(IP(src=S, dst=C, ttl=58, id=1, flags=0)
                     / TCP(sport=443, dport=41234, seq=500001, ack=1001 + len(ch), flags="RA", window=0)
                     / Raw(bytes.fromhex("01020304050607080900")))
    assert out.injected == [expected]
    assert not out.dropped()  # nothing is dropped: the RST is all


def test_H_2_no_residual_blocking() -> None:
    c = censor("henan")
    replay(c, tcp_flow(C, S, hello("facebook.com"), cport=40000).conv.packets)
    assert replay(c, tcp_flow(C, S, hello("example.org"), cport=40001, t0=1.0).conv.packets).all_passed
    assert len(henan_rsts(replay(c, tcp_flow(C, S, hello("facebook.com"), cport=40002, t0=2.0).conv.packets))) == 1


def test_H_E_must_evade_a_tcp_option_on_the_clienthello_segment() -> None:
    ch = hello("facebook.com")
    conv = TcpConversation(C, S, 40000, 443).handshake()
    with_ts = bytes(IP(src=C, dst=S) / TCP(sport=40000, dport=443, seq=conv.cseq, ack=conv.sseq, flags="PA",
                                           window=502, options=[("NOP", None), ("NOP", None),
                                                                ("Timestamp", (123456, 654321))]) / ch)
    assert IP(with_ts)[TCP].dataofs * 4 == 32
    conv.packets.append((conv.ts, with_ts))
    conv.cseq += len(ch)
    out = replay(censor("henan"), conv.server_send(bytes(4000)).client_send(bytes(64)).packets)
    assert out.all_passed
    assert len(henan_rsts(replay(censor("henan"), tcp_flow(C, S, ch).conv.packets))) == 1  # control


def test_H_E_must_evade_the_sni_split_across_segments() -> None:
    ch = hello("facebook.com")
    cut = ch.index(b"facebook.com") + 4
    assert replay(censor("henan"), tcp_flow(C, S, [ch[:cut], ch[cut:]]).conv.packets).all_passed


def test_H_E_must_evade_dropping_rsts_with_the_henan_payload() -> None:
    """The client drops incoming RSTs that carry 01..09 00: nothing else was touched, so the connection goes on."""
    flow = tcp_flow(C, S, hello("facebook.com"), server_bytes=20000)
    out = replay(censor("henan"), flow.conv.packets)
    assert henan_rsts(out) and out.injected == henan_rsts(out)  # the filter catches every forged packet
    assert not out.dropped()
    assert out.passed_payload(S) == 20000  # the server's whole answer is delivered


# ================================================================================================================
# RedWeb (the default profile): the per-name treatment table of its header, cell by cell


def _treatment_table() -> dict[str, dict[str, str]]:
    text = (RULES_DIR / "redweb.yaml").read_text()
    block = text.split("# treatment:\n", 1)[1].split("# end treatment", 1)[0]
    rows = [line.lstrip("#").split() for line in block.splitlines() if line.strip("# ")]
    header, body = rows[0], rows[1:]
    assert header == ["name", "https", "http", "quic", "dns"]
    return {row[0]: dict(zip(header[1:], row[1:])) for row in body}


TABLE = _treatment_table()


def _https(name: str) -> str:
    conv = TcpConversation(C, S, 40000, 443).handshake().client_send(curl_client_hello(name))
    conv.step = 0.0001
    out = replay(censor("redweb"), conv.server_send(bytes(1448 * 45)).packets)
    if reset(out):
        return "reset"
    if throttled(out) and out.dropped():
        return "throttled"
    return "allowed" if out.all_passed else f"other {out.fired}"


def _http(name: str) -> str:
    out = replay(censor("redweb"), tcp_flow(C, S, http_request(name), sport=80).conv.packets)
    return "reset" if reset(out) else "allowed" if out.all_passed else f"other {out.fired}"


def _quic(name: str) -> str:
    out = _quic_outcome("redweb", [quic(name), later_datagram()])
    return "dropped" if quic_blocked(out) else "allowed" if out.all_passed else f"other {out.fired}"


def _dns(name: str) -> str:
    verdict, answer, _ = dns_answer("redweb", name)
    return "poisoned" if answer is not None and verdict == ACCEPT else "allowed" if answer is None else "other"


def test_redweb_table_names_the_lab_names() -> None:
    assert set(TABLE) == {"twitter.com", "www.youtube.com", "facebook.com", "blocked.example", "example.org",
                          "wikipedia.org", "debian.org"}


@pytest.mark.parametrize("name", list(TABLE))
@pytest.mark.parametrize("proto", ["https", "http", "quic", "dns"])
def test_redweb_treatment_table_holds(name: str, proto: str) -> None:
    """T21-1/T21-4 (throttled), G-1/G-3 (reset), GQ-1/GQ-2 (dropped), GD-1 (poisoned): real curl, aioquic and
    dnslib first flights through rules/redweb.yaml give exactly the table its header documents."""
    observed = {"https": _https, "http": _http, "quic": _quic, "dns": _dns}[proto](name)
    assert observed == TABLE[name][proto]


def test_redweb_keeps_T21_5_with_a_rule_condition_and_the_gfw_parser() -> None:
    """The composition's trade-offs, as documented: triggers both, throttling outbound only, GFW parser."""
    p = bundled("redweb")
    assert p.triggers == "both" and p.tcp.reassembly and not p.tcp.whole_clienthello and p.tcp.window == 0
    assert [r.name for r in p.rules] == ["throttle-twitter", "sni-reset", "host-reset", "quic-sni", "dns-inject", "dns-inject-2"]
    ch = hello("twitter.com")
    # the TSPU-2021 parser evasions no longer work against the throttling (GFW parser) ...
    assert throttled(replay(censor("redweb"), tcp_flow(C, S, [ch[:200], ch[200:]]).conv.packets))
    assert throttled(replay(censor("redweb"), tcp_flow(C, S, hello("twitter.com.")).conv.packets))
    # ... while a fake ClientHello first now does (the GFW parser decides on the first one)
    assert not throttled(replay(censor("redweb"), tcp_flow(C, S, [hello("example.org"), ch]).conv.packets))
