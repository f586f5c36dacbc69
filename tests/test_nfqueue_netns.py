"""The live censor end to end: `redweb run` in the router namespace of client -- router -- server.

Real traffic (curl against Python's HTTP server, over IPv4 and IPv6) crosses a router whose FORWARD chain queues it
to the workers. Most tests drive the plumbing with `tests.plumbing_censor` (decides from bytes, not a censor), so
that what is tested is the plumbing: verdicts, the connmark fast path, forged packets, residual state shared by
workers, the event log, the pcap, metrics, and that every way of stopping leaves no rule behind. One test runs the
real engine with the bundled `gfw` profile (G-1, G-3, G-4).

Timeouts below are safety nets for waiting on a process or a packet, never measured quantities.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpi.eventlog import flow_key
from dpi.metrics import parse_address, render, split_rule_counter
from dpi.nfqueue import censor_counters
from dpi.sharedresidual import SharedResidual
from tests.live import WAIT, read_log, wait_for
from tests.live import Live as _Live
from tests.netns import Host, Path3

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIG = 5_000_000

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "iptables", "curl")),
                       reason="needs root, iproute2, iptables and curl"),
]


def Live(*args, **kw):  # type: ignore[no-untyped-def]
    """These tests drive the plumbing with tests.plumbing_censor unless they name another module."""
    kw.setdefault("module", "tests.plumbing_censor")
    return _Live(*args, **kw)


# -- the lab ---------------------------------------------------------------------------------------------------------
class Lab:
    def __init__(self, path: Path3, www: Path) -> None:
        self.path, self.www = path, www
        self.client, self.router, self.server = path.client, path.router, path.server

    def curl(self, url: str, host: str | None = None, max_time: float = 3, host_ns: Host | None = None,
             extra: tuple[str, ...] = ()) -> tuple[int, str]:
        args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "--max-time",
                str(max_time), *extra]
        if host:
            args += ["-H", f"Host: {host}"]
        r = (host_ns or self.client).run([*args, url], check=False, timeout=max_time + 10)
        return r.returncode, r.stdout

    def redweb_rules(self) -> list[str]:
        return self.router.redweb_rules()

    def forwarded_packets(self) -> int:
        total = 0
        for ifname in self.path.router_ifs:
            info = json.loads(self.router.run(["ip", "-s", "-j", "link", "show", "dev", ifname]).stdout)[0]
            total += info["stats64"]["rx"]["packets"]
        return total


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with tempfile.TemporaryDirectory() as d, Path3() as path:
        www = Path(d)
        (www / "big").write_bytes(os.urandom(BIG))
        (www / "small").write_bytes(b"hello\n")
        srv = path.server.popen([PY, "-m", "http.server", "8080", "--bind", "::", "--directory", str(www)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                if path.server.run(["ss", "-Hltn", "sport = :8080"], check=False).stdout.strip():
                    break
                time.sleep(0.05)
            yield Lab(path, www)
        finally:
            srv.kill()
            srv.wait()


@pytest.fixture(autouse=True)
def no_leftovers(lab: Lab) -> Iterator[None]:
    yield
    # Whatever a test did, the next one starts from a clean router.
    lab.router.run([PY, "-m", "dpi.run", "cleanup"], check=False)


def scrape(lab: Lab, port: int) -> dict[str, float]:
    """Metric name → sum over its label sets."""
    text = lab.router.run(["curl", "-s", f"http://127.0.0.1:{port}/metrics"]).stdout
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def read_pcap(path: Path) -> tuple[int, list[bytes]]:
    data = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", data, 0)
    assert magic == 0xA1B2C3D4
    off, pkts = 24, []
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack_from("<IIII", data, off)
        pkts.append(data[off + 16: off + 16 + incl])
        off += 16 + incl
    return linktype, pkts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


V4 = f"http://{Path3.SERVER_V4}:8080"
V6 = f"http://[{Path3.SERVER_V6}]:8080"


# -- the plumbing ------------------------------------------------------------------------------------------------------
def test_blocked_host_fails_other_passes_fast_path_offloads_and_sigterm_removes_rules(lab: Lab, tmp_path: Path) -> None:
    log, pcap, port = tmp_path / "events.jsonl", tmp_path / "censored.pcap", free_port()
    live = Live(lab.router, "--queues", "0-1", "--log", str(log), "--pcap", str(pcap),
                "--metrics", f"127.0.0.1:{port}")
    try:
        assert "queues 0-1" in live.first and "IPv4+IPv6" in live.first
        assert len(lab.redweb_rules()) == 2 * (1 + 8 + 1)  # per family: chain, 8 rules, one jump from FORWARD

        # An accepted 5 MB download: after its first data packet the flow is in the kernel's hands.
        before = lab.forwarded_packets()
        assert lab.curl(f"{V4}/big") == (0, f"200 {BIG}")
        forwarded = lab.forwarded_packets() - before
        wait_for(lambda: scrape(lab, port).get("redweb_offloaded_flows_total", 0) >= 1, "an offloaded flow")
        queued = scrape(lab, port)["redweb_packets_total"]
        assert forwarded > 3000 and queued * 50 < forwarded, (queued, forwarded)

        assert lab.curl(f"{V6}/big") == (0, f"200 {BIG}")
        rc, _ = lab.curl(f"{V4}/small", host="blocked.test", max_time=1)
        assert rc == 28  # the request and its retransmissions are dropped: curl times out
        rc, _ = lab.curl(f"{V6}/small", host="blocked.test", max_time=1)
        assert rc == 28
        m = scrape(lab, port)
        assert m["redweb_rule_actions_total"] >= 2 and m["redweb_process_errors_total"] == 0
        # Dropped flows leave the queue too: retransmissions of the blocked request are dropped by the connmark.
        assert m["redweb_packets_total"] < 60
    finally:
        rc, out, err = live.finish(signal.SIGTERM)
    assert rc == 0, err
    assert "rule plumbing-host: drop x2" in out and "flows offloaded" in out
    assert lab.redweb_rules() == []
    assert lab.curl(f"{V4}/small", host="blocked.test") == (0, "200 6")  # traffic flows without the censor

    events = read_log(log)
    assert events[0]["event"] == "start" and events[-1]["event"] == "stop" and events[-1]["reason"] == "SIGTERM"
    blocks = [e for e in events if e["event"] == "block"]
    assert {e["server"] for e in blocks} == {f"{Path3.SERVER_V4}:8080", f"{Path3.SERVER_V6}:8080"}
    assert events[-1]["counters"]["rule:plumbing-host:drop"] == 2

    # The pcap holds the censored flows only (both, whole from their SYN), not the 5 MB downloads.
    linktype, pkts = read_pcap(pcap)
    assert linktype == 101
    flows = {flow_key(p) for p in pkts}
    assert len(flows) == 2
    assert sum(b"Host: blocked.test" in p for p in pkts) >= 2
    assert all(len(p) < 200 for p in pkts)  # no 1500-byte data segments of the downloads
    syns = [p for p in pkts if (p[0] >> 4 == 4 and p[33] == 0x02) or (p[0] >> 4 == 6 and p[53] == 0x02)]
    assert len(syns) == 2


def test_forged_rst_at_its_delay_and_residual_shared_by_workers(lab: Lab, tmp_path: Path) -> None:
    # Extra client addresses: --queue-balance hashes address pairs, so they spread over both queues; a residual
    # entry added by one worker must block the new connections that land on the other.
    extra = [f"10.9.1.{i}" for i in range(10, 18)]
    for a in extra:
        lab.client.run(["ip", "addr", "add", f"{a}/24", "dev", lab.path.client_if], check=False)
    log = tmp_path / "events.jsonl"
    live = Live(lab.router, "--queues", "0-1", "--log", str(log))
    try:
        assert lab.curl(f"{V4}/small", host="reset.test")[0] == 56  # connection reset by the forged RST/ACK
        assert lab.curl(f"{V6}/small", host="reset.test")[0] == 56
        for a in extra:
            rc, _ = lab.curl(f"{V4}/small", extra=("--interface", a))
            assert rc == 7, a  # the SYN is answered with a forged RST: "couldn't connect"
        assert lab.curl(f"{V4}/small")[0] == 7
    finally:
        rc, out, err = live.finish()
        for a in extra:
            lab.client.run(["ip", "addr", "del", f"{a}/24", "dev", lab.path.client_if], check=False)
    assert rc == 0, err
    stop = read_log(log)[-1]
    assert stop["counters"]["nfq:injected"] >= 2 + len(extra)
    assert stop["counters"]["residual:hit"] >= len(extra)
    assert stop["counters"]["nfq:inject_errors"] == 0
    c = stop["counters"]  # a censor written in Python is called for every queued packet (not settled by its mark)
    assert c["nfq:python"] == c["nfq:packets"] - c["nfq:fallthrough"] > 0
    hits_per_queue = [c.get("residual:hit", 0) for c in stop["queues"].values()]
    assert sum(hits_per_queue) >= len(extra)


def test_sigkill_leaves_rules_that_the_next_run_and_cleanup_remove(lab: Lab) -> None:
    live = Live(lab.router, "--queues", "0-1")
    workers = live.children()
    rc, _, _ = live.finish(signal.SIGKILL)
    assert rc == -9
    # The workers die with their supervisor (PR_SET_PDEATHSIG) and release the queues...
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in workers), "workers to exit")
    stale = lab.redweb_rules()
    assert len(stale) == 20
    # ...so with --queue-bypass traffic flows uncensored while the rules are stale.
    assert lab.curl(f"{V4}/small", host="blocked.test") == (0, "200 6")

    second = Live(lab.router, "--queues", "0")
    assert "found 20 stale RedWeb rules" in second.first and "removing them first" in second.first
    assert lab.curl(f"{V4}/small", host="blocked.test", max_time=1)[0] == 28
    rc, _, _ = second.finish(signal.SIGKILL)
    assert len(lab.redweb_rules()) == 2 * (1 + 8 + 1)

    r = lab.router.run([PY, "-m", "dpi.run", "cleanup"], check=False)
    assert r.returncode == 0 and "removed 20" in r.stdout
    assert lab.redweb_rules() == []
    r = lab.router.run([PY, "-m", "dpi.run", "cleanup"], check=False)
    assert r.returncode == 0 and "no RedWeb rules" in r.stdout


def test_fragment_table_lives_and_dies_with_the_run_T22_5(lab: Lab) -> None:
    """tspu-2022 forwards fragments uninspected (flows.fragments: forward): its run adds the nftables table that
    keeps conntrack from reassembling them, and every way out removes it like the iptables rules."""
    live = Live(lab.router, "--queues", "0", profile="tspu-2022", module="dpi.cli")
    rules = lab.redweb_rules()
    assert "nft table inet redweb" in rules and len(rules) == 21
    assert "notrack" in lab.router.run(["nft", "list", "table", "inet", "redweb"]).stdout
    assert live.finish()[0] == 0 and lab.redweb_rules() == []  # SIGTERM

    assert Live(lab.router, "--queues", "0", profile="tspu-2022", module="dpi.cli").finish(signal.SIGKILL)[0] == -9
    assert lab.redweb_rules() == rules  # a killed run leaves its table with its rules
    again = Live(lab.router, "--queues", "0", profile="tspu-2022", module="dpi.cli")
    assert "found 21 stale RedWeb rules" in again.first and lab.redweb_rules() == rules
    lab.router.run(["nft", "delete", "table", "inet", "redweb"])  # by hand, behind the censor's back
    assert again.finish(signal.SIGKILL)[0] == -9

    r = lab.router.run([PY, "-m", "dpi.run", "cleanup"], check=False)
    assert r.returncode == 0 and "removed 20" in r.stdout and lab.redweb_rules() == []
    # a profile that reassembles (the default) never adds the table
    plain = Live(lab.router, "--queues", "0", profile="gfw", module="dpi.cli")
    assert not any(r.startswith("nft") for r in lab.redweb_rules())
    assert plain.finish()[0] == 0


def test_interface_limits_the_censor_to_traffic_crossing_that_link(lab: Lab) -> None:
    """--interface: only packets entering or leaving through the named link reach the chain (both directions
    of a flow cross it, so flows stay whole); traffic on other links is never seen."""
    client_side = lab.path.router_ifs[0]
    live = Live(lab.router, "--queues", "0", "--interface", client_side)
    try:
        assert f"on {client_side}" in live.first
        jumps = [r for r in lab.redweb_rules() if "-A FORWARD" in r]
        assert sorted(j.split(" -A FORWARD ")[1].split(" -m comment")[0] for j in jumps) == sorted(
            [f"-i {client_side}", f"-o {client_side}"] * 2)  # in and out, both families
        assert lab.curl(f"{V4}/small", host="blocked.test", max_time=1)[0] == 28
        assert lab.curl(f"{V4}/small") == (0, "200 6")
    finally:
        assert live.finish()[0] == 0
    assert lab.redweb_rules() == []
    wildcard = Live(lab.router, "--queues", "0", "--interface", lab.path.prefix + "r+")
    try:
        assert lab.curl(f"{V6}/small", host="blocked.test", max_time=1)[0] == 28
    finally:
        assert wildcard.finish()[0] == 0
    other = Live(lab.router, "--queues", "0", "--interface", "lo")  # a link this traffic never crosses
    try:
        assert lab.curl(f"{V4}/small", host="blocked.test") == (0, "200 6")
    finally:
        assert other.finish()[0] == 0
    assert lab.redweb_rules() == []


def test_queue_already_bound_is_a_one_line_preflight_error(lab: Lab) -> None:
    holder = lab.router.popen([PY, "-c", "from netfilterqueue import NetfilterQueue as Q; import sys, time; "
                               "q = Q(); q.bind(3, lambda p: p.accept()); print('bound', flush=True); time.sleep(60)"],
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
        rc, out, err = Live(lab.router, "--queues", "2-3", expect_ready=False).finish(None)
        assert rc == 2
        assert err.strip().count("\n") == 0 and "queue 3 is already bound" in err
        assert lab.redweb_rules() == []  # preflight changed nothing
    finally:
        holder.kill()
        holder.wait()

    first = Live(lab.router, "--queues", "0")
    try:
        rc, _, err = Live(lab.router, "--queues", "0", expect_ready=False).finish(None)
        assert rc == 2 and "queue 0 is already bound" in err
        assert len(lab.redweb_rules()) == 20  # the running censor's rules are untouched
    finally:
        assert first.finish()[0] == 0


def test_engine_exception_fails_open_logged_once_or_fails_closed(lab: Lab, tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    live = Live(lab.router, "--log", str(log))
    try:
        for _ in range(2):
            assert lab.curl(f"{V4}/small", extra=("-H", "X-Plumbing: raise")) == (0, "200 6")
    finally:
        rc, out, err = live.finish()
    assert rc == 0
    errors = [e for e in read_log(log) if e["event"] == "error"]
    assert len(errors) == 1 and "plumbing censor asked to raise" in errors[0]["error"]
    assert b"X-Plumbing: raise" in bytes.fromhex(errors[0]["packet"])
    assert read_log(log)[-1]["counters"]["nfq:errors"] == 2  # each failing packet counted
    assert err.count("asked to raise") == 1  # and logged once

    closed = Live(lab.router, "--fail-closed")
    try:
        assert "fail-closed" in closed.first
        assert lab.curl(f"{V4}/small", extra=("-H", "X-Plumbing: raise"), max_time=1)[0] == 28
        assert lab.curl(f"{V4}/small") == (0, "200 6")
    finally:
        assert closed.finish()[0] == 0
    assert lab.redweb_rules() == []


def test_dead_worker_without_restarts_stops_the_run_and_removes_rules(lab: Lab) -> None:
    # --restart-limit 0: a dead worker ends the run (restarts: tests/test_robustness_faults.py).
    live = Live(lab.router, "--queues", "0", "--restart-limit", "0")
    workers = [p for p in live.children() if comm(p) == "redweb-q0"]
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    rc, out, err = live.finish(None)  # no signal: the supervisor must notice on its own
    assert rc == 1
    assert "worker for queue 0 died" in err and "--restart-limit" in err
    assert lab.redweb_rules() == []


def comm(pid: int) -> str:
    """The process name a RedWeb process gives itself (redweb-qN: a queue worker; redweb-residual: the manager)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_local_mode_censors_the_hosts_own_traffic(lab: Lab) -> None:
    live = Live(lab.client, "--local", "--no-ipv6")
    try:
        assert "this host's traffic" in live.first and "IPv4," in live.first
        rules = [line for line in lab.client.run(["iptables", "-S"]).stdout.splitlines() if "redweb" in line]
        assert any(line.startswith("-A OUTPUT") for line in rules)
        assert lab.client.run(["ip6tables", "-S"]).stdout.count("redweb") == 0
        assert lab.curl(f"{V4}/small") == (0, "200 6")
        assert lab.curl(f"{V4}/small", host="blocked.test", max_time=1)[0] == 28
        assert lab.curl(f"{V4}/small", host="reset.test")[0] == 56  # RST forged to this very host
        assert lab.curl(f"{V6}/small", host="blocked.test") == (0, "200 6")  # --no-ipv6
    finally:
        rc, out, err = live.finish()
    assert rc == 0, err
    assert "redweb" not in lab.client.run(["iptables", "-S"]).stdout


