"""`inline`: the smallest censored path, client -- censor router -- server.

    c1 (inside) ---- censor ---- srv (outside: web, HTTP/3, DNS, iperf3; one extra address per lab name, and
                                       cdn.example 198.51.100.10, banned-ip.example 203.0.113.10)

Load it with `mn --custom topologies/inline.py --topo inline --switch lxbr --controller none`, or through
`redweb lab --topo inline`. Parameters (all optional, `--topo inline,names=8,inside=10.9.1.0/24`):
`names` (how many per-name server addresses), `inside`/`inside6` and `outside`/`outside6` (the two networks),
`hosting`/`hosting6` and `banned`/`banned6` (the networks of the hosted names cdn.example and banned-ip.example,
in the documentation ranges that the IP-based rules T25-1, GF-2 and T22-3 list: see labnet.HOSTED; the censor
routes those addresses to srv), `bw` (Mbit/s on both links, needs `--link tc`) and `delay` (needs netem, which
PLATFORM.md's kernels lack).
"""
from __future__ import annotations

import os
import sys

from mininet.topo import Topo

# `mn --custom` exec()s this file without __file__: find the sibling modules from the code object instead.
_HERE = os.path.dirname(os.path.abspath(sys._getframe().f_code.co_filename))
if _HERE not in sys.path:
    sys.path.append(_HERE)

from labnet import (BANNED_NET, BANNED_NET6, HOSTING_NET, HOSTING_NET6, Iface, LabHost,  # noqa: E402
                    LabLayout, LabRouter, bare, host_params, hosted_names, hosted_routes, link_params, name_block,
                    nth)


class InlineTopo(Topo):
    """client -- censor -- server; the censor is the only router, so every outbound packet crosses it."""

    layout: LabLayout

    def build(self, names: int = 32, inside: str = "10.0.1.0/24", inside6: str = "fd00:0:1::/64",  # type: ignore[override]
              outside: str = "10.0.2.0/24", outside6: str = "fd00:0:2::/64", bw: float | None = None,
              delay: str | None = None, hosting: str = HOSTING_NET, hosting6: str = HOSTING_NET6,
              banned: str = BANNED_NET, banned6: str = BANNED_NET6) -> None:
        names = int(names)
        gw_in, gw_in6 = nth(inside, 1), nth(inside6, 1)
        gw_out, gw_out6 = nth(outside, 1), nth(outside6, 1)
        cli, cli6 = nth(inside, 10), nth(inside6, 0x10)
        srv, srv6 = nth(outside, 10), nth(outside6, 0x10)
        # Lab names live from .100 of the outside network (IPv6: ::1:0 on), one address each.
        name4 = name_block(outside, names, 100)
        name6 = name_block(outside6, names, 0x10000)
        hosted = hosted_names({"hosting": (hosting, hosting6), "banned": (banned, banned6)},
                              elsewhere=(inside, inside6, outside, outside6))

        c1 = self.addHost("c1", cls=LabHost, **host_params(
            [Iface("c1-eth0", (cli,), (cli6,))], [("default", bare(gw_in)), ("default", bare(gw_in6))]))
        censor = self.addHost("censor", cls=LabRouter, **host_params(
            [Iface("censor-eth0", (gw_in,), (gw_in6,)), Iface("censor-eth1", (gw_out,), (gw_out6,))],
            hosted_routes(hosted, (bare(srv), bare(srv6)))))
        srv_node = self.addHost("srv", cls=LabHost, **host_params(
            [Iface("srv-eth0", (srv, *name4, *[h.iface_addrs()[0] for h in hosted]),
                   (srv6, *name6, *[h.iface_addrs()[1] for h in hosted]))],
            [("default", bare(gw_out)), ("default", bare(gw_out6))]))
        opts = link_params(bw, delay)
        self.addLink(c1, censor, intfName1="c1-eth0", intfName2="censor-eth0", **opts)
        self.addLink(censor, srv_node, intfName1="censor-eth1", intfName2="srv-eth0", **opts)

        self.layout = LabLayout(
            topo="inline", censor="censor", clients=("c1",), web="srv", resolver="srv",
            web_addr=(bare(srv), bare(srv6)), resolver_addr=(bare(srv), bare(srv6)),
            name_addrs=tuple((bare(a), bare(b)) for a, b in zip(name4, name6)),
            inside=(inside, inside6), routers=("censor",),
            node_addrs={"c1": (bare(cli), bare(cli6)), "censor": (bare(gw_in), bare(gw_in6)),
                        "srv": (bare(srv), bare(srv6))},
            hosted=hosted)


topos = {"inline": InlineTopo}
