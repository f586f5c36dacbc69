"""The lab the robustness tests share (issue 7), and the checks of its own helpers.

client -- router (`redweb run`, the real engine) -- server, in namespaces (tests.netns.Path3). The server runs
Python's HTTP server on both families (port 8080, with a multi-megabyte file whose sha256 is known) and, for the
tests that ask for them, `openssl s_server`, dnsmasq and iperf3. A small profile (`profile()`) reproduces the GFW's
Host/SNI reset with residual blocking (G-1, G-3, G-4) over IPv4 and IPv6, so that "the censor still censors
correctly" is asserted with a real engine, not a stand-in.

Helpers here never assert timing: waits are safety nets (tests.live.WAIT).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live import PY, ROOT, WAIT, Live, read_log, wait_for
from tests.netns import Host, Path3

BIG = 8_000_000  # bytes of the checksummed download
MID = 600_000  # bytes of a download through the policer (T21-4) or into the freeze (T25-1)
NAMES = ["blocked.example", "allowed.example", "slow.example", "frozen.example"]
V4, V6 = Path3.SERVER_V4, Path3.SERVER_V6

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "iptables", "ip6tables", "curl")),
    reason="needs root, iproute2, iptables and curl")

PROFILE = """
name: robustness
implements: [G-1, G-3, G-4]
inside: [10.9.1.0/24, fd09:1::/64]
flows: {{max_flows: {max_flows}}}
tcp: {{reassembly: true, require_syn: {require_syn}, parse_directions: both}}
dns: {{enabled: true}}
lists:
  blocked: {{entries: [blocked.example]}}
  slow: {{entries: [slow.example]}}
  frozen: {{entries: [frozen.example]}}
rules:
  - name: host-reset
    implements: [G-1, G-3, G-4]
    match: {{http.host: blocked}}
    action: {{type: rst, to: both, injector: gfw-type2}}
    residual: {{key: 3-tuple, seconds: {residual}, action: rst}}
  - name: sni-reset
    implements: [G-1, G-3, G-4]
    match: {{tls.sni: blocked}}
    action: {{type: rst, to: both, injector: gfw-type2}}
    residual: {{key: 3-tuple, seconds: {residual}, action: rst}}
  - name: throttle
    implements: [T21-4]
    match: {{tls.sni: slow}}
    action: {{type: throttle, rate_kbps: {rate_kbps}, burst_bytes: 65536}}
  - name: freeze
    implements: [T25-1]
    match: {{tls.sni: frozen}}
    action: {{type: freeze, after_bytes: 16384}}
  - name: dns
    implements: [GD-1, GD-2]
    match: {{dns.qname: blocked}}
    action: {{type: dns-inject, mode: on-path, pool_a: [203.0.113.7], pool_aaaa: ["2001:0:53aa:64c:0:1:2:3"]}}
"""


def comm(pid: int) -> str:
    """The name a RedWeb process gives itself: redweb-qN (a queue worker) or redweb-residual (the manager)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def workers(live: Live) -> dict[int, int]:
    """queue → pid of the run's current queue workers."""
    out = {}
    for pid in live.children():
        name = comm(pid)
        if name.startswith("redweb-q"):
            out[int(name[8:])] = pid
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Lab:
    def __init__(self, path: Path3, base: Path) -> None:
        self.path, self.base = path, base
        self.client, self.router, self.server = path.client, path.router, path.server
        self.www = base / "www"
        self.big_sha = sha256_file(self.www / "big")
        self.procs: list[subprocess.Popen] = []

    # -- censor ----------------------------------------------------------------------------------------------------
    def profile(self, *, require_syn: bool = True, residual: float = 60.0, max_flows: int = 65536,
                rate_kbps: int = 2000) -> Path:
        p = self.base / f"profile-{time.monotonic_ns()}.yaml"
        p.write_text(PROFILE.format(require_syn=str(require_syn).lower(), residual=residual, max_flows=max_flows,
                                    rate_kbps=rate_kbps))
        return p

    def censor(self, *args: str, profile: Path | None = None, **kw: object) -> Live:
        path = profile or self.profile(**kw)  # type: ignore[arg-type]
        return Live(self.router, *args, module="dpi.cli", profile=str(path))

    def rules(self) -> list[str]:
        return self.router.redweb_rules()

    def netfilter_state(self) -> str:
        """Every rule of both families (counters left out): equal before a run and after its cleanup."""
        return "".join(self.router.run([b, "-S"]).stdout + self.router.run([b, "-t", "mangle", "-S"]).stdout
                       for b in ("iptables", "ip6tables"))

    # -- clients ---------------------------------------------------------------------------------------------------
    def curl(self, url: str, host: str | None = None, max_time: float = 3, extra: tuple[str, ...] = (),
             out: str = "/dev/null", ns: Host | None = None) -> tuple[int, str]:
        args = ["curl", "-sS", "-o", out, "-w", "%{http_code} %{size_download}", "--max-time", str(max_time), *extra]
        if host:
            args += ["-H", f"Host: {host}"]
        r = (ns or self.client).run([*args, url], check=False, timeout=max_time + 10)
        return r.returncode, r.stdout

    def http(self, family: int = 4) -> str:
        return f"http://{V4}:8080" if family == 4 else f"http://[{V6}]:8080"

    def https(self, name: str, obj: str = "small", family: int = 4, max_time: float = 5,
              out: str = "/dev/null") -> tuple[int, str, str]:
        addr = V4 if family == 4 else f"[{V6}]"
        r = self.client.run(["curl", "-sS", "-o", out, "-w", "%{http_code} %{size_download}", "--max-time",
                             str(max_time), "--cacert", str(self.base / "cert.pem"),
                             "--resolve", f"{name}:443:{addr}", f"https://{name}/{obj}"],
                            check=False, timeout=max_time + 10)
        return r.returncode, r.stdout, r.stderr

    # -- servers on demand -----------------------------------------------------------------------------------------
    def start(self, ns: Host, args: list[str], ready: tuple[str, int] | None = None, **kw: object) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = ns.popen(args, **kw)  # type: ignore[arg-type]
        self.procs.append(p)
        if ready is not None:
            proto, port = ready
            wait_for(lambda: ns.run(["ss", f"-Hl{proto}n", f"sport = :{port}"], check=False).stdout.strip(),
                     f"{args[0]} on port {port}")
        return p

    def tls_server(self) -> None:
        if any("s_server" in " ".join(map(str, p.args)) for p in self.procs if p.poll() is None):
            return
        for addr in ("0.0.0.0:443", "[::]:443"):  # s_server binds IPv6 sockets v6-only: one per family
            self.start(self.server, ["openssl", "s_server", "-quiet", "-accept", addr, "-cert",
                                     str(self.base / "cert.pem"), "-key", str(self.base / "key.pem"), "-WWW"],
                       cwd=str(self.www), stdin=subprocess.DEVNULL)
        wait_for(lambda: self.server.run(["ss", "-Hltn", "sport = :443"], check=False).stdout.count("LISTEN") == 2,
                 "openssl s_server on both families")

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs.clear()

    def forwarded_packets(self) -> int:
        total = 0
        for ifname in self.path.router_ifs:
            info = json.loads(self.router.run(["ip", "-s", "-j", "link", "show", "dev", ifname]).stdout)[0]
            total += info["stats64"]["rx"]["packets"]
        return total


