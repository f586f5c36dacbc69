"""`redweb lab`: a Mininet lab with real services and the censor, and the `Lab` object other commands drive.

A lab is a topology from `topologies/` (`inline` or `isp`), a fresh lab CA, and real programs in the hosts:
the Python web server (HTTP on 80, HTTPS on 443 for every lab name), an aioquic HTTP/3 server on UDP 443,
iperf3, dnsmasq as the resolver, and `redweb run` in the censor's namespace. Every lab name gets its own
server address, so residual blocking (G-4, GQ-2, GF-3, keyed on the server address) of one name never spills
onto the others.

Tear-down is complete whatever happens (normal end, exception, Ctrl-C, SIGTERM/SIGHUP): the censor gets SIGTERM
first (it removes its own iptables rules), then the services, then every process still inside a lab namespace
is killed, then Mininet removes links and namespaces. Every process the lab starts carries `REDWEB_LAB_ID` in
its environment; a lab whose owner died (SIGKILL) is swept by the next lab start or by `redweb lab --cleanup`,
without touching anything else on the machine (`mn -c` kills every Mininet on the host, so it is only run on
request, by `--cleanup`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
TOPOLOGY_DIR = REPO / "topologies"
TOPOLOGIES = ("inline", "isp")
METRICS_ADDR = "127.0.0.1:9100"  # inside the censor's namespace
IPERF_PORT = 5201
ENV_ID = "REDWEB_LAB_ID"

# Lab names the topology serves from documentation ranges that the bundled profiles' IP lists contain
# (topologies/labnet.py HOSTED): without them the IP-based rules never fire in a lab, whose other servers all sit
# in a private "foreign" network. `cdn.example` stands for a server in a foreign hosting/CDN network (T25-1:
# tspu-2025 freezes its TLS after 16 KB; GF-2: inside gfw-fet's server ranges); `banned-ip.example` for a server
# on the IP registry (T22-3: tspu-2022 drops every packet to it). The names themselves are on no list.
HOSTED_NAMES: tuple[str, ...] = ("cdn.example", "banned-ip.example")

# Names served by the lab. Chosen so that the bundled profiles have something to do: names on the GFW lists in
# their several forms (G-2), the TSPU's Twitter patterns with their collateral (T21-1: `t.co` inside
# reddit.com and microsoft.com), `blocked.example` (on every list of the `redweb` profile), control names on
# no list, and the hosted names above (IP-based rules). All resolve to lab addresses only.
LAB_NAMES: tuple[str, ...] = (
    "example.org", "example.com", "bbc.com", "www.bbc.com", "duckduckgo.com", "wikipedia.org", "www.wikipedia.org",
    "twitter.com", "www.twitter.com", "abs.twimg.com", "t.co", "reddit.com", "microsoft.com", "www.youtube.com",
    "www.google.com", "facebook.com", "instagram.com", "telegram.org", "www.torproject.org", "nytimes.com",
    "www.nytimes.com", "dropbox.com", "archive.org", "github.com", "blocked.example", *HOSTED_NAMES,
)
DOMESTIC_NAME = "intranet.lab"  # served by the domestic server (isp topology)


class LabError(Exception):
    """The lab could not be started (one line: what failed and the fix). `code`: 2 bad usage/system, 1 failure."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Terminated(BaseException):
    """SIGTERM/SIGHUP arrived: unwind to the tear-down (BaseException, so no `except Exception` swallows it)."""


@dataclass(frozen=True)
class CommandResult:
    """What a command run inside a lab host did."""

    host: str
    command: str
    rc: int  # the exit code; negative: killed by that signal (as subprocess reports it)
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False  # killed by the lab after the timeout

    def status(self) -> str:
        if self.timed_out:
            return "timed out"
        if self.rc < 0:
            try:
                return f"killed by {signal.Signals(-self.rc).name}"
            except ValueError:
                return f"killed by signal {-self.rc}"
        return f"exit {self.rc}"


@dataclass(frozen=True)
class CurlResult:
    """One curl transfer: the exit code and curl's own measurements (`--write-out`)."""

    rc: int
    http_code: int
    size: int  # bytes of body received
    speed_bps: float  # bytes per second, curl's %{speed_download}
    seconds: float
    error: str  # curl's error line (stderr), "" on success


@dataclass(frozen=True)
class DigResult:
    rc: int  # dig exit code: 0 answered, 9 no reply
    status: str  # NOERROR, NXDOMAIN, ... ("" without an answer)
    answers: tuple[str, ...]


@dataclass
class LabConfig:
    topo: str = "isp"
    profile: str | None = None  # None: no censor (baselines)
    names: tuple[str, ...] = LAB_NAMES
    clients: int = 2
    queues: str = "0"
    workdir: Path | None = None  # None: a fresh directory under /tmp, kept after the lab (logs)
    bw: float | None = None  # Mbit/s on access links (htb)
    delay: str | None = None  # e.g. "20ms" (needs netem)
    censor_args: tuple[str, ...] = ()  # extra `redweb run` options, e.g. ("--seed", "1")
    verbose: bool = False


