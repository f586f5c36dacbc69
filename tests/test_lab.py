"""`redweb lab` and `redweb demo`: the lab CA, the services answering through the censor, the demo's table, and a
tear-down that leaves nothing behind (links, namespaces, iptables rules, processes) after a normal end,
SIGTERM, Ctrl-C, or even SIGKILL followed by the next lab's sweep."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpi import demo
from dpi.lab import (HOSTED_NAMES, LAB_NAMES, CurlResult, DigResult, Lab, LabConfig, LabError, STATE_DIR, _banner,
                     _lab_id_alive, lab_state_clean, parse_script, sweep_dead_labs)

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO / "topologies"))
import labca  # noqa: E402
import webserver  # noqa: E402

from tests.labmark import HAVE_MININET, needs_lab  # noqa: E402


# ---------------------------------------------------------------------------------------------- lab CA

def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, sni: str) -> None:
    """A full TLS handshake between two real `ssl` endpoints over memory BIOs."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for side, obj in (("c", client), ("s", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_lab_ca_certificate_verifies_every_lab_name_and_nothing_else(tmp_path: Path) -> None:
    certs = labca.make_lab_ca(tmp_path, ["twitter.com", "example.org"], ["10.200.1.1"])
    server = webserver.make_context(str(certs.server_cert), str(certs.server_key))
    client = ssl.create_default_context(cafile=str(certs.ca_cert))
    _handshake(server, client, "twitter.com")
    _handshake(server, client, "abs.twitter.com")  # *.name covers subdomains
    _handshake(server, client, "example.org")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client, "wikipedia.org")
    # The system trust store does not know the lab CA: nothing outside the lab trusts it.
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, ssl.create_default_context(), "twitter.com")
    assert oct(certs.server_key.stat().st_mode & 0o777) == "0o600"


def test_web_server_body_sizes() -> None:
    assert webserver.parse_size("1000") == 1000
    assert webserver.parse_size("3m") == 3_000_000
    assert webserver.parse_size("-1") is None and webserver.parse_size("x") is None
    assert webserver.parse_size("99999999999999") is None
    assert len(webserver.CHUNK) == 65536


def test_web_server_outlasts_the_idle_wait_of_T21_6() -> None:
    """A client waiting out TSPU-2021's idle timeout (idle-wait, 610 s by default) must find the lab server's end
    of its connection still open; with the server's old 60 s limit the full reproduction's T21-6 cell was an
    error instead of an evasion."""
    from dpi.strategies import build
    assert webserver.IO_TIMEOUT > build("idle-wait").idle_seconds() + 60
    assert webserver.LabHandler.timeout == webserver.IO_TIMEOUT


# ------------------------------------------------------------------------------------------- lab script

def test_parse_script_skips_comments_and_names_bad_lines() -> None:
    text = "# setup\n\nc1 labcurl https://example.org/\n  censor   iptables -S  \n"
    assert parse_script(text) == [("c1", "labcurl https://example.org/"), ("censor", "iptables -S")]
    with pytest.raises(ValueError, match="line 2"):
        parse_script("c1 true\nc2\n")


def test_lab_refuses_non_root_with_one_line_and_exit_2(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    script = tmp_path / "s.txt"
    script.write_text("c1 true\n")
    script.chmod(0o644)
    tmp_path.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for argv in (["-m", "dpi.lab", "--script", str(script)],
                 ["-c", "import argparse,sys; from dpi.demo import main; "
                        "sys.exit(main(argparse.Namespace(profile='gfw')))"]):
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, *argv],
                           capture_output=True, text=True, env=env, cwd="/", timeout=60)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "root" in lines[0], r.stderr


# ------------------------------------------------------------------------------------ demo classification

def _curl(rc: int, size: int = 0, speed: float = 0.0, code: int = 0, error: str = "") -> CurlResult:
    return CurlResult(rc=rc, http_code=code, size=size, speed_bps=speed, seconds=1.0, error=error)


