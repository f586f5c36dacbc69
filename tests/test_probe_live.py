"""Every "must evade" / "must NOT evade" line of CENSOR-MODELS.md, end to end with `redweb probe`.

client -- router (`redweb run --profile NAME`, a bundled profile) -- server, in namespaces. The server runs the
lab's HTTPS server (topologies/webserver.py: Python's ssl, i.e. OpenSSL, one thread per connection) on several
TCP ports and the lab's aioquic HTTP/3 server (topologies/h3server.py) on UDP ports, with a certificate from the
lab CA for the lab names. (Not `openssl s_server -WWW`: it serves one connection at a time, so a connection the
censor blackholes in mid-handshake, T22-2, would stall every later check on its port.) The client runs
`python -m dpi.probe` (what `redweb probe` runs) with one strategy at a time. For each line the outcome for the
blocked name with the strategy is compared with the baseline (`none`), and the censor's event log says whether
it fired on that very connection.

Residual blocking (G-4, GQ-2) outlives a blocked connection on its 3-tuple (client, server, server port): every
check that gets blocked runs on a server port of its own, so no check inherits another one's residual.

Lab facts that shape the checks (not missing features):
- fake-first uses `via=checksum`: on a client-router-server path the censor is the last hop, so a TTL that
  expires after the censor cannot exist (via=ttl is checked byte for byte in tests/test_strategies.py).
- OpenSSL rejects a ChangeCipherSpec record before the ClientHello (unexpected_message alert), so `ccs-first`
  with its default record evades the censor (no censorship event, the server's alert reaches the client) but
  cannot complete a fetch; the same "another TLS record first" with `record=empty-handshake`, which OpenSSL
  skips, completes at link speed.
- Waiting out the 10-minute idle timeout (T21-6, T21-E) runs against tspu-2021 with only its idle timeout
  scaled down to 3 s (a profile that includes the bundled one); the injected RST / FIN of T21-E goes out with a
  wrong checksum, so it reaches the censor and not the server.
- IP fragmentation (T22-5, T22-E) runs live: tspu-2022 has `flows.fragments: forward`, so `redweb run` keeps the
  router's connection tracking from reassembling fragments in front of the queue (dpi.nodefrag); gfw keeps the
  default `reassemble`, and the same fragmented ClientHello is read and reset.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dpi.measure.profiles import with_idle_timeout
from tests.live import PY, ROOT, Live, read_log, wait_for
from tests.netns import Path3

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ("iptables", "ip6tables")),
                       reason="needs root, iptables and ip6tables"),
]

BLOCKED, ALLOWED = "twitter.com", "example.org"  # on every bundled list that these profiles use / on none
TLS_PORTS = (443, 8443, 9443)
QUIC_PORTS = (443, 8443)
BIG = 1_000_000
POLICER_KBPS = 140  # rules/tspu-2021.yaml (T21-4)
LINK_KBPS = 10 * POLICER_KBPS  # "at link speed": the lab's unthrottled path runs far above this
INSIDE = ("--inside", "10.9.1.0/24", "--inside", "fd09:1::/64")


UDP_PORT = 9999  # not 443: the QUIC rules (T22-4) leave it alone
UDP_SINK = f"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", {UDP_PORT}))
print("ready", flush=True)
while True:
    print(len(s.recvfrom(65535)[0]), flush=True)
"""
# argv: family, then fragment counts. A datagram of n fragments of 8 bytes has 8 * n - 8 bytes of payload.
FRAGMENT_SENDER = f"""
import sys, time
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from dpi.strategies.rawtcp import ip_fragments, send_raw
v6 = sys.argv[1] == "6"
for n in map(int, sys.argv[2:]):
    l3 = IPv6(src="{Path3.CLIENT_V6}", dst="{Path3.SERVER_V6}") if v6 else IP(src="{Path3.CLIENT_V4}", dst="{Path3.SERVER_V4}")
    packet = bytes(l3 / UDP(sport=40000 + n, dport={UDP_PORT}) / (b"f" * (8 * n - 8)))
    fragments = ip_fragments(packet, 8, ident=0x5200 + n)  # one IP ID per datagram, as a real stack sends
    assert len(fragments) == n, (n, len(fragments))
    send_raw(*fragments)
    time.sleep(0.1)
"""