# --------------------------------------------------------------------------------------------- system checks

def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, iptables, NFQUEUE): run it with sudo", 2)


def import_mininet() -> None:
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        raise LabError(f"Mininet is not importable from {sys.executable}: install the Debian package (apt-get "
                       "install mininet) and use a venv made from /usr/bin/python3 with --system-site-packages "
                       "(make setup does both)", 2) from None


def require_programs(names: Sequence[str] = ("mnexec", "ip", "tc", "ethtool", "brctl", "iptables", "dnsmasq",
                                             "iperf3", "curl", "dig", "ss")) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise LabError(f"missing programs: {' '.join(missing)} (make setup installs them: mininet bridge-utils "
                       "iptables dnsmasq-base iperf3 curl dnsutils ethtool iproute2)", 2)


def _load_topology_module(name: str) -> ModuleType:
    path = TOPOLOGY_DIR / f"{name}.py"
    if name not in TOPOLOGIES or not path.is_file():
        raise LabError(f"unknown topology {name!r}: choose one of {', '.join(TOPOLOGIES)}", 2)
    if str(TOPOLOGY_DIR) not in sys.path:
        sys.path.append(str(TOPOLOGY_DIR))
    spec = importlib.util.spec_from_file_location(f"redweb_topology_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_topology(name: str, **params: Any) -> Any:
    """An instance of topology `name` (a Mininet Topo with a `.layout`), parameters passed through."""
    module = _load_topology_module(name)
    return module.topos[name](**params)


def _topo_tool(module: str) -> ModuleType:
    """A helper module from topologies/ (labnet, labca): they are plain modules, not part of the package."""
    if str(TOPOLOGY_DIR) not in sys.path:
        sys.path.append(str(TOPOLOGY_DIR))
    return importlib.import_module(module)


def bundled_profile_names() -> list[str]:
    try:
        from dpi.profile import bundled_profiles
    except ImportError:
        return []
    return [n for n, _p, _s in bundled_profiles()]


def check_profile(name: str) -> None:
    """Load the profile once before anything is started, so a bad one is a one-line error, not a dead lab."""
    try:
        from dpi.profile import ProfileError, load_profile
    except ImportError as e:
        raise LabError(f"the profile loader is missing ({e}): reinstall RedWeb (make setup)", 2) from None
    try:
        load_profile(name)
    except ProfileError as e:
        lines = str(e).splitlines() or [f"bad profile {name!r}"]
        more = f" (and {len(lines) - 1} more: `redweb check` lists them)" if len(lines) > 1 else ""
        raise LabError(lines[0] + more, 2) from None
    except (FileNotFoundError, OSError):
        known = ", ".join(bundled_profile_names()) or "none found"
        raise LabError(f"no profile {name!r}: give a bundled name ({known}) or a YAML path", 2) from None


# ------------------------------------------------------------------------------------ leftovers of dead labs

def _proc_start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].split()[19].decode()


def _lab_id_alive(lab_id: str) -> bool:
    pid, _, start = lab_id.partition(".")
    return pid.isdigit() and _proc_start_time(int(pid)) == start


