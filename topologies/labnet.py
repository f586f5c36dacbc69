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