def _labca() -> ModuleType:
    """topologies/labca.py, the lab's CA (a plain module, not part of the package)."""
    if "labca" in sys.modules:
        return sys.modules["labca"]
    spec = importlib.util.spec_from_file_location("labca", ROOT / "topologies" / "labca.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["labca"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class Lab:
    def __init__(self, path: Path3, base: Path, ca: Path) -> None:
        self.path, self.base, self.ca = path, base, ca
        self.client, self.router, self.server = path.client, path.router, path.server

    def probe(self, strategy: str, *args: str, name: str = BLOCKED, port: int = 443, timeout: float = 2.5,
              download: int | None = BIG, v6: bool = False, quic: bool = False) -> dict:
        """`python -m dpi.probe` in the client namespace, downloading BIG bytes; its JSON result."""
        address = Path3.SERVER_V6 if v6 else Path3.SERVER_V4
        cmd = [PY, "-m", "dpi.probe", "--strategy", strategy, f"https://{name}:{port}/bytes/{BIG}",
               "--resolve", f"{name}:{address}", "--cacert", str(self.ca), "--timeout", str(timeout), "--json"]
        for a in args:
            cmd += ["--strategy-arg", a]
        if download is not None:
            cmd += ["--download", str(download)]
        if quic:
            cmd.append("--quic")
        r = subprocess.run(self.client.cmd(cmd), cwd=str(ROOT), text=True, capture_output=True, timeout=timeout + 30)
        assert r.returncode in (0, 1), (r.returncode, r.stderr)
        result = json.loads(r.stdout)
        assert (result["outcome"] == "ok") == (r.returncode == 0)
        return result

    def fragmented_datagrams(self, fragments: list[int], *, v6: bool = False) -> list[int]:
        """Send one UDP datagram per entry, each built to leave the client as exactly that many IP fragments of
        8 bytes (raw socket); return the payload sizes the server's socket received (reassembled by its stack)."""
        sink = self.server.popen([PY, "-c", UDP_SINK], text=True)
        try:
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            r = self.client.run([PY, "-c", FRAGMENT_SENDER, "6" if v6 else "4", *map(str, fragments)], timeout=30)
            assert r.returncode == 0, r.stderr
            time.sleep(0.5)  # the last datagram crosses the censor
        finally:
            sink.terminate()
        out, _ = sink.communicate(timeout=10)
        return [int(n) for n in out.split()]

    def helper(self, *args: str) -> subprocess.Popen[str]:
        """`python -m dpi.probe server-side ...` in the server namespace, once it says it is ready."""
        proc = subprocess.Popen(self.server.cmd([PY, "-m", "dpi.probe", "server-side", *args]), cwd=str(ROOT),
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if '"ready"' not in line:
            proc.kill()
            raise AssertionError(line + proc.communicate()[1])
        return proc


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with tempfile.TemporaryDirectory() as d, Path3() as path:
        base = Path(d)
        certs = _labca().make_lab_ca(base / "ca", [BLOCKED, ALLOWED])
        tls = ["--cert", str(certs.server_cert), "--key", str(certs.server_key)]
        servers = [[PY, str(ROOT / "topologies" / "webserver.py"), *tls, "--http", "0", "--https", str(port)]
                   for port in TLS_PORTS]
        servers += [[PY, str(ROOT / "topologies" / "h3server.py"), *tls, "--bind", Path3.SERVER_V4,
                     "--bind", Path3.SERVER_V6, "--port", str(port)] for port in QUIC_PORTS]
        procs = [path.server.popen(cmd, text=True, stderr=subprocess.DEVNULL) for cmd in servers]
        try:
            for proc in procs:  # both print one "ready ..." line once they listen
                assert proc.stdout is not None and proc.stdout.readline().startswith("ready"), proc.args
            yield Lab(path, base, certs.ca_cert)
        finally:
            for p in procs:
                p.kill()
                p.wait()


class Censor:
    """A `redweb run --profile NAME` in the router for one test class, and its event log."""

    def __init__(self, lab: Lab, profile: str) -> None:
        self.log = lab.base / f"{Path(profile).stem}.jsonl"
        self.live = Live(lab.router, *INSIDE, "--log", str(self.log), "--seed", "1", profile=profile)

    def events(self, result: dict) -> list[dict[str, Any]]:
        """Censorship events on the probe's own connection (its client address and port)."""
        return [e for e in read_log(self.log) if e.get("event") in ("rule", "residual")
                and e.get("client") == result["local"]]

    def fired(self, result: dict, action: str) -> dict[str, Any]:
        """The event of `action` on the probe's connection (waits for the log line)."""
        found: list[dict[str, Any]] = []
        wait_for(lambda: found.extend(e for e in self.events(result) if e["action"] == action) or found,
                 f"a {action} event for {result['local']}")
        return found[0]


@pytest.fixture(scope="class")
def censor(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Censor]:
    """The bundled profile `PROFILE` of the test class, censoring the lab's client networks."""
    profile: str = request.cls.PROFILE
    assert (ROOT / "rules" / f"{profile}.yaml").exists(), f"bundled profile {profile} missing"
    idle: float | None = getattr(request.cls, "IDLE_TIMEOUT", None)
    if idle is not None:  # the bundled profile, included unchanged but for its idle timeout
        profile = str(with_idle_timeout(profile, idle, lab.base / f"{profile}-idle-{idle:g}s.yaml"))
    timestamps = getattr(request.cls, "CLIENT_TCP_TIMESTAMPS", True)
    lab.client.run(f"sysctl -qw net.ipv4.tcp_timestamps={int(timestamps)}")
    censor = Censor(lab, profile)
    try:
        yield censor
    finally:
        rc, _, err = censor.live.finish()
        lab.client.run("sysctl -qw net.ipv4.tcp_timestamps=1")
        lab.router.run([PY, "-m", "dpi.cli", "cleanup"], check=False)
        assert "REDWEB" not in lab.router.run(["iptables", "-S"]).stdout
        assert "redweb" not in lab.router.run(["nft", "list", "tables"]).stdout
    assert rc == 0, err


def ok_at_link_speed(r: dict) -> None:
    assert r["outcome"] == "ok" and r["http_status"] == 200, r
    assert r["body_bytes"] >= BIG and r["goodput_kbps"] > LINK_KBPS, r


def held_back(censor: Censor, r: dict) -> None:
    """T21-4: the policer held this fetch back. Most fetches end `throttled` (body bytes arriving slowly when
    the time runs out); against the 16 KB bucket TCP sometimes loses a whole window and its retransmission
    backoff leaves the link silent for over a second just as the time runs out, which the probe reports as a
    `timeout` that stalled after some body bytes. Either way: not the whole body, and the throttle fired."""
    assert r["outcome"] in ("throttled", "timeout") and 0 < r["body_bytes"] < BIG, r
    assert r["outcome"] == "timeout" or r["goodput_kbps"] < LINK_KBPS, r
    assert censor.fired(r, "throttle")["names"]["sni"] == [BLOCKED]


def evaded(censor: Censor, r: dict) -> None:
    """The censor took no action on this connection (no rule, no residual)."""
    assert censor.events(r) == [], censor.events(r)


# ---------------------------------------------------------------------------------------------------------------
class TestTspu2021:
    """T21-E: throttling of Twitter's SNI (T21-1, T21-4) and the ways around it."""

    PROFILE = "tspu-2021"

    def test_baseline_blocked_name_throttled_allowed_name_at_link_speed(self, lab: Lab, censor: Censor) -> None:
        r = lab.probe("none")
        assert r["http_status"] == 200, r
        held_back(censor, r)
        ok_at_link_speed(lab.probe("none", name=ALLOWED))

    @pytest.mark.parametrize("strategy,args", [
        ("tcp-segment", ()),                       # T21-2: the ClientHello must sit whole in one segment
        ("padding", ()),                           # T21-2: padded past one packet
        ("fake-first", ("kind=random",)),          # T21-3: >= 101 random bytes first release the flow
        ("ccs-first", ("record=empty-handshake",)),  # T21-E: another TLS record first, one OpenSSL accepts
        ("trailing-dot", ()),                      # T21-E: `twitter.com.` is not `*twitter.com`
    ])
    def test_T21_E_must_evade(self, lab: Lab, censor: Censor, strategy: str, args: tuple[str, ...]) -> None:
        r = lab.probe(strategy, *args)
        ok_at_link_speed(r)
        evaded(censor, r)

    def test_T21_E_ccs_record_first_evades_the_censor_but_openssl_rejects_it(self, lab: Lab, censor: Censor) -> None:
        r = lab.probe("ccs-first")  # record=ccs: the ChangeCipherSpec of T21-E
        assert r["outcome"] == "error" and r["server_rejected"], r
        assert "unexpected_message" in r["reason"], r
        evaded(censor, r)

    def test_T21_E_must_not_evade_a_single_fake_clienthello(self, lab: Lab, censor: Censor) -> None:
        """T21-3: a non-matching ClientHello first keeps the flow under inspection; the real one is caught."""
        held_back(censor, lab.probe("fake-first", "kind=decoy", f"decoy={ALLOWED}"))

    @pytest.mark.parametrize("args", [("flags=rst",), ("flags=fin",), ("flags=rst-ack", "when=before")])
    def test_T21_E_must_not_evade_an_injected_rst_or_fin(self, lab: Lab, censor: Censor, args: tuple[str, ...]
                                                         ) -> None:
        """T21-6: the throttling state survives a RST or FIN the censor sees (and the server never gets)."""
        r = lab.probe("tcb-teardown", *args)
        assert any("sent after" in n or "sent before" in n for n in r["notes"]), r  # it did go out
        held_back(censor, r)

    def test_T21_E_over_ipv6_random_fake_evades_decoy_does_not(self, lab: Lab, censor: Censor) -> None:
        """The same two lines over IPv6: the crafted fake segments are IPv6 packets."""
        ok_at_link_speed(r := lab.probe("fake-first", "kind=random", v6=True))
        evaded(censor, r)
        held_back(censor, lab.probe("fake-first", "kind=decoy", v6=True))


# ---------------------------------------------------------------------------------------------------------------
class TestTspu2021IdleTimeout:
    """T21-6 / T21-E "waiting out the idle timeout": tspu-2021 with its ~10-minute timer scaled down to 3 s."""

    PROFILE = "tspu-2021"
    IDLE_TIMEOUT = 3.0

    def test_T21_E_must_evade_waiting_out_the_idle_timeout(self, lab: Lab, censor: Censor) -> None:
        r = lab.probe("idle-wait", "seconds=5")
        censor.fired(r, "throttle")  # throttled from its ClientHello on...
        ok_at_link_speed(r)  # ... and at link speed once the censor has forgotten it

    def test_T21_6_a_shorter_silence_does_not_release_the_flow(self, lab: Lab, censor: Censor) -> None:
        held_back(censor, lab.probe("idle-wait", "seconds=1"))


# ---------------------------------------------------------------------------------------------------------------
class TestGfw:
    """G-E: TLS record fragmentation evades, TCP segmentation does not (G-1 reassembles segments)."""

    PROFILE = "gfw"

    def test_G_E_must_evade_tls_record_fragmentation(self, lab: Lab, censor: Censor) -> None:
        r = lab.probe("tls-record-frag", port=443)
        ok_at_link_speed(r)
        evaded(censor, r)

    def test_baseline_reset(self, lab: Lab, censor: Censor) -> None:
        r = lab.probe("none", port=8443)
        assert r["outcome"] == "reset", r
        assert censor.fired(r, "rst")["rule"] == "sni-reset"

    def test_ip_fragmentation_does_not_evade_a_censor_that_reassembles(self, lab: Lab, censor: Censor) -> None:
        """gfw keeps `flows.fragments: reassemble`: the kernel puts the ClientHello's fragments back together
        in front of the queue, so the censor reads the SNI (the contrast to T22-5 below)."""
        r = lab.probe("ip-fragment")
        assert r["outcome"] == "reset" and any("IP fragments" in n for n in r["notes"]), r
        assert censor.fired(r, "rst")["names"]["sni"] == [BLOCKED]
        assert lab.fragmented_datagrams([46, 60]) == [8 * 45, 8 * 59]  # and no fragment limit applies

    def test_G_E_must_not_evade_tcp_segmentation(self, lab: Lab, censor: Censor) -> None:
        r = lab.probe("tcp-segment", port=9443)
        assert r["outcome"] == "reset", r
        assert any("first flight written as" in n for n in r["notes"]), r
        assert censor.fired(r, "rst")["names"]["sni"] == [BLOCKED]  # reassembled, not a residual (G-4)


# ---------------------------------------------------------------------------------------------------------------
class TestHenan:
    """H-E: any TCP option on the ClientHello segment, the SNI split across segments, or dropping the RSTs
    with Henan's payload evade H-1/H-2."""

    PROFILE = "henan"
    # Linux sends timestamps by default, which alone evades H-1: the baseline client runs without them
    CLIENT_TCP_TIMESTAMPS = False

    def test_baseline_without_timestamps_reset_with_henan_fingerprint(self, lab: Lab, censor: Censor) -> None:
        r = lab.probe("none")
        assert r["outcome"] == "reset", r
        assert censor.fired(r, "rst")["rule"] == "sni-rst"

    def test_H_E_must_evade_tcp_timestamps(self, lab: Lab, censor: Censor) -> None:
        r = lab.probe("tcp-timestamps")
        ok_at_link_speed(r)
        assert any("forced" in n for n in r["notes"]), r  # the system has them off: only this socket has them
        evaded(censor, r)

    def test_H_E_must_evade_sni_split_across_segments(self, lab: Lab, censor: Censor) -> None:
        r = lab.probe("tcp-segment")
        ok_at_link_speed(r)
        evaded(censor, r)

    def test_H_E_must_evade_dropping_rsts_with_the_henan_payload(self, lab: Lab, censor: Censor) -> None:
        """H-2 drops nothing: the censor fires, the client's firewall drops its RST, the fetch completes."""
        r = lab.probe("drop-rst")
        ok_at_link_speed(r)
        assert censor.fired(r, "rst")["rule"] == "sni-rst"
        assert "redweb-probe" not in lab.client.run(["iptables", "-S"]).stdout  # the rule went with the probe


# ---------------------------------------------------------------------------------------------------------------
class TestGfwQuic:
    """GQ-E: a dummy datagram first, source port <= destination port, QUIC v2 and the SNI split across CRYPTO
    frames evade the QUIC SNI blocking."""

    PROFILE = "gfw-quic"

    @pytest.mark.parametrize("strategy", ["quic-dummy-first", "quic-low-sport", "quic-v2", "quic-crypto-split"])
    def test_GQ_E_must_evade(self, lab: Lab, censor: Censor, strategy: str) -> None:
        r = lab.probe(strategy, port=443, quic=True)
        ok_at_link_speed(r)
        assert r["transport"] == "quic"
        if strategy == "quic-low-sport":
            assert int(r["local"].rsplit(":", 1)[1]) <= 443, r
        evaded(censor, r)

    def test_baseline_initial_passes_then_the_flow_is_dropped(self, lab: Lab, censor: Censor) -> None:
        r = lab.probe("none", port=8443, quic=True, timeout=1.5)  # its own port: GQ-2's residual stays there
        assert r["outcome"] == "timeout" and r["timings_ms"]["handshake"] is None, r
        assert censor.fired(r, "blackhole")["names"]["quic_sni"] == [BLOCKED]


# ---------------------------------------------------------------------------------------------------------------
class TestTspu2022:
    """T22-E: segmentation, padding, a record first, server-side window shrinking and split handshake evade
    the SNI blocking (T22-2); a non-QUIC first datagram or QUIC v2 evade the QUIC rule (T22-4)."""

    PROFILE = "tspu-2022"

    def test_baseline_blocked_after_the_clienthello(self, lab: Lab, censor: Censor) -> None:
        r = lab.probe("none", timeout=1.5)
        assert r["outcome"] == "timeout" and r["timings_ms"]["handshake"] is None, r
        assert censor.fired(r, "blackhole")["rule"] == "sni-block"
        ok_at_link_speed(lab.probe("none", name=ALLOWED))

    @pytest.mark.parametrize("strategy,args", [
        ("tcp-segment", ()),
        ("padding", ()),
        ("ccs-first", ("record=empty-handshake",)),
    ])
    def test_T22_E_must_evade(self, lab: Lab, censor: Censor, strategy: str, args: tuple[str, ...]) -> None:
        r = lab.probe(strategy, *args)
        ok_at_link_speed(r)
        evaded(censor, r)

    @pytest.mark.parametrize("v6", [False, True])
    def test_T22_E_must_evade_ip_fragmentation_T22_5(self, lab: Lab, censor: Censor, v6: bool) -> None:
        """T22-5: fragments are forwarded uninspected, so a ClientHello sent as IP fragments is never read."""
        r = lab.probe("ip-fragment", v6=v6)
        ok_at_link_speed(r)
        evaded(censor, r)
        assert any("IP fragments" in n for n in r["notes"]), r

    @pytest.mark.parametrize("v6", [False, True])
    def test_T22_5_packets_of_more_than_45_fragments_are_dropped(self, lab: Lab, censor: Censor, v6: bool) -> None:
        """45 fragments reach the server and are reassembled there; 46 or more never arrive whole."""
        assert lab.fragmented_datagrams([2, 45, 46, 60], v6=v6) == [8, 8 * 44]

    def test_T22_E_ccs_record_first_is_not_blocked_the_server_alert_arrives(self, lab: Lab, censor: Censor) -> None:
        """Were the flow blocked (T22-2 drops everything after the ClientHello), the alert could not arrive."""
        r = lab.probe("ccs-first")
        assert r["outcome"] == "error" and r["server_rejected"], r
        evaded(censor, r)

    def test_T22_E_must_evade_server_side_window_shrinking(self, lab: Lab, censor: Censor) -> None:
        helper = lab.helper("window", "--client", "10.9.1.0/24", "--client", "fd09:1::/64", "--bytes", "64")
        try:
            r = lab.probe("server-window")
        finally:
            helper.terminate()
            out, err = helper.communicate(timeout=20)
        assert helper.returncode == 0, err
        for fam in ("-4", "-6"):  # the helper undid its routes
            assert "window" not in lab.server.run(["ip", fam, "route", "show"]).stdout
        ok_at_link_speed(r)
        evaded(censor, r)

    def test_T22_1_must_evade_split_handshake(self, lab: Lab, censor: Censor) -> None:
        helper = lab.helper("split-handshake", "--port", "443")
        try:
            r = lab.probe("split-handshake")
        finally:
            helper.terminate()
            out, err = helper.communicate(timeout=20)
        assert helper.returncode == 0, err
        sent = [json.loads(line) for line in out.splitlines() if '"syn-sent"' in line]
        assert r["local"] in [e["client"] for e in sent], (r, out)  # the server really sent a SYN first
        ok_at_link_speed(r)
        evaded(censor, r)
        assert "redweb-probe" not in lab.server.run(["iptables", "-S"]).stdout

    def test_T22_4_baseline_quic_v1_dropped(self, lab: Lab, censor: Censor) -> None:
        r = lab.probe("none", quic=True, timeout=1.5)
        assert r["outcome"] == "timeout", r
        assert censor.fired(r, "blackhole")["rule"] == "quic-v1"

    @pytest.mark.parametrize("strategy", ["quic-dummy-first", "quic-v2"])
    def test_T22_E_must_evade_quic(self, lab: Lab, censor: Censor, strategy: str) -> None:
        r = lab.probe(strategy, quic=True)
        ok_at_link_speed(r)
        evaded(censor, r)