def _environ_lab_id(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    key = ENV_ID.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode(errors="replace")
    return None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _kill(pids: Sequence[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


STATE_DIR = Path("/run/redweb-lab")  # one file per running lab: its id and bridge tag (for sweep_dead_labs)


def sweep_dead_labs() -> int:
    """Kill processes left by labs whose owner is gone, and remove those labs' bridges. Returns a count.

    Killing the processes ends their namespaces, which removes the veths and iptables rules inside; the lab's
    bridges live in the machine's own namespace and are found through the lab's state file. Live labs (their
    owner process still runs) are never touched.
    """
    me = os.getpid()
    stale = [pid for pid in _all_pids() if pid != me
             and (lab_id := _environ_lab_id(pid)) is not None and not _lab_id_alive(lab_id)]
    _kill(stale)
    removed = 0
    try:
        states = sorted(STATE_DIR.glob("*.json"))
    except OSError:
        states = []
    for f in states:
        try:
            state = json.loads(f.read_text())
            lab_id, bridges = str(state["lab_id"]), [str(b) for b in state["bridges"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _lab_id_alive(lab_id):
            continue
        removed += _remove_links(bridges)
        f.unlink(missing_ok=True)
    return len(stale) + removed


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _pids_in_netns(inodes: set[int]) -> list[int]:
    root = _netns_inode(1)
    inodes = {i for i in inodes if i != root}  # never the machine's own namespace
    return [pid for pid in _all_pids() if _netns_inode(pid) in inodes]


# ------------------------------------------------------------------------------------------------- the lab

@dataclass
class _Proc:
    what: str
    node: str
    popen: subprocess.Popen[bytes]
    log: Path


# `redweb` itself inside lab hosts (e.g. `c1 redweb probe ...`), whatever the caller's PATH
REDWEB = """#!/bin/sh
exec {python} -m dpi.cli "$@"
"""

LABCURL = """#!/bin/sh
# labcurl [curl options] URL [curl options]: resolve the URL's name at the lab resolver, then curl it with
# --resolve (Mininet hosts share the machine's /etc/hosts) and the lab CA trusted. LABCURL_FAMILY=6: AAAA.
url=""
for a in "$@"; do case "$a" in http://*|https://*) url="$a" ;; esac; done
[ -n "$url" ] || {{ echo "usage: labcurl [curl options] http(s)://NAME[:PORT]/PATH" >&2; exit 2; }}
rest=${{url#*://}}; hostport=${{rest%%/*}}; host=${{hostport%%:*}}
case "$url" in https://*) port=443 ;; *) port=80 ;; esac
case "$hostport" in *:*) port=${{hostport##*:}} ;; esac
if [ "${{LABCURL_FAMILY:-4}}" = 6 ]; then qt=AAAA; else qt=A; fi
addr=$(dig +short +time=2 +tries=1 @{resolver} "$host" $qt | tail -n1)
[ -n "$addr" ] || {{ echo "labcurl: $host does not resolve at the lab resolver {resolver}" >&2; exit 6; }}
case "$addr" in *:*) addr="[$addr]" ;; esac
exec curl --cacert {ca} --resolve "$host:$port:$addr" "$@"
"""

LABRESOLVE = """#!/bin/sh
# labresolve NAME [A|AAAA]: the lab resolver's answer (what curl --resolve needs).
exec dig +short +time=2 +tries=1 @{resolver} "$1" "${{2:-A}}"
"""

H3GET = """#!/bin/sh
# h3get [--timeout S] https://NAME/PATH: fetch over HTTP/3 (aioquic) after resolving NAME at the lab resolver.
url=""
for a in "$@"; do case "$a" in https://*) url="$a" ;; esac; done
[ -n "$url" ] || {{ echo "usage: h3get [--timeout S] https://NAME[:PORT]/PATH" >&2; exit 2; }}
rest=${{url#*://}}; host=${{rest%%/*}}; host=${{host%%:*}}
addr=$(dig +short +time=2 +tries=1 @{resolver} "$host" A | tail -n1)
exec {python} {client} --connect "${{addr:-$host}}" --cafile {ca} "$@"
"""


class Lab:
    """A running lab: `with Lab(LabConfig(...)) as lab: lab.run("c1", "curl ...")`.

    `start()` leaves either a fully working lab or nothing at all (it tears down what it built on failure).
    """

    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.net: Any = None
        self.layout: Any = None
        self.names: dict[str, tuple[str, str]] = {}  # lab name -> (IPv4, IPv6) of its server
        # Without a workdir, a fresh /tmp directory is made once the checks in start() have passed.
        self.workdir = Path(config.workdir).resolve() if config.workdir else Path()
        self.censor: _Proc | None = None
        self._procs: list[_Proc] = []
        self._netns: set[int] = set()  # inodes of the lab's network namespaces
        self._bridges: list[str] = []
        start = _proc_start_time(os.getpid()) or "0"
        self.lab_id = f"{os.getpid()}.{start}"
        # Bridges live in the machine's namespace: a per-lab prefix lets two labs (two test runs) coexist.
        self.tag = "r" + uuid.uuid4().hex[:3]
        self._env_before: str | None = None

    # -- public helpers ------------------------------------------------------------------------------------
    @property
    def ca(self) -> Path:
        """The lab CA certificate: what clients trust."""
        return self.workdir / "ca.pem"

    @property
    def event_log(self) -> Path:
        """The censor's events (JSON lines), written by `redweb run --log`."""
        return self.workdir / "events.jsonl"

    @property
    def resolver(self) -> str:
        return self.layout.resolver_addr[0]

    def node(self, name: str) -> Any:
        try:
            return self.net[name]
        except KeyError:
            raise LabError(f"no host {name!r} in this lab: hosts are {', '.join(self.host_names())}") from None

    def host_names(self) -> list[str]:
        return [h.name for h in self.net.hosts] if self.net is not None else []

    @property
    def hosted(self) -> tuple[Any, ...]:
        """The topology's hosted names (labnet.HostedName: name, role, addr, network), served or not."""
        return tuple(getattr(self.layout, "hosted", ())) if self.layout is not None else ()

    def addr(self, name: str, family: int = 4) -> str:
        """The real lab address of a lab name (what the resolver answers when nobody tampers)."""
        v4, v6 = self.names[name]
        return v6 if family == 6 else v4

    def env(self) -> dict[str, str]:
        """Environment of every command run in a lab host: the lab CA is trusted, helpers are on PATH."""
        env = dict(os.environ)
        env.update({ENV_ID: self.lab_id, "REDWEB_LAB": str(self.workdir), "REDWEB_CA": str(self.ca),
                    "CURL_CA_BUNDLE": str(self.ca), "SSL_CERT_FILE": str(self.ca),
                    "REDWEB_RESOLVER": self.resolver, "PYTHONPATH": str(REPO),
                    "PATH": f"{self.workdir / 'bin'}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"})
        return env

    # -- life cycle ----------------------------------------------------------------------------------------
    def __enter__(self) -> "Lab":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        require_root()
        import_mininet()
        require_programs()
        if self.config.profile:
            check_profile(self.config.profile)
        if len(self.config.names) != len(set(self.config.names)):
            raise LabError("lab names must be unique", 2)
        sweep_dead_labs()
        if self.config.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="redweb-lab-"))
        self._env_before = os.environ.get(ENV_ID)
        os.environ[ENV_ID] = self.lab_id  # every node shell and process inherits it (see sweep_dead_labs)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        from mininet.log import setLogLevel
        from mininet.link import Link, TCLink
        from mininet.net import Mininet
        labnet = _topo_tool("labnet")
        setLogLevel("info" if self.config.verbose else "output")  # "output": the CLI prints through it
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "bin").mkdir(exist_ok=True)
        if self.config.delay and not labnet.netem_available():
            raise LabError("link delay needs the netem qdisc, which this kernel lacks (PLATFORM.md): run without "
                           "--delay, or on a kernel with sch_netem", 2)
        _bridge_sysctls()
        params: dict[str, Any] = {"names": len(self.config.names)}
        if self.config.topo == "isp":
            params["clients"] = self.config.clients
            params["tag"] = self.tag
        if self.config.bw:
            params["bw"] = self.config.bw
        if self.config.delay:
            params["delay"] = self.config.delay
        topo = build_topology(self.config.topo, **params)
        self.layout = topo.layout
        # Every name keeps its positional per-name address (callers plan addresses that way: see
        # dpi.measure.fet.planned_addresses); a hosted name is then served from its documentation-range address.
        self.names = dict(zip(self.config.names, self.layout.name_addrs))
        for h in self.hosted:
            if h.name in self.names:
                self.names[h.name] = h.addr
        link = TCLink if (self.config.bw or self.config.delay) else Link
        self._bridges = [str(sw) for sw in topo.switches()]
        self._write_state(self._bridges)
        self.net = Mininet(topo=topo, controller=None, switch=labnet.LabBridge, host=labnet.LabHost, link=link,
                           autoSetMacs=True, waitConnected=False, build=False)
        self.net.build()
        for h in self.net.hosts:
            ino = _netns_inode(h.pid)
            if ino is not None:
                self._netns.add(ino)
        self.net.start()
        self._write_certificates()
        self._write_helpers()
        self._start_services()
        self._warm_up()
        if self.config.profile:
            self._start_censor()
        for h in self.net.hosts:  # for the Mininet CLI: the same environment in every host's shell
            env = self.env()
            h.cmd("export " + " ".join(f"{k}={shlex.quote(env[k])}" for k in
                                       (ENV_ID, "REDWEB_LAB", "REDWEB_CA", "CURL_CA_BUNDLE", "SSL_CERT_FILE",
                                        "REDWEB_RESOLVER", "PATH")))
        self._write_names()

    @property
    def _state_file(self) -> Path:
        return STATE_DIR / f"{self.tag}.json"

    def _write_state(self, bridges: list[str]) -> None:
        STATE_DIR.mkdir(mode=0o755, exist_ok=True)
        self._state_file.write_text(json.dumps({"lab_id": self.lab_id, "tag": self.tag, "bridges": bridges,
                                                "workdir": str(self.workdir)}) + "\n")

    def _write_certificates(self) -> None:
        labca = _topo_tool("labca")
        addrs = [a for pair in self.names.values() for a in pair] + list(self.layout.web_addr)
        names = list(self.names) + ([DOMESTIC_NAME] if self.layout.domestic else [])
        labca.make_lab_ca(self.workdir, names, addrs)

    def _write_helpers(self) -> None:
        fmt = {"resolver": self.resolver, "ca": shlex.quote(str(self.ca)), "python": shlex.quote(sys.executable),
               "client": shlex.quote(str(TOPOLOGY_DIR / "h3client.py"))}
        for name, text in (("labcurl", LABCURL), ("labresolve", LABRESOLVE), ("h3get", H3GET),
                           ("redweb", REDWEB)):
            p = self.workdir / "bin" / name
            p.write_text(text.format(**fmt))
            p.chmod(0o755)

    def _write_names(self) -> None:
        hosted = {h.name: h for h in self.hosted}
        lines = [f"{name} {v4} {v6}" for name, (v4, v6) in self.names.items() if name not in hosted]
        if self.layout.domestic_addr:
            lines.append(f"{DOMESTIC_NAME} {self.layout.domestic_addr[0]} {self.layout.domestic_addr[1]}")
        served = [h for h in self.hosted if h.name in self.names]
        if served:  # same three columns; comments say why these addresses are not in the foreign network
            lines.append("# hosted names: documentation-range addresses that the profiles' IP lists contain "
                         "(tspu-2022 T22-3, tspu-2025 T25-1, gfw-fet GF-2); they exist only inside the lab")
            for h in served:
                lines += [f"# {h.name}: {h.role}", f"{h.name} {h.addr[0]} {h.addr[1]}"]
        (self.workdir / "names.txt").write_text("# lab name, IPv4, IPv6 (as the lab resolver answers)\n"
                                                + "\n".join(lines) + "\n")

    def _popen(self, what: str, node_name: str, argv: list[str]) -> _Proc:
        node = self.node(node_name)
        log = self.workdir / f"{what}.log"
        out = open(log, "wb")
        try:
            p = node.popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env(),
                           cwd=str(self.workdir))
        finally:
            out.close()
        proc = _Proc(what, node_name, p, log)
        self._procs.append(proc)
        return proc

    def _start_services(self) -> None:
        L = self.layout
        py = sys.executable
        cert, key = str(self.workdir / "server.pem"), str(self.workdir / "server.key")
        web_servers = [(L.web, "web")] + ([(L.domestic, "domestic-web")] if L.domestic else [])
        for node, tag in web_servers:
            self._popen(tag, node, [py, str(TOPOLOGY_DIR / "webserver.py"), "--cert", cert, "--key", key])
            self._popen(f"{tag}-iperf3", node, ["iperf3", "--server", "--port", str(IPERF_PORT)])
        # HTTP/3 answers from the address the client wrote to: one socket per server address (h3server.py).
        binds = [a for pair in (L.web_addr, *L.name_addrs, *[h.addr for h in self.hosted]) for a in pair if a]
        self._popen("h3", L.web, [py, str(TOPOLOGY_DIR / "h3server.py"), "--cert", cert, "--key", key,
                                  *[arg for a in binds for arg in ("--bind", a)]])
        if L.domestic:
            self._popen("domestic-h3", L.domestic, [py, str(TOPOLOGY_DIR / "h3server.py"), "--cert", cert,
                                                    "--key", key])
        self._popen("dns", L.resolver, self._dnsmasq_argv())
        waits = [(node, "tcp", 80) for node, _ in web_servers] + [(node, "tcp", 443) for node, _ in web_servers]
        waits += [(node, "tcp", IPERF_PORT) for node, _ in web_servers]
        waits += [(node, "udp", 443) for node, _ in web_servers] + [(L.resolver, "udp", 53)]
        for node, proto, port in waits:
            self._wait_listening(node, proto, port)

    def _dnsmasq_argv(self) -> list[str]:
        v4, v6 = self.layout.resolver_addr
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--no-poll", "--port=53", "--bind-interfaces", f"--listen-address={v4}", f"--listen-address={v6}",
                "--user=root", "--group=root", f"--pid-file={self.workdir / 'dnsmasq.pid'}",
                f"--dhcp-leasefile={self.workdir / 'dnsmasq.leases'}", "--log-facility=-", "--log-queries",
                "--local-ttl=60", "--cache-size=0"]
        for name, (a4, a6) in self.names.items():
            argv.append(f"--host-record={name},{a4},{a6}")
        if self.layout.domestic_addr:
            a4, a6 = self.layout.domestic_addr
            argv.append(f"--host-record={DOMESTIC_NAME},{a4},{a6}")
        return argv

    def _wait_listening(self, node_name: str, proto: str, port: int, timeout: float = 20.0) -> None:
        node = self.node(node_name)
        flag = "-Hltn" if proto == "tcp" else "-Hlun"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.cmd(f"ss {flag} 'sport = :{port}'").strip():
                return
            dead = [p for p in self._procs if p.node == node_name and p.popen.poll() is not None]
            if dead:
                raise LabError(f"{dead[0].what} on {node_name} exited: {_tail(dead[0].log)}")
            time.sleep(0.05)
        raise LabError(f"nothing listens on {proto}/{port} in {node_name} after {timeout:.0f} s "
                       f"(logs in {self.workdir})")

    def _warm_up(self) -> None:
        """Resolve neighbours (ARP, IPv6 ND) once, so first connections do not pay for it."""
        L = self.layout
        for c in L.clients + ((L.domestic,) if L.domestic else ()):
            self.node(c).cmd(f"ping -c1 -W2 {L.web_addr[0]} >/dev/null 2>&1; "
                             f"ping -6 -c1 -W2 {L.web_addr[1]} >/dev/null 2>&1")

    def _start_censor(self) -> None:
        assert self.config.profile
        L = self.layout
        argv = [sys.executable, "-m", "dpi.cli", "run", "--profile", self.config.profile,
                "--queues", self.config.queues, "--log", str(self.event_log), "--metrics", METRICS_ADDR]
        for cidr in L.inside:
            argv += ["--inside", cidr]
        argv += list(self.config.censor_args)
        self.event_log.unlink(missing_ok=True)  # `redweb run` appends: a reused workdir starts a fresh log
        self.censor = self._popen("censor", L.censor, argv)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if self.censor.popen.poll() is not None:
                raise LabError(f"the censor (redweb run) exited with code {self.censor.popen.returncode}: "
                               f"{_tail(self.censor.log)}")
            if b"redweb: censoring" in self.censor.log.read_bytes():
                return
            time.sleep(0.1)
        raise LabError(f"the censor did not report ready within 30 s: {_tail(self.censor.log)}")

    def stop(self) -> None:
        """Tear everything down; safe to call twice and from any state. Signals are held off meanwhile."""
        held = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        for s in held:
            signal.signal(s, signal.SIG_IGN)
        try:
            self._stop()
        finally:
            for s, h in held.items():
                signal.signal(s, h)
            if self._env_before is None:
                os.environ.pop(ENV_ID, None)
            else:
                os.environ[ENV_ID] = self._env_before

    def _stop(self) -> None:
        if self.censor is not None and self.censor.popen.poll() is None:
            self.censor.popen.send_signal(signal.SIGTERM)
            try:
                self.censor.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.censor.popen.kill()
                self.censor.popen.wait(5)
                if self.net is not None:  # it could not remove its rules: do it from its namespace
                    try:
                        self.node(self.layout.censor).popen(
                            [sys.executable, "-m", "dpi.cli", "cleanup"], env=self.env()).communicate(timeout=30)
                    except Exception:  # noqa: BLE001 - best effort; the namespace goes away below anyway
                        pass
        for p in self._procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self._procs:
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(5)
        self._procs.clear()
        self.censor = None
        # Whatever else runs inside a lab namespace (background jobs from the CLI, a script's children) dies now:
        # a single process left there would keep the namespace, its interfaces and its iptables rules alive.
        shells = {h.pid for h in self.net.hosts} if self.net is not None else set()
        _kill([p for p in _pids_in_netns(self._netns) if p not in shells])
        if self.net is not None:
            try:
                self.net.stop()
            except Exception as e:  # noqa: BLE001 - go on sweeping
                print(f"redweb: lab: Mininet stop failed ({e}); sweeping", file=sys.stderr)
            _remove_links(self._switch_links())
            self.net = None
        for _ in range(20):
            left = _pids_in_netns(self._netns)
            if not left:
                break
            _kill(left)
            time.sleep(0.05)
        if not any(Path(f"/sys/class/net/{b}").exists() for b in self._bridges):
            self._state_file.unlink(missing_ok=True)  # else the next sweep_dead_labs() retries

    def _switch_links(self) -> list[str]:
        if self.net is None:
            return []
        names = []
        for sw in self.net.switches:
            names.append(sw.name)
            names += [i.name for i in sw.intfList() if i.name != "lo"]
        return names

    # -- running things ------------------------------------------------------------------------------------
    def run(self, host: str, command: str | Sequence[str], timeout: float = 60.0) -> CommandResult:
        """Run a command (a shell line, or argv) in a lab host; output captured; killed after `timeout`."""
        node = self.node(host)
        argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
        t0 = time.monotonic()
        p = node.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=self.env(), cwd=str(self.workdir))
        timed_out = False
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(p.pid, signal.SIGKILL)  # mnexec -d made it a session (and group) leader
            except (ProcessLookupError, PermissionError):
                p.kill()
            out, err = p.communicate()
        text = command if isinstance(command, str) else shlex.join(command)
        return CommandResult(host, text, p.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                             time.monotonic() - t0, timed_out)

    def curl(self, host: str, url: str, *, family: int = 4, addr: str | None = None, max_time: float = 10.0,
             connect_timeout: float = 4.0, stall_seconds: float = 0.0, extra: Sequence[str] = ()) -> CurlResult:
        """curl URL from `host` to the name's real lab address (or `addr`) with --resolve, body discarded.

        `stall_seconds` > 0 makes curl give up when nothing arrives for that long (a frozen flow, T25-1)
        instead of waiting for `max_time`.
        """
        from urllib.parse import urlsplit
        parts = urlsplit(url)
        name = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if addr is None:
            addr = self.addr(name, family) if name in self.names else name
        if ":" in addr:
            addr = f"[{addr}]"
        argv = ["curl", "-sS", "-o", "/dev/null", "--cacert", str(self.ca), "--resolve", f"{name}:{port}:{addr}",
                "--max-time", str(max_time), "--connect-timeout", str(connect_timeout),
                "-w", "%{http_code} %{size_download} %{speed_download} %{time_total}"]
        if stall_seconds > 0:
            argv += ["--speed-limit", "1", "--speed-time", str(int(max(1, stall_seconds)))]
        argv += [*extra, url]
        r = self.run(host, argv, timeout=max_time + 10)
        fields = r.stdout.split()
        try:
            code, size, speed, total = int(fields[0]), int(fields[1]), float(fields[2]), float(fields[3])
        except (IndexError, ValueError):
            code, size, speed, total = 0, 0, 0.0, r.seconds
        err = " ".join(r.stderr.split())
        return CurlResult(r.rc, code, size, speed, total, err)

    def dig(self, host: str, name: str, qtype: str = "A", timeout: float = 2.0) -> DigResult:
        """Ask the lab resolver from `host`; returns the status and the answer records' data."""
        r = self.run(host, ["dig", f"@{self.resolver}", name, qtype, f"+time={int(max(1, timeout))}", "+tries=1",
                            "+noall", "+comments", "+answer"], timeout=timeout + 10)
        status = ""
        answers: list[str] = []
        for line in r.stdout.splitlines():
            if "status:" in line:
                status = line.split("status:", 1)[1].split(",", 1)[0].strip()
            elif line and not line.startswith(";"):
                parts = line.split()
                if len(parts) >= 5 and parts[3] == qtype:
                    answers.append(parts[4])
        return DigResult(r.rc, status, tuple(answers))

    def h3(self, host: str, url: str, *, family: int = 4, addr: str | None = None,
           timeout: float = 6.0) -> dict[str, Any]:
        """Fetch over HTTP/3 with the lab's aioquic client; its JSON result plus `rc` (0 ok, 28 timeout, 1)."""
        from urllib.parse import urlsplit
        name = urlsplit(url).hostname or ""
        if addr is None:
            addr = self.addr(name, family) if name in self.names else name
        r = self.run(host, [sys.executable, str(TOPOLOGY_DIR / "h3client.py"), url, "--connect", addr,
                            "--cafile", str(self.ca), "--timeout", str(timeout)], timeout=timeout + 20)
        try:
            res: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            res = {"result": "error", "error": (r.stderr.strip().splitlines() or ["no output"])[-1]}
        res["rc"] = r.rc
        return res

    def metrics_text(self) -> str:
        """The censor's Prometheus metrics, fetched inside its namespace ("" without a censor)."""
        if self.censor is None or self.net is None:
            return ""
        r = self.run(self.layout.censor, ["curl", "-s", "--max-time", "5", f"http://{METRICS_ADDR}/metrics"], 15)
        return r.stdout if r.rc == 0 else ""


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(no output)"