def test_classify_curl_outcomes() -> None:
    assert demo.classify_curl(_curl(0, 3_000_000, 100e6, 200)).kind == "allowed"
    assert demo.classify_curl(_curl(35, error="curl: (35) Recv failure: Connection reset by peer")).kind == "reset"
    assert demo.classify_curl(_curl(56)).kind == "reset"
    assert demo.classify_curl(_curl(7, error="Failed to connect: Connection refused")).kind == "reset"
    assert demo.classify_curl(_curl(7, error="Failed to connect: No route to host")).kind == "error"
    # curl 7.88's wording for a SYN answered by a RST (G-4 residual), fast: reset; at the connect timeout: not
    assert demo.classify_curl(_curl(7, error="curl: (7) Couldn't connect to server")).kind == "reset"
    slow = CurlResult(rc=7, http_code=0, size=0, speed_bps=0.0, seconds=3.0, error="Couldn't connect to server")
    assert demo.classify_curl(slow).kind == "error"
    assert demo.classify_curl(_curl(28)).kind == "timeout"
    t = demo.classify_curl(_curl(28, 105_000, 17_500.0, 200, "Operation timed out after 6000 ms"))
    assert t.kind == "throttled" and t.detail == "140 kbit/s"  # T21-4's rate, as the client measured it
    f = demo.classify_curl(_curl(28, 16_384, 2_700.0, 200, "Operation too slow. Less than 1 bytes/sec"))
    assert f.kind == "frozen" and "16 KB" in f.detail  # T25-1
    # T25-1 with the lab's server: the freeze lands inside the first 16 KB body TLS record, so curl has the
    # status line and headers but decrypted no body byte: still frozen, not "timed out".
    f = demo.classify_curl(_curl(28, 0, 0.0, 200, "Operation too slow. Less than 1 bytes/sec transferred"))
    assert f.kind == "frozen" and f.detail == "after the headers"
    # A stall before any response (a blackholed handshake, T22-2) stays "timed out".
    assert demo.classify_curl(_curl(28, 0, 0.0, 0, "Operation too slow. Less than 1 bytes/sec")).kind == "timeout"
    assert demo.classify_curl(_curl(60)).kind == "error"


def test_classify_quic_and_dns_outcomes() -> None:
    assert demo.classify_quic({"result": "ok", "bytes": 10**6, "speed_bps": 6e6}).kind == "allowed"
    assert demo.classify_quic({"result": "ok", "bytes": 10**6, "speed_bps": 17e3}).kind == "throttled"
    assert demo.classify_quic({"result": "timeout", "bytes": 0, "handshake": False}).cell() == "timed out"
    assert demo.classify_quic({"result": "error", "error": "boom"}).kind == "error"
    assert demo.classify_dns(DigResult(0, "NOERROR", ("10.200.1.2",)), "10.200.1.2").kind == "allowed"
    p = demo.classify_dns(DigResult(0, "NOERROR", ("192.0.2.17",)), "10.200.1.2")
    assert p.kind == "poisoned" and p.detail == "192.0.2.17"  # GD-1: the forged answer won the race
    assert demo.classify_dns(DigResult(9, "", ()), "10.200.1.2").kind == "timeout"
    assert demo.classify_dns(DigResult(0, "NXDOMAIN", ()), "10.200.1.2").kind == "poisoned"


def test_rules_by_name_reads_the_event_log(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join([
        json.dumps({"event": "start"}),
        json.dumps({"event": "rule", "rule": "sni-reset", "action": "rst", "names": {"kind": "tls",
                                                                                      "sni": ["Twitter.com"]}}),
        json.dumps({"event": "rule", "rule": "host-reset", "names": {"kind": "http", "http_host": "twitter.com"}}),
        json.dumps({"event": "rule", "rule": "sni-reset", "names": {"sni": ["twitter.com"]}}),
        "not json",
    ]) + "\n")
    fired = demo.rules_by_name(log, ["twitter.com", "example.org"])
    assert fired == {"twitter.com": ["sni-reset", "host-reset"], "example.org": []}
    assert demo.event_summary(log).startswith("4 events")