def scrape(lab: Lab, port: int) -> dict[str, float]:
    """Metric name (with its labels, and without them: the sum) → value, from the run's /metrics."""
    text = lab.router.run(["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{port}/metrics"]).stdout
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name = re.split(r"[{ ]", series, maxsplit=1)[0]
            out[series] = float(value)
            if series != name:
                out[name] = out.get(name, 0.0) + float(value)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def events(log: Path, kind: str) -> list[dict]:
    if not log.exists():
        return []
    return [e for e in read_log(log) if e.get("event") == kind]


def make_lab() -> Iterator[Lab]:
    """Build the lab (used by the module-scoped `lab` fixtures of the robustness tests)."""
    with tempfile.TemporaryDirectory() as d, Path3() as path:
        base = Path(d)
        www = base / "www"
        www.mkdir()
        (www / "small").write_bytes(b"hello\n")
        (www / "mid").write_bytes(os.urandom(MID))
        with open(www / "big", "wb") as f:
            f.write(os.urandom(BIG))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(base / "key.pem"),
                        "-out", str(base / "cert.pem"), "-days", "1", "-subj", "/CN=lab", "-addext",
                        "subjectAltName=" + ",".join(f"DNS:{n}" for n in NAMES)], check=True, capture_output=True)
        lab = Lab(path, base)
        http = path.server.popen([PY, "-m", "http.server", "8080", "--bind", "::", "--directory", str(www)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: path.server.run(["ss", "-Hltn", "sport = :8080"], check=False).stdout.strip(),
                     "the HTTP server")
            yield lab
        finally:
            lab.stop_all()
            http.kill()
            http.wait()


def leave_clean(lab: Lab) -> None:
    """After each test: no RedWeb rule, no RedWeb process left in the router."""
    lab.router.run([PY, "-m", "dpi.cli", "cleanup"], check=False)
    for pid in lab.router.run(["ip", "netns", "pids", lab.router.ns], check=False).stdout.split():
        if comm(int(pid)).startswith("redweb") or "dpi.cli" in _cmdline(int(pid)):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# -- the helpers' own checks ---------------------------------------------------------------------------------------
def test_profile_template_is_a_valid_profile(tmp_path: Path) -> None:
    from dpi.profile import load_profile
    p = tmp_path / "p.yaml"
    for syn in (True, False):
        p.write_text(PROFILE.format(require_syn=str(syn).lower(), residual=60.0, max_flows=1000, rate_kbps=2000))
        prof = load_profile(str(p))
        assert prof.tcp.require_syn is syn and prof.flows.max_flows == 1000
        assert [r.name for r in prof.rules] == ["host-reset", "sni-reset", "throttle", "freeze", "dns"]


def test_scrape_parses_labels_and_sums() -> None:
    class FakeRun:
        stdout = ('# HELP x y\nredweb_a_total{queue="0"} 2\nredweb_a_total{queue="1"} 3\nredweb_up 1\n')

    class FakeHost:
        def run(self, *_a: object, **_k: object) -> FakeRun:
            return FakeRun()

    lab = Lab.__new__(Lab)
    lab.router = FakeHost()  # type: ignore[assignment]
    m = scrape(lab, 1)
    assert m['redweb_a_total{queue="0"}'] == 2 and m["redweb_a_total"] == 5 and m["redweb_up"] == 1
    assert WAIT > 0 and ROOT.is_dir()