@pytest.mark.parametrize("args, message", [
    (["--inside", "10.9.1.2/24"], "did you mean 10.9.1.0/24"),
    (["--inside", "nonsense"], "bad CIDR"),
    (["--queues", "3-1"], "bad queue range"),
    (["--metrics", "localhost"], "bad metrics address"),
    (["--log", "/nonexistent/dir/log"], "does not exist"),
])
def test_preflight_errors_are_one_line_exit_2_and_change_nothing(lab: Lab, args: list[str], message: str) -> None:
    rc, out, err = Live(lab.router, *args, expect_ready=False).finish(None)
    assert rc == 2 and message in err and err.strip().count("\n") == 0, err
    assert lab.redweb_rules() == []


def test_preflight_not_root_and_bad_profile(lab: Lab) -> None:
    r = subprocess.run(lab.router.cmd(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PY, "-m",
                                       "tests.plumbing_censor", "run", "--profile", "plumbing"]),
                       cwd=str(ROOT), text=True, capture_output=True, timeout=WAIT)
    assert r.returncode == 2 and "must run as root" in r.stderr
    r = subprocess.run(lab.router.cmd([PY, "-m", "dpi.run", "run", "--profile", "no-such-profile"]),
                       cwd=str(ROOT), text=True, capture_output=True, timeout=WAIT)
    assert r.returncode == 2 and r.stderr.startswith("redweb: error:") and r.stderr.strip().count("\n") == 0
    assert "no-such-profile" in r.stderr
    assert lab.redweb_rules() == []