def test_rules_by_name_credits_address_rules_to_the_name_of_the_server(tmp_path: Path) -> None:
    """T22-3 decides on the SYN: the event names nothing, so the row is found by its server address (v4 and v6);
    an event that names a lab name is credited by name only, whatever its address."""
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in [
        {"event": "rule", "rule": "ip-block", "server": "203.0.113.10:443", "names": {"kind": "flow"}},
        {"event": "rule", "rule": "ip-block-v6", "server": "2001:db8:bad::10:80", "names": {"kind": "flow"}},
        {"event": "rule", "rule": "sni-block", "server": "203.0.113.10:443", "names": {"sni": ["twitter.com"]}},
    ]) + "\n")
    addrs = {"banned-ip.example": ("203.0.113.10", "2001:db8:bad::10"), "twitter.com": ("10.200.1.2", "fd00::2")}
    fired = demo.rules_by_name(log, ["banned-ip.example", "twitter.com"], addrs)
    assert fired == {"banned-ip.example": ["ip-block", "ip-block-v6"], "twitter.com": ["sni-block"]}
    # Without addresses (the old call), address-only events are credited to nobody.
    assert demo.rules_by_name(log, ["banned-ip.example"]) == {"banned-ip.example": []}


def test_hosted_names_are_served_by_default_and_shown_in_the_demo() -> None:
    assert set(HOSTED_NAMES) == {"cdn.example", "banned-ip.example"}
    assert set(HOSTED_NAMES) <= set(LAB_NAMES) and set(HOSTED_NAMES) <= set(demo.DEMO_NAMES)


def test_resolve_profile_falls_back_and_rejects_unknown() -> None:
    names = [n for n in demo.bundled_profile_names()]
    if "gfw" not in names:
        pytest.skip("the gfw profile is not bundled")
    assert demo.resolve_profile("gfw") == ("gfw", None)
    used, note = demo.resolve_profile("redweb")
    assert used == ("redweb" if "redweb" in names else "gfw")
    assert (note is None) == ("redweb" in names)
    with pytest.raises(LabError) as e:
        demo.resolve_profile("no-such-profile")
    assert e.value.code == 2


# ------------------------------------------------------------------------------------- real labs (root)

LAB_LINK = re.compile(r"-eth\d+$|^(rw|r[0-9a-f]{3})(acc|dom|wan)\d+$")  # Mininet veths and the lab's bridges


