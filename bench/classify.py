"""`redweb bench classify`: packets/s of the compiled core against a plain-Python scapy censor, in one run.

The capture is generated (real ClientHellos, HTTP requests, DNS queries and QUIC Initials, plus bulk data), the
core replays it in one C loop, and the baseline makes the same per-flow decisions with scapy's dissectors and a
Python dict flow table on a prefix of the same capture. Both decision sets are compared, so the speed-up is
between two implementations that agree.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

from dpi.config import Action, ListSpec, Match, Profile, QuicInspection, Rule, TcpInspection
from dpi.engine import Censor
from dpi.pcap import LINKTYPE_RAW
from dpi.traffic import mixed_capture

BLOCKED = ["twitter.com", "facebook.com", "www.youtube.com", "blocked.test"]
ALLOWED = ["example.org", "www.wikipedia.org", "debian.org", "lab.test"]


def bench_profile() -> Profile:
    """GFW-like: SNI and Host reset, in-order TCP reassembly, QUIC SNI (the decisions the baseline reproduces)."""
    lists = {"names": ListSpec("names", entries=tuple(BLOCKED))}
    rules = (
        Rule("sni", Match(tls_sni="names"), Action(type="rst")),
        Rule("host", Match(http_host="names"), Action(type="rst")),
        Rule("quic", Match(quic_sni="names"), Action(type="blackhole", include_trigger=False)),
        Rule("dns", Match(dns_qname="names"), Action(type="dns-inject", pool_a=("203.0.113.7",))),
    )
    return Profile("bench", lists=lists, rules=rules, tcp=TcpInspection(reassembly=True),
                   quic=QuicInspection(enabled=True), triggers="both")


def raw_pcap(packets: list[tuple[float, bytes]]) -> bytes:
    import struct
    parts = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_RAW)]
    for ts, pkt in packets:
        sec = int(ts)
        parts.append(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(pkt), len(pkt)))
        parts.append(pkt)
    return b"".join(parts)


def run_core(data: bytes, repeat: int) -> tuple[float, int, dict[tuple, str]]:
    best = float("inf")
    decisions: dict[tuple, str] = {}
    count = 0
    for _ in range(repeat):
        censor = Censor(bench_profile())
        decided: dict[tuple, str] = {}

        def collect(_index: int, _code: int, censor: Censor = censor, decided: dict = decided) -> None:
            for ev in censor.core.events:
                decided[(ev["client"], ev["server"])] = ev["rule"]

        t0 = time.perf_counter()
        count, _dropped = censor.core.process_pcap(data, LINKTYPE_RAW, 24, False, False, collect)
        best = min(best, time.perf_counter() - t0)
        decisions = decided
    return best, count, decisions


def _scapy_names(pkt) -> tuple[str | None, str | None]:
    """(rule, name) the scapy reference sees in one payload."""
    from scapy.layers.dns import DNS
    from scapy.layers.http import HTTPRequest
    from scapy.layers.tls.handshake import TLSClientHello
    from scapy.layers.tls.extensions import TLS_Ext_ServerName
    if pkt.haslayer(TLSClientHello):
        ch = pkt[TLSClientHello]
        for ext in ch.ext or []:
            if isinstance(ext, TLS_Ext_ServerName):
                for sn in ext.servernames:
                    return "sni", sn.servername.decode("latin-1")
    if pkt.haslayer(HTTPRequest):
        host = pkt[HTTPRequest].Host
        return "host", host.decode("latin-1") if host else None
    if pkt.haslayer(DNS) and pkt[DNS].qr == 0 and pkt[DNS].qd:
        return "dns", pkt[DNS].qd[0].qname.decode("latin-1").rstrip(".")
    return None, None


def run_scapy(packets: list[tuple[float, bytes]]) -> tuple[float, dict[tuple, str]]:
    """The baseline: scapy dissection + Python flow dict + the same rules (QUIC via dpi.quic, pure Python)."""
    from scapy.config import conf
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.main import load_layer
    load_layer("tls")
    load_layer("http")
    conf.verb = 0
    from dpi.quic import parse_initial
    blocked = {n.lower() for n in BLOCKED}

    def hit(name: str | None) -> bool:
        if not name:
            return False
        name = name.lower().rstrip(".")
        return any(name == b or name.endswith("." + b) for b in blocked)

    flows: dict[tuple, str] = {}
    decisions: dict[tuple, str] = {}
    t0 = time.perf_counter()
    for _ts, raw in packets:
        ip = IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)
        l4 = ip.getlayer(TCP) or ip.getlayer(UDP)
        if l4 is None:
            continue
        a, b = (ip.src, l4.sport), (ip.dst, l4.dport)
        key = (a, b) if (a, b) in flows else (b, a) if (b, a) in flows else (a, b)
        state = flows.setdefault(key, "inspect")
        payload = bytes(l4.payload)
        if state != "inspect" or not payload:
            continue
        rule, name = _scapy_names(ip)
        if rule is None and isinstance(l4, UDP) and l4.dport == 443:
            info = parse_initial(payload)
            rule, name = ("quic", info.sni[0]) if info.sni else (None, None)
        if hit(name):
            flows[key] = "decided"
            decisions[(f"{key[0][0]}:{key[0][1]}", f"{key[1][0]}:{key[1][1]}")] = rule  # type: ignore[assignment]
        elif isinstance(l4, TCP) or rule is None:
            flows[key] = "released"
    return time.perf_counter() - t0, decisions


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="redweb bench classify")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--flows", type=int, default=4000)
    ap.add_argument("--bulk-segments", type=int, default=200,
                    help="server data segments per TLS flow (HTTP flows get a fifth): sets packets per flow")
    ap.add_argument("--baseline-packets", type=int, default=12000, help="prefix of the capture the scapy baseline runs")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(list(argv))
    packets = mixed_capture(args.flows, blocked=BLOCKED, allowed=ALLOWED, bulk_segments=args.bulk_segments)
    data = raw_pcap(packets)
    core_s, count, core_dec = run_core(data, args.repeat)
    prefix = packets[: args.baseline_packets]
    _, _, prefix_dec = run_core(raw_pcap(prefix), 1)
    scapy_s, scapy_dec = run_scapy(prefix)
    core_pps = count / core_s
    scapy_pps = len(prefix) / scapy_s
    agree = prefix_dec == scapy_dec
    result = {
        "bench": "classify", "packets": count, "flows": args.flows,
        "packets_per_flow": round(count / args.flows, 1), "core_seconds": round(core_s, 4),
        "core_pps": round(core_pps), "baseline": "scapy", "baseline_packets": len(prefix),
        "baseline_pps": round(scapy_pps), "ratio": round(core_pps / scapy_pps, 1),
        "censored_flows": len(core_dec), "decisions_agree": agree,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"capture: {count} packets, {args.flows} flows ({count / args.flows:.0f} packets/flow; "
              f"TLS, HTTP, DNS, QUIC first flights + bulk), {len(core_dec)} flows censored")
        print(f"core (Cython, one core):   {core_pps:>12,.0f} packets/s  (best of {args.repeat})")
        print(f"baseline (scapy, Python):  {scapy_pps:>12,.0f} packets/s  (first {len(prefix)} packets)")
        print(f"ratio:                     {core_pps / scapy_pps:>12,.1f} x")
        print(f"decisions agree on the baseline's packets: {'yes' if agree else 'NO'}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