def test_injector_keeps_ip_id_zero_with_df_clear_for_gfw_type1(lab: Lab) -> None:
    # G-3 Type I: IP ID 0 with DF=0. A raw IPv4 socket would let the kernel replace ID 0; the injector must not.
    capture = ("import socket, sys\n"
               "s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3)); s.settimeout(10)\n"
               "print('ready', flush=True)\n"
               "while True:\n"
               "    d = s.recv(65535)\n"
               "    if d[:1] == b'\\x45' and d[9] == 17 and b'PROBE' in d:\n"
               "        print(d.hex(), flush=True); break\n")
    send = ("import socket, struct\n"
            "from dpi.inject import Injector\n"
            "from tests.plumbing_censor import _csum\n"
            "udp = struct.pack('!HHHH', 1234, 9, 13, 0) + b'PROBE'\n"
            "ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 33, 0, 0, 77, 17, 0, socket.inet_aton('10.9.1.2'),"
            " socket.inet_aton('10.9.2.2'))\n"
            "Injector().send(ip[:10] + struct.pack('!H', _csum(ip)) + ip[12:] + udp)\n")
    cap = lab.server.popen([PY, "-c", capture], text=True)
    try:
        assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
        r = subprocess.run(lab.router.cmd([PY, "-c", send]), cwd=str(ROOT), capture_output=True, text=True,
                           timeout=WAIT)
        assert r.returncode == 0, r.stderr
        got = bytes.fromhex(cap.communicate(timeout=WAIT)[0].strip())
    finally:
        cap.kill()
    ip_id, frag = struct.unpack_from("!HH", got, 4)
    assert (ip_id, frag & 0x4000, got[8]) == (0, 0, 77)
    assert got[12:16] == socket.inet_aton("10.9.1.2")  # spoofed source kept


