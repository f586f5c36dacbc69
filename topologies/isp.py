"""`isp`: a small censored ISP — clients and a domestic network behind a border router that runs the censor,
then one transit hop before the foreign servers.

    c1..cN ---[rwacc1]---+                                      +---[rwwan1]--- web (HTTP, HTTPS, HTTP/3, iperf3;
                         |                                      |                    one address per lab name,
                       censor (border) ---- transit ------------+                    + cdn.example 198.51.100.10,
                         |                                      |                    banned-ip.example 203.0.113.10)
    dom1 ----[rwdom1]----+   (domestic: inside, never censored) +---------------- ns  (DNS resolver)

Why this shape:
- the censor sees clients *and* a domestic network; its `--inside` covers both, so client <-> domestic traffic
  crosses the censor but is domestic and never censored (the inside/outbound rules of T21-5, T22-1, H-1);
- `transit` is one more router hop after the censor, so TTL-limited packets (insertion attacks, traceroute-style
  localisation of the censor) can expire *after* the censor and before the server;
- the resolver sits abroad, behind the censor, so DNS queries cross it as they do for a real client using a
  foreign resolver (GD-1: on-path injection races the real answer).
- the web server also answers for the hosted names (labnet.HOSTED) from documentation ranges that the IP-based
  rules list: `cdn.example` in a "hosting/CDN network" (T25-1 freeze, GF-2 ranges), `banned-ip.example` on the
  IP registry (T22-3); transit routes those two addresses to the web server, and nothing outside the lab sees
  them.

Load it with `mn --custom topologies/isp.py --topo isp --switch lxbr --controller none`, or through
`redweb lab --topo isp`. Parameters (`--topo isp,clients=3,names=16`): `clients`, `names`, the networks
`access`/`access6`, `domestic`/`domestic6`, `core`/`core6` (border <-> transit), `foreign`/`foreign6`,
`hosting`/`hosting6` (cdn.example's networks, default 198.51.100.0/24, 2001:db8:cd::/48) and `banned`/`banned6`
(banned-ip.example's, default 203.0.113.0/25, 2001:db8:bad::/48; each name is host 10 / ::10 of its networks,
both networks empty leave it out), `bw` (Mbit/s on client access links, needs `--link tc`) / `delay` (needs netem),
and `tag`, the prefix of the three bridges' names (they live in the machine's own namespace: two labs at once need
different tags).
"""
from __future__ import annotations

import os
import sys

from mininet.topo import Topo

# `mn --custom` exec()s this file without __file__: find the sibling modules from the code object instead.
_HERE = os.path.dirname(os.path.abspath(sys._getframe().f_code.co_filename))
if _HERE not in sys.path:
    sys.path.append(_HERE)

from labnet import (BANNED_NET, BANNED_NET6, HOSTING_NET, HOSTING_NET6, Iface, LabBridge,  # noqa: E402
                    LabHost, LabLayout, LabRouter, bare, host_params, hosted_names, hosted_routes, link_params,
                    name_block, nth)


