"""Building blocks shared by the lab topologies: Linux routers, addressed hosts, bridges and the lab layout.

The project's kernels have no Open vSwitch (PLATFORM.md), so every topology is made of plain Linux parts: hosts
that forward (`LabRouter`) and Linux bridges (`LabBridge`), with `controller=None`. Nodes are configured only
through their own shell (`self.cmd`), never through the local machine, and every name and address comes from
the topology's parameters, so the same classes can later run in Mininet's cluster mode.

Two things every node does, because the censor depends on them:
- segmentation offloads (TSO/GSO/GRO) are off on every lab interface: with them on, veth pairs carry 64 KB
  "packets" and the censor would see merged or re-split segments instead of what the client sent (the evasions
  of T21-E, T22-E and G-E are all about segment boundaries);
- IPv6 addresses are added with `nodad` and duplicate-address detection is off, so IPv6 works the moment the
  lab is up instead of a second or two later.

Hosted names. The lab's ordinary names all live in the topology's private "foreign" network, which no bundled
profile lists by address, so the IP-based rules would never fire in a lab: T22-3 (tspu-2022 drops listed server
addresses), T25-1 (tspu-2025 freezes TLS to hosting/CDN networks) and GF-2 (gfw-fet blocks only towards some
server ranges). Their lists hold documentation ranges (RFC 5737, RFC 3849) that stand in for the real networks.
So the web server also answers on one address inside each of those ranges, for one lab name each (`HOSTED`):
the censor model stays as measured, and the lab supplies the servers it acts on. Those addresses exist only
inside the lab's namespaces (on the web host, with host routes on the routers in front of it); nothing routes
them anywhere else.

This module imports nothing but the standard library and Mininet: `mn --custom` runs it with Debian's python3.
"""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from mininet.node import Host
from mininet.nodelib import LinuxBridge

Addr = tuple[str, str]  # (IPv4, IPv6), without prefix length

OFFLOADS_OFF = ("tso", "off", "gso", "off", "gro", "off")

# Lab names served from documentation ranges that the bundled profiles' IP lists contain (see the module doc):
# name -> (what it stands for, the topology parameter naming its IPv4 network; IPv6: the same name + "6").
HOSTING_NAME = "cdn.example"  # a foreign hosting/CDN server: T25-1's freeze (tspu-2025), GF-2's ranges (gfw-fet)
BANNED_NAME = "banned-ip.example"  # a server on the IP registry: T22-3's drop (tspu-2022, and tspu-2025 by include)
HOSTED: dict[str, tuple[str, str]] = {
    HOSTING_NAME: ("hosting/CDN network (T25-1 freeze, GF-2 ranges)", "hosting"),
    BANNED_NAME: ("IP-blocked server (T22-3)", "banned"),
}
# The defaults of those parameters: rules/lists/tspu-2025-hosting.txt and gfw-fet-servers.txt (198.51.100.0/24),
# tspu-2022-ip.txt (203.0.113.0/25, 2001:db8:bad::/48). Each name gets host number 10 (IPv6 ::10) of its network.
HOSTING_NET, HOSTING_NET6 = "198.51.100.0/24", "2001:db8:cd::/48"
BANNED_NET, BANNED_NET6 = "203.0.113.0/25", "2001:db8:bad::/48"
HOSTED_HOST4, HOSTED_HOST6 = 10, 0x10


def nth(cidr: str, n: int) -> str:
    """The n-th address of a network, as `addr/prefix` (what `ip addr add` wants)."""
    net = ipaddress.ip_network(cidr, strict=False)
    if n < 0 or n >= net.num_addresses:
        raise ValueError(f"network {cidr} has no address number {n} (it has {net.num_addresses})")
    return f"{net[n]}/{net.prefixlen}"


def bare(addr: str) -> str:
    """`10.0.0.1/24` -> `10.0.0.1`."""
    return addr.split("/", 1)[0]


def name_block(cidr: str, count: int, first: int) -> list[str]:
    """`count` consecutive host addresses from the `first`-th of `cidr`: one per lab name.

    Every lab name gets its own server address because residual blocking is keyed on the server's address
    (G-4, GQ-2, GF-3: the 3-tuple): with one address for all names, one blocked name would, for minutes, take
    every other name on the same port down with it, which is not what a client in a censored country sees.
    """
    net = ipaddress.ip_network(cidr, strict=False)
    if first + count >= net.num_addresses:
        raise ValueError(f"network {cidr} is too small for {count} name addresses from number {first}: "
                         "give the topology a larger server network")
    return [f"{net[first + i]}/{net.prefixlen}" for i in range(count)]