# -- the real engine ---------------------------------------------------------------------------------------------------
def test_real_engine_gfw_host_reset_and_residual_inline(lab: Lab, tmp_path: Path) -> None:
    pytest.importorskip("dpi.engine")
    log = tmp_path / "events.jsonl"
    live = Live(lab.router, "--queues", "0-1", "--log", str(log), module="dpi.run", profile="gfw")
    try:
        before = lab.forwarded_packets()
        assert lab.curl(f"{V4}/big", host="example.org") == (0, f"200 {BIG}")
        forwarded = lab.forwarded_packets() - before
        # G-1/G-3: a listed Host gets forged RSTs; the client sees its connection reset.
        assert lab.curl(f"{V4}/small", host="www.google.com")[0] in (52, 56)
        # G-4: the 3-tuple is now reset at the SYN, whatever the Host.
        assert lab.curl(f"{V4}/small", host="example.org")[0] == 7
        assert lab.curl(f"{V6}/small", host="example.org") == (0, "200 6")  # another 3-tuple
    finally:
        rc, out, err = live.finish()
    assert rc == 0, err
    assert "rule host-reset: rst x1" in out
    events = read_log(log)
    rule = [e for e in events if e["event"] == "rule"]
    assert len(rule) == 1 and rule[0]["rule"] == "host-reset" and "G-3" in rule[0]["implements"]
    assert any(e["event"] == "residual" for e in events)
    stop = events[-1]["counters"]
    assert stop["nfq:packets"] * 20 < forwarded  # the accepted download left the queue (fast path)
    assert stop["nfq:injected"] >= 2 and stop["nfq:errors"] == 0


