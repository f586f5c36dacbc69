"""Client -- router -- server in Linux network namespaces, for tests that need a real path through a censor.

Built with plain `ip netns` and veth (no Mininet) so the fastest integration tests do not pay Mininet's start-up;
the lab tests use Mininet itself. Every namespace name carries a per-run prefix, and `close()` (also run from a
finally / fixture) deletes them, which removes their veths and any iptables rules inside them.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from dataclasses import dataclass, field


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, text=True, capture_output=True)


@dataclass
class Host:
    """One namespace; `run` and `popen` execute commands inside it."""

    ns: str
    addrs: dict[str, str] = field(default_factory=dict)  # "v4"/"v6" -> address

    def cmd(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(self, args: list[str] | str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        if isinstance(args, str):
            args = shlex.split(args)
        return subprocess.run(self.cmd(args), check=check, text=True, capture_output=True, timeout=timeout)

    def redweb_rules(self) -> list[str]:
        """Every iptables/ip6tables rule or chain in this namespace that RedWeb owns, as `iptables -S` prints it,
        and RedWeb's nftables table (dpi.nodefrag) as `nft table inet redweb`."""
        out = []
        for b in ("iptables", "ip6tables"):
            out += [f"{b} {line}" for line in self.run([b, "-S"]).stdout.splitlines()
                    if "redweb" in line or "REDWEB" in line]
        tables = self.run(["nft", "list", "tables"], check=False).stdout.splitlines()
        out += [f"nft {line.strip()}" for line in tables if line.split()[-1:] == ["redweb"]]
        return out

    def popen(self, args: list[str] | str, **kw) -> subprocess.Popen:
        if isinstance(args, str):
            args = shlex.split(args)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.cmd(args), **kw)


class Path3:
    """client (10.9.1.2, fd09:1::2) -- router -- server (10.9.2.2, fd09:2::2).

    The router forwards between the two links and has offloads off, so segment boundaries are the client's.
    """

    CLIENT_V4, SERVER_V4 = "10.9.1.2", "10.9.2.2"
    CLIENT_V6, SERVER_V6 = "fd09:1::2", "fd09:2::2"

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.prefix = f"rwt{tag}"
        self.client = Host(f"{self.prefix}c", {"v4": self.CLIENT_V4, "v6": self.CLIENT_V6})
        self.router = Host(f"{self.prefix}r")
        self.server = Host(f"{self.prefix}s", {"v4": self.SERVER_V4, "v6": self.SERVER_V6})
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for h in (self.client, self.router, self.server):
            _run(["ip", "netns", "add", h.ns])
            h.run("ip link set lo up")
            # No duplicate-address detection: link-local addresses are usable at once, so IPv6 works immediately.
            h.run("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")
        p = self.prefix
        _run(["ip", "link", "add", f"{p}c0", "netns", self.client.ns, "type", "veth",
              "peer", "name", f"{p}r0", "netns", self.router.ns])
        _run(["ip", "link", "add", f"{p}s0", "netns", self.server.ns, "type", "veth",
              "peer", "name", f"{p}r1", "netns", self.router.ns])
        self.client_if, self.server_if = f"{p}c0", f"{p}s0"
        self.router_ifs = (f"{p}r0", f"{p}r1")
        conf = [
            (self.client, f"{p}c0", "10.9.1.2/24", "fd09:1::2/64", "10.9.1.1", "fd09:1::1"),
            (self.server, f"{p}s0", "10.9.2.2/24", "fd09:2::2/64", "10.9.2.1", "fd09:2::1"),
        ]
        for host, ifname, a4, a6, gw4, gw6 in conf:
            host.run(f"ip addr add {a4} dev {ifname}")
            host.run(f"ip -6 addr add {a6} dev {ifname} nodad")
            host.run(f"ip link set {ifname} up")
            host.run(f"ip route add default via {gw4}")
            host.run(f"ip -6 route add default via {gw6}")
        r = self.router
        r.run(f"ip addr add 10.9.1.1/24 dev {p}r0")
        r.run(f"ip addr add 10.9.2.1/24 dev {p}r1")
        r.run(f"ip -6 addr add fd09:1::1/64 dev {p}r0 nodad")
        r.run(f"ip -6 addr add fd09:2::1/64 dev {p}r1 nodad")
        for ifname in self.router_ifs:
            r.run(f"ip link set {ifname} up")
        r.run("sysctl -qw net.ipv4.ip_forward=1")
        r.run("sysctl -qw net.ipv6.conf.all.forwarding=1")
        for host, ifname in ((self.client, f"{p}c0"), (self.server, f"{p}s0"),
                             (r, f"{p}r0"), (r, f"{p}r1")):
            host.run(f"ethtool -K {ifname} tso off gso off gro off", check=False)
        # Resolve neighbours once (IPv6 neighbour discovery takes ~1 s on first use) so tests start on a warm path.
        self.client.run(f"ping -6 -c2 -i0.2 -W3 {self.SERVER_V6}", check=False)
        self.client.run(f"ping -c1 -W2 {self.SERVER_V4}", check=False)

    def close(self) -> None:
        for h in (self.client, self.router, self.server):
            _run(["ip", "netns", "pids", h.ns], check=False)
            pids = _run(["ip", "netns", "pids", h.ns], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _run(["ip", "netns", "del", h.ns], check=False)

    def __enter__(self) -> "Path3":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