class IspTopo(Topo):
    """Access LAN + domestic LAN -- censor (border) -- transit -- foreign LAN (web, resolver)."""

    layout: LabLayout

    def build(self, clients: int = 2, names: int = 32,  # type: ignore[override]
              access: str = "10.1.0.0/24", access6: str = "fd00:1::/64",
              domestic: str = "10.2.0.0/24", domestic6: str = "fd00:2::/64",
              core: str = "10.100.0.0/30", core6: str = "fd00:100::/64",
              foreign: str = "10.200.0.0/16", foreign6: str = "fd00:200::/64",
              bw: float | None = None, delay: str | None = None, tag: str = "rw",
              hosting: str = HOSTING_NET, hosting6: str = HOSTING_NET6,
              banned: str = BANNED_NET, banned6: str = BANNED_NET6) -> None:
        clients, names, tag = int(clients), int(names), str(tag)
        if not 1 <= clients <= 200:
            raise ValueError("clients must be 1..200")
        if not (1 <= len(tag) <= 4 and tag.isalnum() and tag.islower() and tag[0].isalpha()):
            raise ValueError("tag must be 1-4 lowercase letters/digits starting with a letter (interface names "
                             "are at most 15 characters)")
        acc_gw, acc_gw6 = nth(access, 1), nth(access6, 1)
        dom_gw, dom_gw6 = nth(domestic, 1), nth(domestic6, 1)
        core_b, core_b6 = nth(core, 1), nth(core6, 1)  # border side
        core_t, core_t6 = nth(core, 2), nth(core6, 2)  # transit side
        wan_gw, wan_gw6 = nth(foreign, 1), nth(foreign6, 1)
        web, web6 = nth(foreign, 10), nth(foreign6, 0x10)
        ns, ns6 = nth(foreign, 53), nth(foreign6, 0x53)
        dom, dom6 = nth(domestic, 10), nth(domestic6, 0x10)
        # Lab names from the 257th foreign address on (10.200.1.1...; IPv6 ::1:0...), one address each.
        name4 = name_block(foreign, names, 257)
        name6 = name_block(foreign6, names, 0x10000)
        # Hosted names (cdn.example, banned-ip.example): extra addresses of `web`, in the ranges the IP rules list.
        hosted = hosted_names({"hosting": (hosting, hosting6), "banned": (banned, banned6)},
                              elsewhere=(access, access6, domestic, domestic6, core, core6, foreign, foreign6))
        hosted4 = [h.iface_addrs()[0] for h in hosted]
        hosted6 = [h.iface_addrs()[1] for h in hosted]

        censor = self.addHost("censor", cls=LabRouter, **host_params(
            [Iface("censor-eth0", (acc_gw,), (acc_gw6,)), Iface("censor-eth1", (dom_gw,), (dom_gw6,)),
             Iface("censor-eth2", (core_b,), (core_b6,))],
            [("default", bare(core_t)), ("default", bare(core_t6))]))
        transit = self.addHost("transit", cls=LabRouter, **host_params(
            [Iface("transit-eth0", (core_t,), (core_t6,)), Iface("transit-eth1", (wan_gw,), (wan_gw6,))],
            [(access, bare(core_b)), (domestic, bare(core_b)),
             (access6, bare(core_b6)), (domestic6, bare(core_b6)),
             *hosted_routes(hosted, (bare(web), bare(web6)))]))
        acc = self.addSwitch(f"{tag}acc1", cls=LabBridge)
        dlan = self.addSwitch(f"{tag}dom1", cls=LabBridge)
        wan = self.addSwitch(f"{tag}wan1", cls=LabBridge)

        opts = link_params(bw, delay)
        node_addrs = {"censor": (bare(acc_gw), bare(acc_gw6)), "transit": (bare(core_t), bare(core_t6))}
        client_names = []
        for i in range(1, clients + 1):
            a, a6 = nth(access, 10 + i - 1), nth(access6, 0x10 + i - 1)
            name = f"c{i}"
            self.addHost(name, cls=LabHost, **host_params(
                [Iface(f"{name}-eth0", (a,), (a6,))], [("default", bare(acc_gw)), ("default", bare(acc_gw6))]))
            self.addLink(name, acc, intfName1=f"{name}-eth0", **opts)
            client_names.append(name)
            node_addrs[name] = (bare(a), bare(a6))
        self.addHost("dom1", cls=LabHost, **host_params(
            [Iface("dom1-eth0", (dom,), (dom6,))], [("default", bare(dom_gw)), ("default", bare(dom_gw6))]))
        self.addHost("web", cls=LabHost, **host_params(
            [Iface("web-eth0", (web, *name4, *hosted4), (web6, *name6, *hosted6))],
            [("default", bare(wan_gw)), ("default", bare(wan_gw6))]))
        self.addHost("ns", cls=LabHost, **host_params(
            [Iface("ns-eth0", (ns,), (ns6,))], [("default", bare(wan_gw)), ("default", bare(wan_gw6))]))

        self.addLink(censor, acc, intfName1="censor-eth0")
        self.addLink(censor, dlan, intfName1="censor-eth1")
        self.addLink(censor, transit, intfName1="censor-eth2", intfName2="transit-eth0")
        self.addLink("dom1", dlan, intfName1="dom1-eth0")
        self.addLink(transit, wan, intfName1="transit-eth1")
        self.addLink("web", wan, intfName1="web-eth0")
        self.addLink("ns", wan, intfName1="ns-eth0")
        node_addrs.update({"dom1": (bare(dom), bare(dom6)), "web": (bare(web), bare(web6)),
                           "ns": (bare(ns), bare(ns6))})

        self.layout = LabLayout(
            topo="isp", censor="censor", clients=tuple(client_names), web="web", resolver="ns",
            web_addr=(bare(web), bare(web6)), resolver_addr=(bare(ns), bare(ns6)),
            name_addrs=tuple((bare(a), bare(b)) for a, b in zip(name4, name6)),
            inside=(access, access6, domestic, domestic6), domestic="dom1", domestic_addr=(bare(dom), bare(dom6)),
            routers=("censor", "transit"), node_addrs=node_addrs, hosted=hosted)


topos = {"isp": IspTopo}
