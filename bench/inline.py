"""`redweb bench inline`: the live censor's cost on a real path, each figure next to its baseline from the same run.

client -- router -- server in namespaces (root needed):
1. iperf3 throughput of an allowed flow with no censor and with `redweb run` (decided flows leave the queue
   through the connmark, so the censor should cost little); also through the same router with nothing but
   connection tracking switched on (one conntrack rule), because the connmark fast path needs conntrack and on
   these kernels (no nf_flow_table) tracking every packet is the kernel's own price, separate from the censor's;
2. packets/s when every packet is inspected (`--no-offload`) next to a bare `netfilterqueue` accept-all loop
   behind the same iptables chain (the floor any NFQUEUE program pays on this path);
3. added latency per inspected packet: UDP echo round trips through the censor (every packet inspected) minus the
   same round trips with no queue at all, p50 and p99.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netns import Path3  # noqa: E402  (the same namespace path the tests use)

PY = sys.executable
BARE_LOOP = """
from netfilterqueue import NetfilterQueue
q = NetfilterQueue()
q.bind(0, lambda pkt: pkt.accept(), max_len=4096)
print("ready", flush=True)
q.run()
"""
ECHO_SERVER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7007))
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(data, addr)
"""
ECHO_CLIENT = """
import socket, sys, time, json
n = int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.connect((sys.argv[1], 7007))
rtts = []
for i in range(n):
    t = time.perf_counter()
    s.send(i.to_bytes(4, "big") * 16)
    try:
        s.recv(2048)
        rtts.append((time.perf_counter() - t) * 1e6)
    except socket.timeout:
        pass
    time.sleep(0.0005)
print(json.dumps(rtts))
"""


def forwarded(p: Path3) -> int:
    info = json.loads(p.router.run(["ip", "-s", "-j", "link", "show", "dev", p.router_ifs[0]]).stdout)[0]
    return info["stats64"]["rx"]["packets"] + info["stats64"]["tx"]["packets"]


def iperf(p: Path3, seconds: int, streams: int = 1) -> tuple[float, float]:
    """(Gbit/s received, forwarded packets/s through the router's client-side interface)."""
    before = forwarded(p)
    t0 = time.monotonic()
    r = p.client.run(["iperf3", "-c", Path3.SERVER_V4, "-t", str(seconds), "-P", str(streams), "-J"],
                     timeout=seconds + 30)
    elapsed = time.monotonic() - t0
    pkts = forwarded(p) - before
    bps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
    return bps / 1e9, pkts / elapsed


def rtts(p: Path3, n: int) -> list[float]:
    r = p.client.run([PY, "-c", ECHO_CLIENT, Path3.SERVER_V4, str(n)], timeout=n * 0.01 + 60)
    return json.loads(r.stdout)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