@dataclass(frozen=True)
class HostedName:
    """A lab name served by the web host from an address of its own network (see the module doc, `HOSTED`)."""

    name: str
    role: str  # what the address stands for, for people (names.txt, the lab banner)
    addr: Addr  # bare addresses
    network: tuple[str, str]  # (IPv4 CIDR, IPv6 CIDR) the addresses were taken from (what the IP lists name)

    def iface_addrs(self) -> tuple[str, str]:
        """Host prefixes (/32, /128): only the served address exists in the lab, never the rest of its network.

        The rest matters: the DNS injectors' pools (GD-2, rules/gfw-dns.yaml) also forge answers from these
        documentation ranges, and a client that follows one must still find nothing there, as before.
        """
        return (f"{self.addr[0]}/32", f"{self.addr[1]}/128")


def hosted_names(networks: dict[str, tuple[str, str]], elsewhere: Iterable[str] = ()) -> tuple[HostedName, ...]:
    """The `HOSTED` names with their addresses, from the topology's parameters.

    `networks` maps each `HOSTED` parameter name (`hosting`, `banned`) to its (IPv4, IPv6) networks; both empty
    leaves that name out. `elsewhere` are the topology's other networks: a hosted network overlapping one of
    them would either shadow lab addresses or, worse, make the server look *inside* to the censor (never
    censored), so that is a ValueError, as is a hosted address used twice.
    """
    others = [ipaddress.ip_network(c, strict=False) for c in elsewhere]
    out: list[HostedName] = []
    seen: set[str] = set()
    for name, (role, param) in HOSTED.items():
        v4, v6 = (str(x).strip() for x in networks.get(param, ("", "")))
        if not v4 and not v6:
            continue
        if not v4 or not v6:
            raise ValueError(f"{param} and {param}6 go together: give both networks, or neither to leave "
                             f"{name} out")
        nets = []
        for cidr, want, p in ((v4, 4, param), (v6, 6, param + "6")):
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{p}={cidr!r} is not a network (e.g. {HOSTING_NET if want == 4 else HOSTING_NET6})"
                                 ) from None
            if net.version != want:
                raise ValueError(f"{p} must be an IPv{want} network, not {cidr!r}")
            clash = [str(o) for o in others if o.version == net.version and o.overlaps(net)]
            if clash:
                raise ValueError(f"{p}={cidr} overlaps the topology's network {clash[0]}: hosted names need "
                                 "networks of their own")
            nets.append(net)
        a4 = bare(nth(str(nets[0]), HOSTED_HOST4))
        a6 = bare(nth(str(nets[1]), HOSTED_HOST6))
        for a in (a4, a6):
            if a in seen:
                raise ValueError(f"two hosted names would share {a}: give {', '.join(p for _r, p in HOSTED.values())}"
                                 " different networks")
            seen.add(a)
        out.append(HostedName(name, role, (a4, a6), (str(nets[0]), str(nets[1]))))
    return tuple(out)


def hosted_routes(hosted: Iterable[HostedName], via: Addr) -> list[tuple[str, str]]:
    """Host routes to the hosted addresses through the web host (`via`: its (IPv4, IPv6)), for a router's
    `routes` (host routes only: see HostedName.iface_addrs)."""
    routes: list[tuple[str, str]] = []
    for h in hosted:
        a4, a6 = h.iface_addrs()
        routes += [(a4, via[0]), (a6, via[1])]
    return routes


@dataclass(frozen=True)
class Iface:
    """One interface of a lab node and the addresses it carries (first IPv4/IPv6 = primary)."""

    name: str
    v4: tuple[str, ...] = ()  # `addr/prefix`
    v6: tuple[str, ...] = ()