# -- pieces without a namespace --------------------------------------------------------------------------------------
def _residual_writer(store, key) -> None:  # type: ignore[no-untyped-def]
    store.add(key, time.monotonic() + 60, "rst", "sni-reset")


def test_shared_residual_crosses_processes_and_expires() -> None:
    shared = SharedResidual()
    try:
        key = ("3", 6, b"\x0a\x09\x01\x02", b"\x0a\x09\x02\x02", 443)  # G-4: the 3-tuple
        p = multiprocessing.get_context("fork").Process(target=_residual_writer, args=(shared.store, key))
        p.start()
        p.join(WAIT)
        assert p.exitcode == 0
        now = time.monotonic()
        assert shared.store.lookup(key, now) == ("rst", "sni-reset")
        assert shared.store.lookup(("3", 6, b"\x0a\x09\x01\x03", b"\x0a\x09\x02\x02", 443), now) is None
        assert shared.store.lookup(key, now + 61) is None  # expired...
        assert shared.store.lookup(key, now) is None  # ...and forgotten
    finally:
        shared.close()


def test_metrics_render_prometheus_text() -> None:
    text = render({0: {"nfq:packets": 10, "nfq:accept": 9, "nfq:drop": 1, "rule:sni:reset:rst": 2,
                       "flows": 3},
                   1: {"nfq:packets": 5, "residual:sni-reset:rst": 1}})
    lines = text.splitlines()
    assert 'redweb_packets_total{queue="0"} 10' in lines and 'redweb_packets_total{queue="1"} 5' in lines
    assert 'redweb_verdicts_total{queue="0",verdict="drop"} 1' in lines
    assert 'redweb_rule_actions_total{queue="0",rule="sni:reset",action="rst"} 2' in lines
    assert 'redweb_engine_total{queue="1",counter="residual:sni-reset:rst"} 1' in lines
    assert lines.count("# TYPE redweb_packets_total counter") == 1
    assert split_rule_counter("rule:a:b") == ("a", "b") and split_rule_counter("packets") is None
    assert parse_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_address("[::1]:9100") == ("::1", 9100)
    assert parse_address(":9100") == ("0.0.0.0", 9100)
    with pytest.raises(ValueError):
        parse_address("9100x")


def test_flow_key_is_direction_free_and_counters_adapt() -> None:
    from tests.plumbing_censor import PlumbingCensor, _tcp_packet
    a, b = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    there = _tcp_packet(False, a, b, 1000, 80, 1, 0, 0x02)
    back = _tcp_packet(False, b, a, 80, 1000, 1, 2, 0x12)
    other = _tcp_packet(False, a, b, 1001, 80, 1, 0, 0x02)
    assert flow_key(there) == flow_key(back) != flow_key(other)
    assert flow_key(b"") is None and flow_key(b"\x45") is None
    c = PlumbingCensor()
    c.process(there, 0.0)
    assert censor_counters(c) == {"packets": 1}

    class EngineLike:  # dpi.engine.Censor keeps `counters` as a Counter and offers counters_snapshot()
        counters = {"x": 1}

        def counters_snapshot(self) -> dict[str, int]:
            return {"packets": 7}

    assert censor_counters(EngineLike()) == {"packets": 7}