def _root_state() -> dict[str, object]:
    """What a lab could leave on the machine: links, named namespaces, host iptables rules, lab state files.

    Only lab-shaped links count, and namespaces of tests/netns.py (`rwt...`) are ignored: other integration
    tests may run at the same time on this machine.
    """
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout

    # Labs of other live processes (another test session on this machine) are theirs to clean up: their bridges
    # and state files are left out. A lab whose owner is dead, or this process's own, still counts.
    others: set[str] = set()
    for f in (STATE_DIR.glob("*.json") if STATE_DIR.exists() else ()):
        try:
            st = json.loads(f.read_text())
            lab_id, tag = str(st["lab_id"]), str(st["tag"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if lab_id.partition(".")[0] != str(os.getpid()) and _lab_id_alive(lab_id):
            others.add(tag)

    def foreign(name: str) -> bool:
        return any(name.startswith(t) for t in others)

    return {"links": sorted(n for n in os.listdir("/sys/class/net") if LAB_LINK.search(n) and not foreign(n)),
            "netns": sorted(ln.split()[0] for ln in run("ip", "netns", "list").splitlines()
                            if ln.strip() and not ln.startswith("rwt")),
            "iptables": run("iptables", "-S").splitlines(), "ip6tables": run("ip6tables", "-S").splitlines(),
            "state": sorted(p.name for p in STATE_DIR.glob("*.json") if not foreign(p.stem))
            if STATE_DIR.exists() else []}


def _baseline() -> dict[str, object]:
    """The machine's state before a lab test, once leftovers of dead labs are gone.

    A lab sweeps dead labs when it starts (`sweep_dead_labs`), so a snapshot that still held a killed earlier
    run's bridge or state file (a CI machine after a cut-off session, say) would differ from the state after the
    test for reasons that are not the test's. Sweep first, then wait for the killed namespaces' links to go.
    """
    sweep_dead_labs()
    state, deadline = _root_state(), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = _root_state()
        if again == state:
            break
        state = again
    return state


@pytest.fixture(scope="module")
def gfw_lab(tmp_path_factory):
    if os.geteuid() != 0 or not HAVE_MININET:
        pytest.skip("needs root and Mininet")
    before = _baseline()
    lab = Lab(LabConfig(topo="isp", profile="gfw", clients=1, workdir=tmp_path_factory.mktemp("gfwlab"),
                        names=("example.org", "twitter.com", "www.bbc.com", "bbc.com", "www.youtube.com",
                               *HOSTED_NAMES)))
    lab.start()
    try:
        yield lab
    finally:
        lab_id = lab.lab_id
        lab.stop()
        assert _root_state() == before, "the lab left something behind"
        assert lab_state_clean(lab_id) == []


@needs_lab
@pytest.mark.mininet
def test_https_allowed_name_through_the_censor(gfw_lab: Lab) -> None:
    r = gfw_lab.run("c1", ["curl", "-sS", "--cacert", str(gfw_lab.ca), "--resolve",
                           f"example.org:443:{gfw_lab.addr('example.org')}", "https://example.org/"])
    assert r.rc == 0, r.stderr
    assert "sni: example.org" in r.stdout and "host: example.org" in r.stdout
    # IPv6 and plain HTTP reach the same server; the helper resolves through the lab resolver.
    assert gfw_lab.curl("c1", "https://example.org/bytes/100000", family=6).size == 100_000
    r = gfw_lab.run("c1", "labcurl -sS http://example.org/health")
    assert r.rc == 0 and r.stdout == "ok\n", r.stderr


@needs_lab
@pytest.mark.mininet
def test_blocked_name_is_reset_and_logged(gfw_lab: Lab) -> None:
    """G-1/G-3: twitter.com is on the gfw TLS and HTTP lists: the client sees a reset, the censor logs it."""
    https = gfw_lab.curl("c1", "https://twitter.com/", max_time=5)
    assert https.rc in demo.RESET_CODES, https
    http = gfw_lab.curl("c1", "http://twitter.com/", max_time=5)
    assert http.rc in demo.RESET_CODES or http.rc == 7, http
    # G-2 exact form: =www.bbc.com blocks www.bbc.com but not bbc.com.
    assert gfw_lab.curl("c1", "https://www.bbc.com/", max_time=5).rc in demo.RESET_CODES
    assert gfw_lab.curl("c1", "https://bbc.com/", max_time=5).rc == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        fired = demo.rules_by_name(gfw_lab.event_log, ["twitter.com"])["twitter.com"]
        if "sni-reset" in fired:
            break
        time.sleep(0.1)
    assert "sni-reset" in fired


@needs_lab
@pytest.mark.mininet
def test_domestic_traffic_is_never_censored(gfw_lab: Lab) -> None:
    """The same blocked name served from the domestic network (inside <-> inside) is not censored."""
    r = gfw_lab.curl("c1", "https://twitter.com/bytes/50000", addr=gfw_lab.layout.domestic_addr[0], max_time=5)
    assert r.rc == 0 and r.size == 50_000, r


@needs_lab
@pytest.mark.mininet
def test_dns_quic_iperf3_services_answer(gfw_lab: Lab) -> None:
    for qtype, family in (("A", 4), ("AAAA", 6)):
        d = gfw_lab.dig("c1", "twitter.com", qtype)
        assert d.status == "NOERROR" and d.answers == (gfw_lab.addr("twitter.com", family),)
    q = gfw_lab.h3("c1", "https://example.org/bytes/200000")
    assert q["result"] == "ok" and q["status"] == 200 and q["bytes"] == 200_000, q
    r = gfw_lab.run("c1", "h3get https://example.org/health")
    assert r.rc == 0 and json.loads(r.stdout)["result"] == "ok", r.stdout + r.stderr
    r = gfw_lab.run("c1", ["iperf3", "-c", gfw_lab.layout.web_addr[0], "-t", "1", "-J"], timeout=30)
    assert r.rc == 0, r.stdout[-500:]
    assert json.loads(r.stdout)["end"]["sum_received"]["bytes"] > 0


@needs_lab
@pytest.mark.mininet
def test_redweb_probe_runs_in_a_lab_host_and_sees_the_censor(gfw_lab: Lab) -> None:
    """`c1 redweb probe ...` works inside the lab (redweb is on the hosts' PATH) and reports the reset (G-3)."""
    def probe(strategy: str, name: str) -> dict:
        r = gfw_lab.run("c1", ["redweb", "probe", "--strategy", strategy, "--json", "--timeout", "5",
                               "--resolve", f"{name}:{gfw_lab.addr(name)}", f"https://{name}/"], timeout=30)
        return json.loads(r.stdout)
    assert probe("none", "example.org")["outcome"] == "ok"
    # www.youtube.com is used by no other test of this lab: no residual (G-4) from them can interfere
    assert probe("tls-record-frag", "www.youtube.com")["outcome"] == "ok"  # G-E: record fragmentation evades
    assert probe("none", "www.youtube.com")["outcome"] == "reset"


HOSTED_ADDRS = {"cdn.example": ("198.51.100.10", "2001:db8:cd::10"),  # tspu-2025-hosting.txt, gfw-fet-servers.txt
                "banned-ip.example": ("203.0.113.10", "2001:db8:bad::10")}  # tspu-2022-ip.txt


@needs_lab
@pytest.mark.mininet
@pytest.mark.parametrize("name", HOSTED_NAMES)
def test_hosted_names_resolve_to_documentation_ranges_and_are_served(gfw_lab: Lab, name: str) -> None:
    """The names the IP-based rules (T22-3, T25-1, GF-2) act on: the resolver answers their documentation-range
    addresses, and HTTPS (the lab CA covers them), HTTP and HTTP/3 answer there, over IPv4 and IPv6. gfw has no
    IP rule and neither name is on its lists: all allowed."""
    v4, v6 = HOSTED_ADDRS[name]
    assert (gfw_lab.addr(name), gfw_lab.addr(name, 6)) == (v4, v6)
    assert gfw_lab.dig("c1", name, "A").answers == (v4,)
    assert gfw_lab.dig("c1", name, "AAAA").answers == (v6,)
    r = gfw_lab.run("c1", f"labcurl -sS https://{name}/")  # resolved at the lab resolver, CA-verified
    assert r.rc == 0 and f"sni: {name}" in r.stdout, r.stderr
    for family in (4, 6):
        assert gfw_lab.curl("c1", f"https://{name}/bytes/100000", family=family).size == 100_000
        assert gfw_lab.curl("c1", f"http://{name}/bytes/1000", family=family).size == 1000
    q = gfw_lab.h3("c1", f"https://{name}/bytes/50000")  # answered from the hosted address (h3server binds it)
    assert q["result"] == "ok" and q["bytes"] == 50_000, q


@needs_lab
@pytest.mark.mininet
def test_names_file_and_banner_show_the_hosted_names(gfw_lab: Lab) -> None:
    rows = {ln.split()[0]: ln.split()[1:] for ln in (gfw_lab.workdir / "names.txt").read_text().splitlines()
            if ln and not ln.startswith("#")}
    assert all(len(v) == 2 for v in rows.values()), "names.txt keeps three columns a line"
    banner = _banner(gfw_lab)
    for name, (v4, v6) in HOSTED_ADDRS.items():
        assert rows[name] == [v4, v6]
        assert f"{name} {v4} / {v6}" in banner
    assert rows["example.org"] == list(gfw_lab.names["example.org"])


# A TLS client that counts what the censor counts: server bytes on the wire (TCP payload), next to the body it
# could decrypt. curl cannot show the first: the lab server sends 16 KB TLS records, and a record cut by the
# freeze never decrypts. Prints one JSON line.
WIRE_CLIENT = r"""
import json, socket, ssl, sys
addr, name, ca, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tls_in, tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ssl.create_default_context(cafile=ca).wrap_bio(tls_in, tls_out, server_hostname=name)
sock = socket.create_connection((addr, 443), timeout=5)
sock.settimeout(1.5)  # this long without a byte: the flow is frozen (or done)
wire, plain, complete = 0, b"", False
def flush():
    data = tls_out.read()
    if data:
        sock.sendall(data)
def feed():
    global wire
    try:
        data = sock.recv(65536)
    except socket.timeout:
        return False
    wire += len(data)
    tls_in.write(data)
    return bool(data)
while True:
    try:
        tls.do_handshake()
        break
    except ssl.SSLWantReadError:
        flush()
        if not feed():
            print(json.dumps({"wire": wire, "handshake": False, "body": 0, "complete": False}))
            sys.exit(0)
flush()
tls.write(f"GET /bytes/{size} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
flush()
while feed():
    try:
        while True:
            plain += tls.read(65536)
    except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
        pass
    head, _, body = plain.partition(b"\r\n\r\n")
    if len(body) >= size:
        complete = True
        break
head, _, body = plain.partition(b"\r\n\r\n")
print(json.dumps({"wire": wire, "handshake": True, "status": head.split(b"\r\n")[0].decode(errors="replace"),
                  "body": len(body), "complete": complete}))
"""


def _wire_fetch(lab: Lab, name: str, addr: str, size: int = 200_000) -> dict:
    r = lab.run("c1", [sys.executable, "-c", WIRE_CLIENT, addr, name, str(lab.ca), str(size)], timeout=30)
    assert r.rc == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tspu2025_lab(tmp_path_factory):
    """tspu-2025 on the inline topology (its censor routes the hosted networks straight to the server)."""
    if os.geteuid() != 0 or not HAVE_MININET:
        pytest.skip("needs root and Mininet")
    if "tspu-2025" not in demo.bundled_profile_names():
        pytest.skip("tspu-2025 is not bundled")
    with Lab(LabConfig(topo="inline", profile="tspu-2025", workdir=tmp_path_factory.mktemp("tspu2025"),
                       names=("example.org", "wikipedia.org", *HOSTED_NAMES))) as lab:
        yield lab


@needs_lab
@pytest.mark.mininet
def test_tspu_2025_freezes_tls_to_the_hosting_network_after_16kb(tspu2025_lab: Lab) -> None:
    """T25-1: TLS to cdn.example (a "hosting/CDN network" address) stops once ~16 KB of server data has passed,
    silently; the same download from a control name outside those networks completes."""
    lab = tspu2025_lab
    frozen = _wire_fetch(lab, "cdn.example", lab.addr("cdn.example"))
    assert frozen["handshake"] and frozen["status"].endswith("200 OK"), frozen
    assert not frozen["complete"] and frozen["body"] < 20_000, frozen
    assert 15_000 <= frozen["wire"] <= 20_000, frozen  # T25-1: "~15-20 KB (often 16 KB)" of server data
    control = _wire_fetch(lab, "wikipedia.org", lab.addr("wikipedia.org"))
    assert control["complete"] and control["body"] == 200_000, control
    # What the demo's row shows, from curl, over IPv6 too (the hosting list has 2001:db8:cd::/48).
    for family in (4, 6):
        r = lab.curl("c1", "https://cdn.example/bytes/200000", family=family, max_time=10, stall_seconds=1)
        assert demo.classify_curl(r).kind == "frozen", r
    assert demo.classify_curl(lab.curl("c1", "https://wikipedia.org/bytes/200000", stall_seconds=1)).kind \
        == "allowed"
    # Plain HTTP to the same server is not TLS: never frozen (T25-1 is about TLS connections).
    assert lab.curl("c1", "http://cdn.example/bytes/200000", stall_seconds=1).size == 200_000


@needs_lab
@pytest.mark.mininet
def test_tspu_2025_allow_list_exempts_an_sni_on_the_hosting_network(tspu2025_lab: Lab) -> None:
    """T25-1: an allow-listed SNI (example.org, rules/lists/tspu-2025-allow.txt) is not frozen, even when it is
    served from the very hosting-network address that freezes cdn.example."""
    lab = tspu2025_lab
    r = _wire_fetch(lab, "example.org", lab.addr("cdn.example"))
    assert r["complete"] and r["body"] == 200_000, r


@needs_lab
@pytest.mark.mininet
def test_tspu_2022_drops_the_ip_blocked_server(tmp_path: Path) -> None:
    """T22-3: every packet to banned-ip.example's address (on tspu-2022-ip.txt) is dropped: the client times out
    over IPv4 and IPv6, HTTP and HTTPS; cdn.example (not on that list) and a control name are allowed."""
    if "tspu-2022" not in demo.bundled_profile_names():
        pytest.skip("tspu-2022 is not bundled")
    with Lab(LabConfig(topo="isp", profile="tspu-2022", clients=1, workdir=tmp_path,
                       names=("example.org", *HOSTED_NAMES))) as lab:
        for url, family in (("https://banned-ip.example/", 4), ("http://banned-ip.example/", 6)):
            r = lab.curl("c1", url, family=family, max_time=3, connect_timeout=1.5)
            assert demo.classify_curl(r).cell() == "timed out", r
        for name in ("example.org", "cdn.example"):
            assert demo.classify_curl(lab.curl("c1", f"https://{name}/bytes/100000")).kind == "allowed", name
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            fired = demo.rules_by_name(lab.event_log, ["banned-ip.example"], lab.names)["banned-ip.example"]
            if fired:
                break
            time.sleep(0.1)
        assert fired == ["ip-block"]


@needs_lab
@pytest.mark.mininet
def test_metrics_are_served_in_the_censor_namespace(gfw_lab: Lab) -> None:
    text = gfw_lab.metrics_text()
    assert "# TYPE" in text and "redweb" in text


@needs_lab
@pytest.mark.mininet
def test_lab_started_twice_in_a_row(tmp_path: Path) -> None:
    before = _baseline()
    for i in range(2):
        with Lab(LabConfig(topo="inline", profile="gfw", names=("example.org", "twitter.com"),
                           workdir=tmp_path / f"run{i}")) as lab:
            assert lab.curl("c1", "https://example.org/").rc == 0
            assert lab.curl("c1", "https://twitter.com/", max_time=5).rc in demo.RESET_CODES
        assert _root_state() == before


@needs_lab
@pytest.mark.mininet
def test_bad_profile_fails_before_anything_starts(tmp_path: Path) -> None:
    before = _baseline()
    with pytest.raises(LabError) as e:
        Lab(LabConfig(topo="inline", profile="no-such-profile", workdir=tmp_path)).start()
    assert e.value.code == 2 and "no-such-profile" in str(e.value)
    assert _root_state() == before


def _start_script_lab(tmp_path: Path, script: str) -> tuple[subprocess.Popen[str], Path]:
    f = tmp_path / "script.txt"
    f.write_text(script)
    out = tmp_path / "lab.out"
    with open(out, "w") as sink:  # the child keeps its own copy of the descriptor
        p = subprocess.Popen([sys.executable, "-m", "dpi.lab", "--topo", "isp", "--profile", "gfw", "--script",
                              str(f), "--workdir", str(tmp_path / "work")], stdout=sink, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONPATH=str(REPO)), text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "c1$ sleep" not in out.read_text():
        assert p.poll() is None, out.read_text()
        time.sleep(0.1)
    time.sleep(0.3)  # the command runs
    return p, out


@needs_lab
@pytest.mark.mininet
@pytest.mark.parametrize("sig, rc", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_tears_everything_down(tmp_path: Path, sig: int, rc: int) -> None:
    before = _baseline()
    p, out = _start_script_lab(tmp_path, "c1 sleep 120 & sleep 120\n")
    p.send_signal(sig)
    assert p.wait(60) == rc, out.read_text()
    assert "tearing down" in out.read_text()
    assert _root_state() == before
    assert lab_state_clean(owner_pid=p.pid) == [], "processes of the lab survived"


@needs_lab
@pytest.mark.mininet
def test_sigkill_leftovers_are_swept_by_the_next_lab(tmp_path: Path) -> None:
    before = _baseline()
    p, out = _start_script_lab(tmp_path, "c1 sleep 120\n")
    p.kill()
    p.wait(10)
    assert lab_state_clean(owner_pid=p.pid) != [], "a killed lab leaves processes (this is what the sweep is for)"
    assert sweep_dead_labs() > 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _root_state() != before:
        time.sleep(0.1)  # namespaces are destroyed asynchronously after their last process
    assert _root_state() == before
    assert lab_state_clean(owner_pid=p.pid) == []


@needs_lab
@pytest.mark.mininet
def test_demo_table_matches_the_gfw_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo (what `make demo` runs) on gfw: blocked names reset over HTTP and HTTPS (G-1, G-3), the control
    name allowed everywhere, the domestic row allowed."""
    rc = demo.main(argparse.Namespace(profile="gfw", out=str(tmp_path), names=("example.org", "twitter.com")))
    text = capsys.readouterr().out
    assert rc == 0, text
    rows = {cells[0]: cells for line in text.splitlines() if (cells := re.split(r"\s{2,}", line.strip()))}
    header = rows["name"]
    assert header[:5] == ["name", "DNS", "HTTP", "HTTPS", "QUIC"], text
    assert rows["example.org"][1:] == ["allowed"] * 4 + ["-"], text
    tw = rows["twitter.com"]
    assert tw[1:4] == ["allowed", "reset", "reset"], text  # gfw leaves DNS alone; HTTP and HTTPS are reset
    assert "sni-reset" in tw[5] and "host-reset" in tw[5]
    assert rows["twitter.com @domestic"][1:] == ["-", "allowed", "allowed", "allowed", "-"], text
    assert (tmp_path / "events.jsonl").exists() and "redweb_" in (tmp_path / "metrics.prom").read_text()


@needs_lab
@pytest.mark.mininet
def test_demo_measures_throttling_for_tspu_2021(tmp_path: Path) -> None:
    """T21-1/T21-4: twitter.com and the `t.co` collateral reddit.com are throttled over HTTPS (the client's
    measured rate is shown); HTTP and the control name are not."""
    if "tspu-2021" not in demo.bundled_profile_names():
        pytest.skip("tspu-2021 is not bundled")
    rows = {label: row for label, row, _rules in demo.run_demo("tspu-2021", tmp_path,
                                                               names=("example.org", "reddit.com"),
                                                               say=lambda *_: None)}
    assert rows["reddit.com"]["HTTPS"].kind == "throttled", rows
    assert rows["reddit.com"]["HTTPS"].detail.endswith("kbit/s")
    assert rows["reddit.com"]["HTTP"].kind == "allowed"
    assert rows["example.org"]["HTTPS"].kind == "allowed"


@needs_lab
@pytest.mark.mininet
def test_demo_shows_dns_poisoning_and_quic_blocking_for_redweb(tmp_path: Path) -> None:
    """The default profile: facebook.com is poisoned in DNS (GD-1), reset over HTTP/HTTPS (G-1, G-3) and its
    QUIC flow dies after the Initial (GQ-2); each outcome is what the real client saw."""
    if "redweb" not in demo.bundled_profile_names():
        pytest.skip("the redweb profile is not bundled")
    rows = {label: row for label, row, _rules in demo.run_demo("redweb", tmp_path, names=("facebook.com",),
                                                               say=lambda *_: None)}
    fb = rows["facebook.com"]
    assert fb["DNS"].kind == "poisoned" and fb["DNS"].detail != "", fb
    assert (fb["HTTP"].kind, fb["HTTPS"].kind, fb["QUIC"].kind) == ("reset", "reset", "timeout"), fb