@dataclass
class LabLayout:
    """What the lab orchestration (`dpi.lab`) needs to know about a topology, without parsing it.

    Node names and addresses are the topology's; the lab only reads them. `inside` is what the censor gets as
    `--inside`: connections between two inside addresses are domestic and never censored.
    """

    topo: str
    censor: str  # the router that runs `redweb run`
    clients: tuple[str, ...]
    web: str  # foreign server: HTTP, HTTPS, HTTP/3 and iperf3 for every lab name
    resolver: str  # node running the lab's DNS server
    web_addr: Addr = ("", "")
    resolver_addr: Addr = ("", "")
    name_addrs: tuple[Addr, ...] = ()  # on `web`, one per lab name, in order
    inside: tuple[str, ...] = ()
    domestic: str | None = None  # a server inside the censored country (never censored)
    domestic_addr: Addr | None = None
    routers: tuple[str, ...] = ()
    node_addrs: dict[str, Addr] = field(default_factory=dict)  # primary addresses of every node
    hosted: tuple[HostedName, ...] = ()  # names `web` also serves from documentation ranges (HOSTED)


class LabHost(Host):
    """A host whose interfaces, IPv6 addresses and routes come from its `ifaces`/`routes` parameters.

    The topology passes `ip=None` so that Mininet does not put its own 10.0.0.x address on the first interface;
    the IPv4 addresses are still set through Mininet's `setIP`, so `pingall` and `node.IP()` know them.
    """

    def config(self, ifaces: Sequence[Iface] = (), routes: Sequence[tuple[str, str]] = (),  # type: ignore[override]
               forward: bool = False, **params: Any) -> dict[str, Any]:
        # DAD off before any interface comes up (Mininet's own config brings them up to set MACs): an address
        # born while DAD was on stays "tentative", and unusable, for a second or more.
        sysctls = ["net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
                   "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                   "net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.accept_ra=0"]
        self.cmd("sysctl -qw " + " ".join(sysctls))
        for iface in ifaces:
            self.cmd("ip link set", iface.name, "down")
            self.cmd(f"sysctl -qw net.ipv6.conf.{iface.name}.accept_dad=0 net.ipv6.conf.{iface.name}.accept_ra=0")
        r = super().config(**params)
        for iface in ifaces:
            self.cmd("ethtool -K", iface.name, *OFFLOADS_OFF, "2>/dev/null")
            if iface.v4:
                self.intf(iface.name).setIP(iface.v4[0])
            for a in iface.v4[1:]:
                self.cmd("ip addr add", a, "dev", iface.name)
            for a in iface.v6:
                self.cmd("ip -6 addr add", a, "dev", iface.name, "nodad")
            self.cmd("ip link set", iface.name, "up")
        if forward:
            self.cmd("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 "
                     "net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0")
        for dst, via in routes:
            family = "-6" if ":" in via else "-4"
            self.cmd("ip", family, "route replace", dst, "via", via)
        return r

    def addrs(self, iface: str | None = None) -> Addr:
        """Primary (IPv4, IPv6) of an interface (default: the first), read from the node's parameters."""
        for i in self.params.get("ifaces", ()):
            if iface is None or i.name == iface:
                return (bare(i.v4[0]) if i.v4 else "", bare(i.v6[0]) if i.v6 else "")
        return ("", "")


class LabRouter(LabHost):
    """A Linux router: a host with IPv4 and IPv6 forwarding on (no OVS on these kernels, PLATFORM.md)."""

    def config(self, **params: Any) -> dict[str, Any]:  # type: ignore[override]
        params["forward"] = True
        return super().config(**params)


class LabBridge(LinuxBridge):
    """A Linux bridge whose ports have segmentation offloads off, like every other lab interface."""

    def start(self, controllers: Any) -> None:
        super().start(controllers)
        for intf in self.intfList():
            if self.name in intf.name:
                self.cmd("ethtool -K", intf.name, *OFFLOADS_OFF, "2>/dev/null")


def host_params(ifaces: Iterable[Iface], routes: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """Parameters for `Topo.addHost` of a LabHost/LabRouter (ip=None: addresses come from `ifaces`)."""
    return {"ip": None, "ifaces": tuple(ifaces), "routes": tuple(routes)}


def link_params(bw: float | None, delay: str | None) -> dict[str, Any]:
    """TCLink options for an access link: bandwidth via htb works everywhere, delay needs netem (not here)."""
    opts: dict[str, Any] = {}
    if bw:
        opts["bw"] = float(bw)
    if delay:
        opts["delay"] = str(delay)
    return opts


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc (link delay/loss): PLATFORM.md's kernels do not.

    Tried on the loopback of a throw-away network namespace, so nothing outside it changes.
    """
    if shutil.which("unshare") is None or shutil.which("tc") is None:
        return False
    r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up && tc qdisc add dev lo root netem delay 1ms"],
                       capture_output=True, text=True, timeout=10)
    return r.returncode == 0