def _bridge_sysctls() -> None:
    """Bridged frames must not cross the host's own iptables (PLATFORM.md): LinuxBridge would filter them."""
    for fam in ("iptables", "ip6tables", "arptables"):
        p = Path(f"/proc/sys/net/bridge/bridge-nf-call-{fam}")
        if p.exists():
            try:
                p.write_text("0\n")
            except OSError:
                pass


def _remove_links(names: Sequence[str]) -> int:
    """Delete these links of the machine's namespace if they exist; returns how many were deleted."""
    n = 0
    for name in names:
        if name and "/" not in name and Path(f"/sys/class/net/{name}").exists():
            n += subprocess.run(["ip", "link", "del", name], capture_output=True).returncode == 0
    return n


def lab_state_clean(lab_id: str | None = None, owner_pid: int | None = None) -> list[str]:
    """Processes left by a lab (tests assert this is empty): those carrying its id (or any lab id when neither
    `lab_id` nor `owner_pid`, the pid of the process that ran the lab, is given). Zombies do not count."""
    me = os.getpid()
    left = []
    for pid in _all_pids():
        lid = _environ_lab_id(pid)
        if pid == me or lid is None or _proc_state(pid) in ("Z", "X", None):
            continue
        if (lab_id is None or lid == lab_id) and (owner_pid is None or lid.partition(".")[0] == str(owner_pid)):
            left.append(f"pid {pid} ({_cmdline(pid)})")
    return left


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].split()[0].decode()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------------------- CLI