@contextmanager
def censor(p: Path3, profile: str, *extra: str) -> Iterator[None]:
    proc = p.router.popen([PY, "-m", "dpi.cli", "run", "--profile", profile, "--inside", "10.9.1.0/24", *extra],
                          cwd=str(ROOT), text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "censoring" not in line:
            raise RuntimeError(f"redweb run did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@contextmanager
def tracked(p: Path3) -> Iterator[None]:
    """The router with connection tracking on and no censor: the kernel work the connmark fast path relies on."""
    rule = ["FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-m", "comment", "--comment",
            "redweb-bench", "-j", "ACCEPT"]
    p.router.run(["iptables", "-I", *rule])
    try:
        yield
    finally:
        p.router.run(["iptables", "-D", *rule], check=False)


@contextmanager
def bare_queue(p: Path3) -> Iterator[None]:
    """The bare accept loop behind the very chain `redweb run` installs (conntrack, connmark rules, NFQUEUE), so
    that the kernel's share is the same on both sides and the ratio measures what the censor adds in user space."""
    from dpi.iptables import RuleSet
    rules = RuleSet((0, 0), netns=p.router.ns)
    proc = p.router.popen([PY, "-c", BARE_LOOP], text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        rules.install()
        yield
    finally:
        rules.remove()
        # Killed, not interrupted: netfilterqueue's blocking run() retries recv after EINTR without raising the
        # KeyboardInterrupt, so a SIGINT is only seen when one more packet arrives. The loop owns nothing to clean.
        proc.kill()
        proc.communicate(timeout=30)


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="redweb bench inline")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--probes", type=int, default=2000)
    ap.add_argument("--profile", default="gfw")
    ap.add_argument("--rounds", type=int, default=5, help="alternating baseline / censor rounds (medians compared)")
    args = ap.parse_args(list(argv))
    if os.geteuid() != 0:
        print("redweb bench inline: needs root (network namespaces, iptables, NFQUEUE)", file=sys.stderr)
        return 2
    with Path3() as p:
        servers = [p.server.popen(["iperf3", "-s"], stdout=subprocess.DEVNULL),
                   p.server.popen([PY, "-c", ECHO_SERVER])]
        try:
            time.sleep(0.5)
            base_runs, ct_runs, cens_runs, base_pps_runs = [], [], [], []
            for _ in range(args.rounds):
                gbps, pps = iperf(p, args.seconds)
                base_runs.append(gbps)
                base_pps_runs.append(pps)
                with tracked(p):
                    ct_runs.append(iperf(p, args.seconds)[0])
                with censor(p, args.profile):
                    cens_runs.append(iperf(p, args.seconds)[0])
            base_gbps, cens_gbps = statistics.median(base_runs), statistics.median(cens_runs)
            ct_gbps = statistics.median(ct_runs)
            base_pps = statistics.median(base_pps_runs)
            base_rtt = rtts(p, args.probes)
            # Packets/s through the queue: 4 parallel streams keep it full, so both loops are measured CPU-bound
            # (one stream would measure per-packet latency, not throughput); rounds alternate between the bare
            # loop and the censor so drift on a shared machine hits both, and the medians are compared.
            bare_runs, insp_runs = [], []
            for _ in range(args.rounds):
                with bare_queue(p):
                    bare_runs.append(iperf(p, args.seconds, streams=4)[1])
                with censor(p, args.profile, "--no-offload"):
                    insp_runs.append(iperf(p, args.seconds, streams=4)[1])
            bare_pps, insp_pps = statistics.median(bare_runs), statistics.median(insp_runs)
            with censor(p, args.profile, "--no-offload"):
                insp_rtt = rtts(p, args.probes)
        finally:
            for s in servers:
                s.kill()
                s.wait()
    result = {
        "bench": "inline", "profile": args.profile,
        "throughput_no_censor_gbps": round(base_gbps, 3), "throughput_censor_gbps": round(cens_gbps, 3),
        "throughput_ratio": round(cens_gbps / base_gbps, 3), "throughput_conntrack_gbps": round(ct_gbps, 3),
        "throughput_ratio_vs_conntrack": round(cens_gbps / ct_gbps, 3),
        "inspected_pps": round(insp_pps), "bare_nfqueue_pps": round(bare_pps),
        "inspected_vs_bare_ratio": round(insp_pps / bare_pps, 3), "no_queue_pps": round(base_pps),
        "rtt_no_censor_p50_us": round(pct(base_rtt, 0.5), 1), "rtt_no_censor_p99_us": round(pct(base_rtt, 0.99), 1),
        "added_latency_p50_us": round(pct(insp_rtt, 0.5) - pct(base_rtt, 0.5), 1),
        "added_latency_p99_us": round(pct(insp_rtt, 0.99) - pct(base_rtt, 0.99), 1),
        "probes_lost": args.probes - len(insp_rtt),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"medians of {args.rounds} alternating rounds of {args.seconds} s each")
    print(f"1. iperf3 allowed flow: {base_gbps:.2f} Gbit/s without censor, {cens_gbps:.2f} Gbit/s with "
          f"`redweb run --profile {args.profile}`: {100 * cens_gbps / base_gbps:.0f} %; router with only "
          f"connection tracking on: {ct_gbps:.2f} Gbit/s, the censor {100 * cens_gbps / ct_gbps:.0f} % of that")
    print(f"2. every packet inspected: {insp_pps:,.0f} packets/s; bare netfilterqueue accept loop: "
          f"{bare_pps:,.0f} packets/s: {100 * insp_pps / bare_pps:.0f} %  (no queue: {base_pps:,.0f} packets/s)")
    print(f"3. UDP echo RTT without censor p50 {pct(base_rtt, 0.5):.0f} us / p99 {pct(base_rtt, 0.99):.0f} us; "
          f"added by inspecting every packet p50 {result['added_latency_p50_us']:.0f} us / "
          f"p99 {result['added_latency_p99_us']:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