def add_lab_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topo", choices=TOPOLOGIES, default="isp", help="topology (default isp)")
    p.add_argument("--profile", metavar="NAME", default=None,
                   help="censor profile run on the border router (default: none, the lab runs uncensored)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cli", action="store_true", help="open the Mininet CLI (e.g. `c1 labcurl https://twitter.com/`)")
    mode.add_argument("--script", metavar="FILE", help="run the lines `HOST COMMAND...` of FILE, print, exit")
    mode.add_argument("--cleanup", action="store_true",
                      help="remove what a killed lab left (its processes and bridges), then run `mn -c` (which "
                           "also stops any other Mininet on this machine), and exit")
    p.add_argument("--clients", type=int, default=2, metavar="N", help="clients on the access network (isp)")
    p.add_argument("--queues", default="0", metavar="A-B", help="NFQUEUE numbers for the censor (default 0)")
    p.add_argument("--workdir", metavar="DIR", help="certificates, logs and the event log (default: a new /tmp dir)")
    p.add_argument("--bw", type=float, metavar="MBIT", help="bandwidth of client access links (htb)")
    p.add_argument("--delay", metavar="TIME", help="delay of client access links, e.g. 20ms (needs netem)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="per script line (default 60)")
    p.add_argument("--verbose", action="store_true", help="Mininet's progress messages")


def parse_script(text: str) -> list[tuple[str, str]]:
    """Lines `HOST COMMAND...`; blank lines and `#` comments skipped. ValueError names the bad line."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split(None, 1)
        if len(parts) < 2:
            raise ValueError(f"line {n}: {s!r} has no command: write `HOST COMMAND...`, e.g. `c1 labcurl "
                             "https://example.org/`")
        out.append((parts[0], parts[1]))
    return out


def install_signal_handlers() -> dict[int, Any]:
    """SIGTERM/SIGHUP raise `Terminated`, SIGINT raises KeyboardInterrupt (also when the shell started us with
    SIGINT ignored, as it does for background jobs): every way to stop a lab goes through its tear-down.
    Returns the previous handlers."""
    def terminate(signum: int, _frame: Any) -> None:
        raise Terminated(signal.Signals(signum).name)
    old = {s: signal.signal(s, terminate) for s in (signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    return old


def _banner(lab: Lab) -> str:
    L = lab.layout
    c = L.clients[0]
    some = next(iter(lab.names))
    lines = [f"redweb lab: topology {L.topo}, hosts {' '.join(lab.host_names())}",
             f"  censor: {('profile ' + lab.config.profile + ' on ' + L.censor) if lab.config.profile else 'none'}"
             f"; inside {' '.join(L.inside)}",
             f"  resolver {L.resolver_addr[0]} / {L.resolver_addr[1]}; names and addresses: {lab.workdir}/names.txt",
             f"  try: {c} labcurl https://twitter.com/    {c} h3get https://{some}/    "
             f"{c} dig @{L.resolver_addr[0]} twitter.com    {c} iperf3 -c {L.web_addr[0]} -t 3"]
    served = [h for h in lab.hosted if h.name in lab.names]
    if served:
        lines.append("  hosted names, for the IP-based rules (T22-3 tspu-2022, T25-1 tspu-2025, GF-2 gfw-fet): "
                     + "; ".join(f"{h.name} {h.addr[0]} / {h.addr[1]} ({h.role.split(' (')[0]})" for h in served))
    if lab.config.profile:
        lines.append(f"  events: {lab.event_log}; metrics: {L.censor} curl -s http://{METRICS_ADDR}/metrics")
    return "\n".join(lines)


def lab_main(args: argparse.Namespace) -> int:
    """`redweb lab`. Exit codes: 0 done, 1 the lab failed, 2 bad usage / not root / missing tools."""
    try:
        require_root()
    except LabError as e:
        print(f"redweb: {e}", file=sys.stderr)
        return 2
    if getattr(args, "cleanup", False):
        n = sweep_dead_labs()
        subprocess.run(["mn", "-c"], capture_output=True)
        print(f"redweb: lab cleanup: {n} processes of dead labs killed; mn -c done")
        return 0
    script: list[tuple[str, str]] = []
    if args.script:
        try:
            script = parse_script(Path(args.script).read_text())
        except OSError as e:
            print(f"redweb: cannot read script {args.script}: {e.strerror}", file=sys.stderr)
            return 2
        except ValueError as e:
            print(f"redweb: {args.script}: {e}", file=sys.stderr)
            return 2
        try:  # unknown hosts are a usage error found before anything starts
            import_mininet()
            hosts = set(build_topology(args.topo, **({"clients": args.clients} if args.topo == "isp" else {}))
                        .hosts())
        except (LabError, ValueError) as e:
            print(f"redweb: lab: {e}", file=sys.stderr)
            return 2
        unknown = sorted({h for h, _ in script} - hosts)
        if unknown:
            print(f"redweb: {args.script}: unknown host(s) {', '.join(unknown)}: the {args.topo} topology has "
                  f"{', '.join(sorted(hosts))}", file=sys.stderr)
            return 2
    config = LabConfig(topo=args.topo, profile=args.profile, clients=args.clients, queues=args.queues,
                       workdir=Path(args.workdir) if args.workdir else None, bw=args.bw, delay=args.delay,
                       verbose=args.verbose)
    lab = Lab(config)
    old = install_signal_handlers()
    rc = 0
    try:
        try:
            lab.start()
        except LabError as e:
            print(f"redweb: lab: {e}", file=sys.stderr)
            return e.code
        print(_banner(lab), flush=True)
        if args.cli:
            from mininet.cli import CLI
            CLI(lab.net)
        else:
            for host, command in script:
                print(f"{host}$ {command}", flush=True)
                r = lab.run(host, command, timeout=args.timeout)
                if r.stdout:
                    print(r.stdout, end="" if r.stdout.endswith("\n") else "\n")
                if r.stderr:
                    print(r.stderr, end="" if r.stderr.endswith("\n") else "\n")
                print(f"[{r.status()}]", flush=True)
    except KeyboardInterrupt:
        print("\nredweb: lab: interrupted, tearing down", file=sys.stderr)
        rc = 130
    except Terminated as e:
        print(f"\nredweb: lab: {e}, tearing down", file=sys.stderr)
        rc = 143
    finally:
        lab.stop()
        for s, h in old.items():
            signal.signal(s, h)
    if lab.config.profile:
        print(f"redweb: lab stopped; event log {lab.event_log}, logs in {lab.workdir}")
    else:
        print(f"redweb: lab stopped; logs in {lab.workdir}")
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dpi.lab ...` (the `redweb lab` command calls lab_main directly)."""
    p = argparse.ArgumentParser(prog="redweb lab", description="Mininet lab with real services and the censor")
    add_lab_arguments(p)
    return lab_main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
